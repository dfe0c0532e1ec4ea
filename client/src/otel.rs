//! The client crate's counters as OpenTelemetry instruments, made once
//! from the global meter provider (a no-op until the application sets one).

use std::sync::OnceLock;

use opentelemetry::metrics::Counter;

/// `tessera_client_token_events_total{event}`: issues, refreshes,
/// fallbacks, failures and invalidations of token sources.
pub(crate) fn token_events() -> &'static Counter<u64> {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    COUNTER.get_or_init(|| {
        opentelemetry::global::meter("tessera-client")
            .u64_counter("tessera_client.token_events")
            .with_description(
                "Token source events: issues, refreshes, fallbacks, failures, invalidations",
            )
            .build()
    })
}

/// `tessera_client_verifications_total{event}`: lookups, cache hits,
/// inactive tokens and unavailable answers of the verifiers.
pub(crate) fn verifications() -> &'static Counter<u64> {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    COUNTER.get_or_init(|| {
        opentelemetry::global::meter("tessera-client")
            .u64_counter("tessera_client.verifications")
            .with_description("Verifier events: lookups, cache hits, inactive tokens, unavailable")
            .build()
    })
}
