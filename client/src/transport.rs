//! Where credentials and bearer tokens may be sent: over TLS anywhere, in
//! the clear only to this machine unless the caller explicitly allows it.

use std::net::IpAddr;

use tonic::transport::Endpoint;

/// Whether plaintext (`http://`) to another machine is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plaintext {
    /// `http://` only to loopback addresses; the safe default.
    #[default]
    LoopbackOnly,
    /// `http://` anywhere: for networks where something else encrypts
    /// (a service mesh sidecar). Bearer tokens cross the wire readable.
    AllowAnywhere,
}

/// An endpoint that would expose credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refusing to send credentials in plaintext to {0}: use https://, or allow it explicitly with Plaintext::AllowAnywhere"
)]
pub struct PlaintextRefused(String);

/// Checks `endpoint` against `policy`.
pub fn check(endpoint: &Endpoint, policy: Plaintext) -> Result<(), PlaintextRefused> {
    let uri = endpoint.uri();
    if uri.scheme_str() == Some("https") || policy == Plaintext::AllowAnywhere {
        return Ok(());
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(PlaintextRefused(uri.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(uri: &'static str) -> Endpoint {
        Endpoint::from_static(uri)
    }

    #[test]
    fn plaintext_to_loopback_is_allowed() {
        for uri in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:50051",
            "http://127.9.9.9",
        ] {
            assert!(
                check(&endpoint(uri), Plaintext::LoopbackOnly).is_ok(),
                "{uri}"
            );
        }
    }

    #[test]
    fn plaintext_to_another_machine_is_refused_unless_allowed() {
        for uri in [
            "http://10.0.0.5:50051",
            "http://tessera.internal:50051",
            "http://localhost.evil.example",
        ] {
            assert!(
                check(&endpoint(uri), Plaintext::LoopbackOnly).is_err(),
                "{uri}"
            );
            assert!(
                check(&endpoint(uri), Plaintext::AllowAnywhere).is_ok(),
                "{uri}"
            );
        }
    }

    #[test]
    fn tls_is_allowed_anywhere() {
        assert!(
            check(
                &endpoint("https://tessera.example:443"),
                Plaintext::LoopbackOnly
            )
            .is_ok()
        );
    }
}
