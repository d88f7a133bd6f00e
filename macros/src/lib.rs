//! Procedural macros for [`loopwatch`](https://docs.rs/loopwatch).
//!
//! Use them through the `loopwatch` crate (default feature `macros`):
//! `#[loopwatch::instrument_blocking]` and `#[loopwatch::main]`. The
//! documentation, with examples, is on the re-exports there.

use proc_macro::TokenStream;

mod attr;
mod expand;
mod main_attr;

/// `#[tokio::main]` with loopwatch set up around it; see `loopwatch::main`.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = match syn::parse::<syn::ItemFn>(item) {
        Ok(item) => item,
        Err(e) => {
            return syn::Error::new(e.span(), "#[loopwatch::main] goes on `async fn main`")
                .to_compile_error()
                .into()
        }
    };
    // On an error, only the error: a stand-in `main` keeps the compiler
    // from adding "`main` function not found" to it.
    let with_error = |e: syn::Error, item: &syn::ItemFn| -> TokenStream {
        let e = e.to_compile_error();
        let rest = if item.sig.ident == "main" {
            quote::quote!(
                fn main() {}
            )
        } else {
            quote::quote!(#item)
        };
        quote::quote!(#e #rest).into()
    };
    let args = match syn::parse::<main_attr::Args>(args) {
        Ok(args) => args,
        Err(e) => return with_error(e, &item),
    };
    match main_attr::expand(args, item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(e) => with_error(e, &item),
    }
}

/// Times and counts every call of a function; see `loopwatch::instrument_blocking`.
#[proc_macro_attribute]
pub fn instrument_blocking(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = match syn::parse::<attr::Args>(args) {
        Ok(args) => args,
        Err(e) => return e.to_compile_error().into(),
    };
    let item = match syn::parse::<syn::ItemFn>(item.clone()) {
        Ok(item) => item,
        Err(_) => match syn::parse::<syn::ImplItemFn>(item) {
            Ok(method) => syn::ItemFn {
                attrs: method.attrs,
                vis: method.vis,
                sig: method.sig,
                block: Box::new(method.block),
            },
            Err(e) => {
                return syn::Error::new(
                    e.span(),
                    "#[instrument_blocking] goes on a function or method with a body",
                )
                .to_compile_error()
                .into()
            }
        },
    };
    match expand::expand(args, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
