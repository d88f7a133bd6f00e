//! `#[loopwatch::main]`: `#[tokio::main]` with loopwatch set up around it.
//! The arguments are tokio's (`flavor`, `worker_threads`, `start_paused`,
//! `crate`), with its meaning and its errors.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Ident, Lit, LitStr, Token};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

/// Parsed arguments, each with where it was written.
#[derive(Default)]
pub(crate) struct Args {
    flavor: Option<(Flavor, Span)>,
    worker_threads: Option<(usize, Span)>,
    start_paused: Option<(bool, Span)>,
    krate: Option<syn::Path>,
}

const EXPECTED: &str = "expected one of: `flavor`, `worker_threads`, `start_paused`, `crate`";

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let key: Ident = if input.peek(Token![crate]) {
                let k = input.parse::<Token![crate]>()?;
                Ident::new("crate", k.span)
            } else {
                input.parse()?
            };
            let name = key.to_string();
            if !input.peek(Token![=]) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("`{name}` takes a value: `{name} = ...`"),
                ));
            }
            input.parse::<Token![=]>()?;
            let value: Lit = input.parse()?;
            let twice = || syn::Error::new(key.span(), format!("`{name}` is set multiple times"));
            match name.as_str() {
                "flavor" => {
                    let Lit::Str(s) = &value else {
                        return Err(syn::Error::new(
                            value.span(),
                            "`flavor` is a string: \"multi_thread\" or \"current_thread\"",
                        ));
                    };
                    let flavor = match s.value().as_str() {
                        "current_thread" => Flavor::CurrentThread,
                        "multi_thread" => Flavor::MultiThread,
                        other => {
                            return Err(syn::Error::new(
                                s.span(),
                                format!("No such runtime flavor `{other}`. The runtime flavors are `current_thread` and `multi_thread`."),
                            ))
                        }
                    };
                    if args.flavor.replace((flavor, key.span())).is_some() {
                        return Err(twice());
                    }
                }
                "worker_threads" => {
                    let Lit::Int(n) = &value else {
                        return Err(syn::Error::new(
                            value.span(),
                            "`worker_threads` is a number of threads, such as 4",
                        ));
                    };
                    let n: usize = n.base10_parse()?;
                    if n == 0 {
                        return Err(syn::Error::new(
                            value.span(),
                            "`worker_threads` may not be 0.",
                        ));
                    }
                    if args.worker_threads.replace((n, key.span())).is_some() {
                        return Err(twice());
                    }
                }
                "start_paused" => {
                    let Lit::Bool(b) = &value else {
                        return Err(syn::Error::new(
                            value.span(),
                            "`start_paused` is `true` or `false`",
                        ));
                    };
                    if args.start_paused.replace((b.value, key.span())).is_some() {
                        return Err(twice());
                    }
                }
                "crate" => {
                    let Lit::Str(s) = &value else {
                        return Err(syn::Error::new(
                            value.span(),
                            "`crate` is the path to loopwatch as a string, such as \"::loopwatch\"",
                        ));
                    };
                    if args.krate.replace(s.parse::<syn::Path>()?).is_some() {
                        return Err(twice());
                    }
                }
                _ => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("Unknown attribute {name} is specified; {EXPECTED}"),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

/// Expands `#[loopwatch::main(args)] async fn main() -> R { body }`.
pub(crate) fn expand(args: Args, item: syn::ItemFn) -> syn::Result<TokenStream> {
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "the `async` keyword is missing from the function declaration",
        ));
    }
    if sig.ident != "main" {
        return Err(syn::Error::new(
            sig.ident.span(),
            "#[loopwatch::main] goes on `async fn main`; for other functions and tests, build the runtime with `loopwatch::install_runtime_hooks`",
        ));
    }
    if !sig.inputs.is_empty() {
        return Err(syn::Error::new(
            sig.inputs.span(),
            "the main function cannot accept arguments",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "the main function cannot be generic",
        ));
    }
    let flavor = args.flavor.map_or(Flavor::MultiThread, |(f, _)| f);
    if let (Some((_, span)), Flavor::CurrentThread) = (args.worker_threads, flavor) {
        return Err(syn::Error::new(
            span,
            "The `worker_threads` option requires the `multi_thread` runtime flavor. Use `#[loopwatch::main(flavor = \"multi_thread\")]`",
        ));
    }
    if let (Some((true, span)), Flavor::MultiThread) = (args.start_paused, flavor) {
        return Err(syn::Error::new(
            span,
            "The `start_paused` option requires the `current_thread` runtime flavor. Use `#[loopwatch::main(flavor = \"current_thread\")]`",
        ));
    }
    let krate = args
        .krate
        .map_or_else(|| quote!(::loopwatch), |p| quote!(#p));
    let builder = match flavor {
        Flavor::CurrentThread => {
            quote!(#krate::__private::tokio::runtime::Builder::new_current_thread())
        }
        Flavor::MultiThread => {
            quote!(#krate::__private::tokio::runtime::Builder::new_multi_thread())
        }
    };
    let workers = args
        .worker_threads
        .map(|(n, span)| quote_spanned!(span=> __loopwatch_builder.worker_threads(#n);));
    let paused = args
        .start_paused
        .map(|(b, span)| quote_spanned!(span=> __loopwatch_builder.start_paused(#b);));
    let output = match &sig.output {
        syn::ReturnType::Default => quote!(()),
        syn::ReturnType::Type(_, ty) => quote!(#ty),
    };
    let attrs = &item.attrs;
    let vis = &item.vis;
    let mut outer = sig.clone();
    outer.asyncness = None;
    let body = &item.block;
    let flavor_name = LitStr::new(
        match flavor {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread",
        },
        Span::call_site(),
    );
    Ok(quote! {
        #(#attrs)*
        #vis #outer {
            let __loopwatch_body: ::core::pin::Pin<
                &mut dyn ::core::future::Future<Output = #output>,
            > = ::core::pin::pin!(async #body);
            #[allow(unused_mut)]
            let mut __loopwatch_builder = #builder;
            #workers
            #paused
            #krate::__private::run_main(__loopwatch_builder, #flavor_name, __loopwatch_body)
        }
    })
}
