//! The metrics of DESIGN.md §7, as OpenTelemetry instruments read out at
//! `GET /metrics` in Prometheus text format (through the OpenTelemetry
//! Prometheus exporter), and pushed over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Low cardinality: no user or client
//! labels.
//!
//! One set per process, made on first use: replicas in one process (the
//! tests) share it, as they would share a scrape target.

use std::sync::OnceLock;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, MeterProvider as _},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder as _, TextEncoder};
use tokio::time::Instant;

/// RPC latency buckets, seconds.
const RPC_SECONDS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The instruments.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    /// `tessera_tokens_issued_total{grant}`.
    pub(crate) tokens_issued: Counter<u64>,
    /// `tessera_refreshes_total{outcome}`.
    pub(crate) refreshes: Counter<u64>,
    /// `tessera_auth_failures_total{grant,reason}`.
    pub(crate) auth_failures: Counter<u64>,
    /// `tessera_logins_throttled_total`.
    pub(crate) logins_throttled: Counter<u64>,
    /// `tessera_introspections_total{result}`.
    pub(crate) introspections: Counter<u64>,
    /// `tessera_revocations_total{kind}`.
    pub(crate) revocations: Counter<u64>,
    /// `tessera_rpc_duration_seconds{method,code}`.
    rpc_duration: Histogram<f64>,
    /// `tessera_hashing_queue_depth`: logins waiting for an argon2 worker.
    pub(crate) hashing_queue_depth: Gauge<u64>,
    /// `tessera_revocation_lag_seconds`: from a revocation's making (the
    /// log's `at`, whole seconds) to this replica applying it, for the
    /// latest read of the log that applied any.
    pub(crate) revocation_lag: Gauge<f64>,
}

/// The process's instruments.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .expect("a fresh registry takes the exporter");
        let mut provider = SdkMeterProvider::builder().with_reader(exporter);
        // Pushed over OTLP too when an endpoint is configured (the exporter
        // reads OTEL_EXPORTER_OTLP_* itself), as spans are.
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
            match opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
            {
                Ok(otlp) => provider = provider.with_periodic_exporter(otlp),
                Err(e) => tracing::warn!(error = %e, "cannot export metrics over OTLP"),
            }
        }
        let provider = provider.build();
        let meter = provider.meter("tessera");
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        Self {
            tokens_issued: counter("tessera.tokens_issued", "Tokens issued by Issue, by grant"),
            refreshes: counter(
                "tessera.refreshes",
                "Refresh calls by outcome: rotated, grace (a replay inside the grace window), \
                 reuse_detected, rejected",
            ),
            auth_failures: counter("tessera.auth_failures", "Failed logins by grant and reason"),
            logins_throttled: counter(
                "tessera.logins_throttled",
                "Logins refused by the throttle without checking credentials",
            ),
            introspections: counter(
                "tessera.introspections",
                "Introspect answers by result: active, inactive",
            ),
            revocations: counter(
                "tessera.revocations",
                "Revocations made through Revoke, by kind: token, session",
            ),
            rpc_duration: meter
                .f64_histogram("tessera.rpc.duration")
                .with_unit("s")
                .with_description("Time to answer a call, by method and status code")
                .with_boundaries(RPC_SECONDS.to_vec())
                .build(),
            hashing_queue_depth: meter
                .u64_gauge("tessera.hashing_queue_depth")
                .with_description("Logins waiting for an argon2 worker")
                .build(),
            revocation_lag: meter
                .f64_gauge("tessera.revocation_lag")
                .with_unit("s")
                .with_description(
                    "Seconds from a revocation's making to this replica applying it (latest read)",
                )
                .build(),
            registry,
            _provider: provider,
        }
    }

    /// Records how long `method` took to answer with `code` (`OK` or a
    /// gRPC status code name).
    pub(crate) fn rpc(&self, method: &'static str, started: Instant, code: tonic::Code) {
        self.rpc_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                KeyValue::new("method", method),
                KeyValue::new("code", code_name(code)),
            ],
        );
    }

    /// Everything, in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding in-memory families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A label value for one attribute.
pub(crate) fn label(key: &'static str, value: &'static str) -> [KeyValue; 1] {
    [KeyValue::new(key, value)]
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
