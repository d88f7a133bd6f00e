//! The expansion: sync functions run their body in a closure timed by
//! `call_sync`; async functions run it in an `async move` block wrapped by
//! `call_async`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType, Type};

use crate::attr::Args;

pub(crate) fn expand(args: Args, item: ItemFn) -> syn::Result<TokenStream> {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new(
            constness.span(),
            "#[instrument_blocking] cannot time a `const fn`",
        ));
    }
    let ident = &sig.ident;
    let name = match &args.name {
        Some(name) => quote!(#name),
        None => {
            let fn_name = ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };
    let warn = args.warn_ns.unwrap_or(0);
    let slow = args.slow_ns.unwrap_or(0);
    let failed = if returns_result(&sig.output) {
        quote!(::loopwatch::__private::is_err)
    } else {
        quote!(::loopwatch::__private::never_failed)
    };
    let site = quote! {
        static __LOOPWATCH_SITE: ::loopwatch::__private::CallSite =
            ::loopwatch::__private::CallSite::new(#name, #warn, #slow);
    };
    let body = if sig.asyncness.is_some() {
        quote_spanned! {block.span()=>
            #site
            ::loopwatch::__private::call_async(&__LOOPWATCH_SITE, async move #block, #failed).await
        }
    } else {
        let ret = match &sig.output {
            ReturnType::Default => quote!(-> ()),
            ReturnType::Type(_, ty) if contains_impl_trait(ty) => quote!(),
            ReturnType::Type(arrow, ty) => quote!(#arrow #ty),
        };
        let inner = if sig.unsafety.is_some() {
            quote!({
                #[allow(unused_unsafe)]
                unsafe #block
            })
        } else {
            quote!(#block)
        };
        quote_spanned! {block.span()=>
            #site
            ::loopwatch::__private::call_sync(&__LOOPWATCH_SITE, move || #ret #inner, #failed)
        }
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #body
        }
    })
}

/// Whether the return type is spelled `Result<..>` (any path ending in `Result`).
fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(path) => path
                .path
                .segments
                .last()
                .is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

/// Whether a type mentions `impl Trait` (a closure cannot be annotated with it).
fn contains_impl_trait(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Paren(p) => contains_impl_trait(&p.elem),
        Type::Group(g) => contains_impl_trait(&g.elem),
        Type::Reference(r) => contains_impl_trait(&r.elem),
        Type::Tuple(t) => t.elems.iter().any(contains_impl_trait),
        Type::Path(p) => p.path.segments.iter().any(|s| match &s.arguments {
            syn::PathArguments::AngleBracketed(a) => a.args.iter().any(|arg| match arg {
                syn::GenericArgument::Type(t) => contains_impl_trait(t),
                _ => false,
            }),
            _ => false,
        }),
        _ => false,
    }
}
