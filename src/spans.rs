//! The stuck thread's `tracing` spans in stall reports (feature `spans`).
//!
//! Most tokio services already describe their work with spans
//! (`#[tracing::instrument]`, tower-http's `TraceLayer`). Add [`layer()`] to
//! your subscriber and every stall report names the spans the stuck thread
//! was in, outermost first, for uninstrumented tasks too:
//!
//! ```text
//! runtime main: worker 1 stalled for 5.0 s in span request{method=GET uri=/orders/42 version=HTTP/1.1} > load_order{id=42}
//! ```
//!
//! ```
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! let subscriber = tracing_subscriber::registry().with(loopwatch::spans::layer());
//! tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
//! ```
//!
//! Alongside `fmt` and a filter it is one more `.with(...)`:
//! `tracing_subscriber::registry().with(EnvFilter::from_default_env()).with(fmt::layer()).with(loopwatch::spans::layer())`.
//! It sees the spans the subscriber enables: a span filtered out (for example
//! tower-http's `request` span, at DEBUG, under an INFO filter) is not created
//! at all, so it cannot be named; give the layer a filter of its own
//! (`loopwatch::spans::layer().with_filter(LevelFilter::DEBUG)`) next to a
//! stricter one for `fmt`, to keep it.
//!
//! What it costs and how it stays safe:
//! - A span's description, `name{field=value ...}` (values as `Debug`,
//!   `%`-recorded ones as `Display`; at most 16 fields, 96 bytes a value and
//!   256 bytes in all), is formatted when the span is created and again when
//!   a field is recorded, never when it is entered.
//! - Entering and exiting push and pop on the thread's own stack of entered
//!   spans (at most 32 deep are named; deeper ones are counted): no lock, no
//!   allocation, a few atomic stores. A small per-thread cache finds a span's
//!   description without asking the registry.
//! - The watchdog thread reads the stuck thread's stack by its kernel thread
//!   id, so spans are named wherever the stuck thread is known (Linux: an
//!   instrumented task, a hooked runtime, a current-thread runtime, or with
//!   the `stacks` feature a worker of a runtime known only by its handle,
//!   once loopwatch's heartbeat has run on it, a second or so after
//!   `watch_runtime`).
//! - Descriptions live in slots that are reused, never freed, each with a
//!   counter of its span's life: a span that closes while the watchdog reads
//!   it is seen to have closed, and the read is taken again; nothing the
//!   watchdog reads can be freed under it. At most 32,768 spans are described
//!   at once (about 9 MiB at that peak, kept for reuse); a span opened beyond
//!   that shows as undescribed.

mod arena;
mod describe;
mod stack;
mod tree;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use self::arena::Handle;
use self::describe::Fields;

pub(crate) use self::stack::of_thread;
pub(crate) use self::tree::OpenSpans;

/// The description handle bits of the span the calling thread is in (0:
/// none, or no layer was ever made), for a task spawned here.
#[inline]
pub(crate) fn current_span_bits() -> u64 {
    if INSTANCES.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    stack::current()
}

/// A [`tracing_subscriber::Layer`] that keeps, for each thread, the spans it
/// is in, so that stall reports can name them
/// ([`StallReport::spans`](crate::StallReport::spans)). Made by [`layer()`].
///
/// Each layer is one subscriber's: span ids are only unique within one
/// registry, so every layer made tells its spans apart from another
/// subscriber's on the same thread (as under nested `with_default`).
pub struct SpanLayer {
    /// Mixed into span ids: 0 for the first layer made, so that the usual
    /// single subscriber pays nothing for it.
    instance: u64,
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

impl Default for SpanLayer {
    fn default() -> Self {
        SpanLayer {
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl SpanLayer {
    /// The key of span `id` of this layer's subscriber in the thread stacks.
    #[inline]
    fn key(&self, id: &Id) -> u64 {
        id.into_u64() ^ self.instance.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl fmt::Debug for SpanLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanLayer").finish_non_exhaustive()
    }
}

/// The layer that puts the stuck thread's spans in stall reports. Add it to
/// any subscriber built on `tracing_subscriber::registry()`.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// let subscriber = tracing_subscriber::registry().with(loopwatch::spans::layer());
/// tracing::subscriber::with_default(subscriber, || {
///     let _request = tracing::info_span!("request", uri = "/orders/42").entered();
///     // A stall here is reported "in span request{uri=\"/orders/42\"}".
/// });
/// ```
pub fn layer() -> SpanLayer {
    SpanLayer::default()
}

/// What the layer keeps in each span's extensions.
struct Described {
    name: &'static str,
    fields: Fields,
    /// `None` when every description slot was taken at creation.
    handle: Option<Handle>,
}

impl Drop for Described {
    fn drop(&mut self) {
        // The span is gone: its slot goes back and every stale handle to it
        // reads as closed.
        if let Some(handle) = self.handle {
            arena::release(handle);
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let name = span.metadata().name();
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Described>().and_then(|d| d.handle))
            .map_or(0, Handle::to_bits);
        let handle = arena::allocate(&fields.describe(name), parent);
        span.extensions_mut().insert(Described {
            name,
            fields,
            handle,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(described) = extensions.get_mut::<Described>() {
            values.record(&mut described.fields);
            if let Some(handle) = described.handle {
                // Writes to one span are serialized by its extensions lock.
                arena::write(handle, &described.fields.describe(described.name));
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        stack::enter(self.key(id), || {
            let span = ctx.span(id)?;
            let extensions = span.extensions();
            extensions.get::<Described>()?.handle
        });
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        stack::exit(self.key(id));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn two_subscribers_on_one_thread_keep_their_spans_apart() {
        // Two fresh registries hand out the same span ids.
        let outer = tracing_subscriber::registry().with(super::layer());
        let inner = tracing_subscriber::registry().with(super::layer());
        let tid = loopwatch_stack::current_tid();
        tracing::subscriber::with_default(outer, || {
            let _a = tracing::info_span!("a").entered();
            tracing::subscriber::with_default(inner, || {
                let _b = tracing::info_span!("b").entered();
                assert_eq!(super::of_thread(tid), ["a", "b"]);
            });
            assert_eq!(super::of_thread(tid), ["a"]);
        });
        assert!(super::of_thread(tid).is_empty());
    }
}
