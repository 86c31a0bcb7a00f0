//! W3C trace context (`traceparent`, `tracestate`) in NATS headers, so one trace spans
//! scheduler → analyzer → router agent → notifier.
//!
//! The typed helpers in [`crate::typed`] call these for you: publishing injects the current
//! span's context; receiving extracts it and makes it the parent of the message's span. The
//! span context comes from the `tracing-opentelemetry` layer, so this works with whatever
//! tracer provider the service installed (and is a no-op without one).

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` would be a header line without a value, which the NATS
        // client cannot parse back: the message would never arrive.
        if !value.is_empty() {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the W3C trace context of `cx` into `headers`. Nothing is written when `cx` has no
/// valid span (no tracer installed, or tracing disabled).
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Writes the trace context of a `tracing` span into `headers`.
pub fn inject_span(span: &tracing::Span, headers: &mut HeaderMap) {
    inject(&span.context(), headers);
}

/// Writes the trace context of the current `tracing` span into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject_span(&tracing::Span::current(), headers);
}

/// Reads the W3C trace context from `headers`; an empty context when there is none or it is
/// malformed (a bad `traceparent` starts a new trace rather than failing the message).
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes the context in `headers` (if any) the parent of `span`, which must not have been
/// entered yet. Returns whether a remote parent was set.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) -> bool {
    use opentelemetry::trace::TraceContextExt;
    let Some(headers) = headers else {
        return false;
    };
    let cx = extract(headers);
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// The W3C `traceparent` of `span`, to keep with work that continues later (a queued command):
/// `None` when the span is not sampled into a trace (no tracer installed).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut headers = HeaderMap::new();
    inject_span(span, &mut headers);
    headers.get("traceparent").map(|v| v.as_str().to_owned())
}

/// Makes the context a [`traceparent`] names the parent of `span`, which must not have been
/// entered yet. Returns whether a parent was set (a malformed value sets none).
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) -> bool {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    set_parent_from(span, Some(&headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    #[test]
    fn round_trips_through_headers() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc.clone());
        let mut headers = HeaderMap::new();
        inject(&cx, &mut headers);
        assert_eq!(
            headers.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let back = extract(&headers);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
        assert!(back.span().span_context().is_remote());
    }

    #[test]
    fn an_empty_tracestate_is_not_written() {
        let mut headers = HeaderMap::new();
        HeaderInjector(&mut headers).set("tracestate", String::new());
        assert!(headers.get("tracestate").is_none());
    }

    #[test]
    fn nothing_without_a_span_and_garbage_is_ignored() {
        let mut headers = HeaderMap::new();
        inject(&Context::new(), &mut headers);
        assert!(headers.get("traceparent").is_none());
        headers.insert("traceparent", "not-a-traceparent");
        assert!(!extract(&headers).span().span_context().is_valid());
    }
}
