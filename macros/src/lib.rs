//! Procedural macros for [`loopwatch`](https://docs.rs/loopwatch).
//!
//! Use them through the `loopwatch` crate (default feature `macros`):
//! `#[loopwatch::instrument_blocking]`. The documentation, with examples,
//! is on the re-export there.

use proc_macro::TokenStream;

mod attr;
mod expand;

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
