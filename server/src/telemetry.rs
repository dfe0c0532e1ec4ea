//! Logging to stderr (stdout is for command output), OpenTelemetry span
//! export over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and the
//! per-request span that joins a caller's W3C trace context.

use opentelemetry::{propagation::Extractor, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

mod stderr;

/// Writes every pending log line and flushes exported spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    stderr: stderr::StderrSink,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
        self.stderr.close();
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `TESSERA_LOG_FORMAT` is neither `text` nor `json`.
    #[error("TESSERA_LOG_FORMAT={0:?}: use text or json")]
    LogFormat(String),
}

/// Installs the global subscriber. The filter comes from `RUST_LOG`
/// (default `info`); the format from `TESSERA_LOG_FORMAT` (`text`, the
/// default, or `json`: one JSON object per line, fields at the top level,
/// for log pipelines). Audit events go to the target `tessera::audit`.
///
/// Log lines are events with their own fields; spans (per request, per
/// domain call, per statement) are made only for the OTLP exporter, so
/// without `OTEL_EXPORTER_OTLP_ENDPOINT` a request creates none (at the
/// default `info` they were a third of Introspect's server CPU).
pub fn init() -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("TESSERA_LOG_FORMAT").as_deref() {
        Err(_) | Ok("" | "text") => false,
        Ok("json") => true,
        Ok(other) => return Err(TelemetryError::LogFormat(other.to_owned())),
    };
    let stderr = stderr::StderrSink::start();
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(stderr.clone())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(stderr.clone())
    });
    let provider = match std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(_) => {
            // The exporter reads the endpoint (and OTEL_EXPORTER_OTLP_* options) itself.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name("tessera").build())
                    .build(),
            )
        }
        None => None,
    };
    // W3C `traceparent`/`tracestate`, read by `request_span`.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tessera")));
    // Global filters: the same `EnvFilter` as a per-layer filter lost
    // every startup line on PostgreSQL (tracing-subscriber 0.3.23).
    let events_only = provider
        .is_none()
        .then(|| tracing_subscriber::filter::filter_fn(is_event));
    tracing_subscriber::registry()
        .with(filter)
        .with(events_only)
        .with(text)
        .with(json)
        .with(otel)
        .init();
    Ok(Telemetry { provider, stderr })
}

/// Log lines are events; spans are for the exporter.
fn is_event(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_event()
}

/// Reads propagation headers from gRPC request metadata.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one gRPC call, a child of the caller's span when the call
/// carries W3C trace context.
pub(crate) fn request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = request.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
    );
    if request.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Without the OpenTelemetry layer (no exporter) there is nothing to join.
        let _ = span.set_parent(parent);
    }
    span
}

/// A log line that speaks at most once per period and says how many times
/// it held back: for failures that would otherwise log on every request.
/// One per call site, as a `static` (like tracing's own call-site state).
#[derive(Debug)]
pub(crate) struct LogEvery {
    /// When it last spoke, in milliseconds since the epoch.
    last_ms: std::sync::atomic::AtomicI64,
    held_back: std::sync::atomic::AtomicU64,
}

impl LogEvery {
    pub(crate) const fn new() -> Self {
        Self {
            last_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            held_back: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last time)` when the line may be
    /// written now (at most once per `period`).
    pub(crate) fn ready(&self, period: std::time::Duration) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let last = self.last_ms.load(Ordering::Relaxed);
        let period = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(last) >= period
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
