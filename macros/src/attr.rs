//! The attribute's arguments: `name = "..."`, `warn = "150ms"`, `slow = "3s"`.

use syn::parse::{Parse, ParseStream};
use syn::{LitStr, Token};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(warn);
    syn::custom_keyword!(slow);
}

/// Parsed arguments. Durations in nanoseconds; `None` = the watchdog's setting.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<LitStr>,
    pub(crate) warn_ns: Option<u64>,
    pub(crate) slow_ns: Option<u64>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::name) {
                let key = input.parse::<kw::name>()?;
                input.parse::<Token![=]>()?;
                let value: LitStr = input.parse()?;
                if args.name.is_some() {
                    return Err(syn::Error::new(key.span, "`name` is given twice"));
                }
                if value.value().trim().is_empty() {
                    return Err(syn::Error::new(value.span(), "the name must not be empty"));
                }
                args.name = Some(value);
            } else if lookahead.peek(kw::warn) {
                let key = input.parse::<kw::warn>()?;
                input.parse::<Token![=]>()?;
                let ns = duration(&input.parse::<LitStr>()?)?;
                if args.warn_ns.replace(ns).is_some() {
                    return Err(syn::Error::new(key.span, "`warn` is given twice"));
                }
            } else if lookahead.peek(kw::slow) {
                let key = input.parse::<kw::slow>()?;
                input.parse::<Token![=]>()?;
                let ns = duration(&input.parse::<LitStr>()?)?;
                if args.slow_ns.replace(ns).is_some() {
                    return Err(syn::Error::new(key.span, "`slow` is given twice"));
                }
            } else {
                return Err(lookahead.error());
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

/// Parses `"150ms"`, `"2s"`, `"1.5s"`, `"500us"`, `"250ns"`, `"1m"` to nanoseconds.
fn duration(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let text = text.trim();
    // The one parser, shared with the environment settings.
    let ns = loopwatch_duration::parse_ns(text)
        .map_err(|why| syn::Error::new(lit.span(), format!("invalid duration {text:?}: {why}")))?;
    if ns.is_nan() || ns < 1.0 {
        return Err(syn::Error::new(
            lit.span(),
            "the duration must be greater than zero",
        ));
    }
    if ns > 30.0 * 24.0 * 3600.0 * 1e9 {
        return Err(syn::Error::new(
            lit.span(),
            "the duration must be at most 30 days",
        ));
    }
    Ok(ns as u64)
}
