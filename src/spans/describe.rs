//! A span's one-line description: `name{field=value ...}`, formatted when the
//! span is created and again when a field is recorded, never when it is
//! entered.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};

use super::arena::TEXT_BYTES;

/// The most fields kept per span; later ones are left out.
pub(crate) const MAX_FIELDS: usize = 16;
/// The longest value kept, in bytes, before it is cut with `…`.
const MAX_VALUE: usize = 96;

/// A span's fields as last recorded, kept in the span's extensions so that
/// `record` can update one and format the whole again.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    values: Vec<(&'static str, String)>,
}

impl Fields {
    /// The description: `name{a=1 b="x"}`, or `name` without fields, cut to
    /// the arena's text size at a character boundary.
    pub(crate) fn describe(&self, name: &str) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(name);
        if !self.values.is_empty() {
            out.push('{');
            for (i, (field, value)) in self.values.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(field);
                out.push('=');
                out.push_str(value);
            }
            out.push('}');
        }
        cut(&mut out, TEXT_BYTES);
        out
    }

    fn set(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        let mut text = String::new();
        let _ = text.write_fmt(value);
        if text.len() > MAX_VALUE {
            cut(&mut text, MAX_VALUE - '…'.len_utf8());
            text.push('…');
        }
        let full = self.values.len() >= MAX_FIELDS;
        match self.values.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = text,
            None if !full => self.values.push((name, text)),
            None => {}
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, format_args!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, format_args!("{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, format_args!("{value}"));
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::field::Value;

    fn fields_of(metadata_fields: &tracing::field::FieldSet, values: &[&dyn Value]) -> Fields {
        let mut fields = Fields::default();
        let mut iter = metadata_fields.iter();
        let pairs: Vec<(Field, Option<&dyn Value>)> = values
            .iter()
            .map(|v| (iter.next().unwrap(), Some(*v)))
            .collect();
        for (field, value) in pairs {
            if let Some(v) = value {
                v.record(&field, &mut fields);
            }
        }
        fields
    }

    #[test]
    fn names_without_fields_have_no_braces() {
        assert_eq!(Fields::default().describe("load"), "load");
    }

    /// Spans have metadata only under a subscriber that enables them.
    fn with_registry(f: impl FnOnce()) {
        tracing::subscriber::with_default(tracing_subscriber::registry(), f);
    }

    #[test]
    fn fields_in_order_debug_for_strings_display_as_given() {
        with_registry(|| {
            let span = tracing::span!(tracing::Level::INFO, "request", method = "GET", uri = 42u64);
            let fields = span.metadata().map(|m| m.fields()).unwrap();
            let f = fields_of(fields, &[&"GET", &42u64]);
            assert_eq!(f.describe("request"), "request{method=\"GET\" uri=42}");
        });
    }

    #[test]
    fn values_fields_and_the_whole_are_capped() {
        with_registry(values_fields_and_the_whole_are_capped_here);
    }

    fn values_fields_and_the_whole_are_capped_here() {
        let mut f = Fields::default();
        let span = tracing::span!(tracing::Level::INFO, "s", a = 1);
        let field = span.metadata().unwrap().fields().field("a").unwrap();
        f.set(&field, format_args!("{}", "v".repeat(500)));
        let d = f.describe("s");
        assert!(d.ends_with("…}"), "{d}");
        assert!(d.len() <= 3 + 2 + MAX_VALUE + 2, "{d}");
        // A recorded value replaces the old one.
        f.set(&field, format_args!("2"));
        assert_eq!(f.describe("s"), "s{a=2}");
        let long = "é".repeat(300);
        let mut whole = long.clone();
        cut(&mut whole, TEXT_BYTES);
        assert!(whole.len() <= TEXT_BYTES && whole.is_char_boundary(whole.len()));
    }
}
