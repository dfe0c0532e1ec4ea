//! Where credentials and bearer tokens may be sent, and how: over TLS
//! anywhere, in the clear only to this machine unless the caller explicitly
//! allows it. Every part of the crate that dials (the token source, the
//! verifiers) or attaches tokens to a channel (the interceptor, the layer)
//! checks its endpoint against a [`Transport`] the same way: an `https://`
//! endpoint without a TLS configuration is an error, never a plaintext dial.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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

/// TLS for a client: which CAs to trust, and an identity for mTLS.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pems: Vec<String>,
    system_roots: bool,
    identity: Option<(String, SecretString)>,
    domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("custom_cas", &self.ca_pems.len())
            .field("system_roots", &self.system_roots)
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Trusts nothing yet: add a CA or the system roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in `pem`.
    #[must_use]
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// Trusts the operating system's root certificates too.
    #[must_use]
    pub fn with_system_roots(mut self) -> Self {
        self.system_roots = true;
        self
    }

    /// Presents this certificate (PEM chain) and key (PEM) to servers that
    /// ask for one (mTLS).
    #[must_use]
    pub fn with_identity(mut self, cert_pem: impl Into<String>, key_pem: SecretString) -> Self {
        self.identity = Some((cert_pem.into(), key_pem));
        self
    }

    /// Verifies the server as `name` instead of the endpoint's host.
    #[must_use]
    pub fn with_domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        for pem in &self.ca_pems {
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if self.system_roots {
            config = config.with_native_roots();
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key.expose_secret()));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain);
        }
        config
    }
}

/// How to reach a Tessera, or a service tokens are attached for.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS, for an `https://` endpoint.
    Tls(ClientTls),
    /// Plaintext, for an `http://` endpoint, within this policy.
    Plaintext(Plaintext),
}

impl Default for Transport {
    /// Plaintext to loopback only.
    fn default() -> Self {
        Self::Plaintext(Plaintext::LoopbackOnly)
    }
}

/// An endpoint this transport must not be used with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// `http://` to another machine without `Plaintext::AllowAnywhere`.
    #[error(
        "refusing to send credentials in plaintext to {0}: use https:// with Transport::Tls, \
         or allow it explicitly with Plaintext::AllowAnywhere"
    )]
    PlaintextRefused(String),
    /// `https://` without a TLS configuration.
    #[error(
        "{0} is https:// but no TLS configuration was given: use Transport::Tls \
         (refusing to dial it in plaintext)"
    )]
    TlsNotConfigured(String),
    /// A TLS configuration for an `http://` endpoint.
    #[error("{0} is http:// but a TLS configuration was given: use https://")]
    TlsOverHttp(String),
    /// A TLS configuration that trusts no CA.
    #[error(
        "the TLS configuration for {0} trusts no certificate authority: add one with \
         ClientTls::with_ca_pem or ClientTls::with_system_roots"
    )]
    NoTrust(String),
    /// tonic refused the TLS configuration.
    #[error("TLS configuration for {uri}: {reason}")]
    Tls {
        /// The endpoint.
        uri: String,
        /// Why.
        reason: String,
    },
}

impl Transport {
    /// Checks `endpoint` against this transport.
    pub fn check(&self, endpoint: &Endpoint) -> Result<(), TransportError> {
        let uri = endpoint.uri();
        let https = uri.scheme_str() == Some("https");
        match (self, https) {
            (Self::Tls(tls), true) => {
                if tls.ca_pems.is_empty() && !tls.system_roots {
                    return Err(TransportError::NoTrust(uri.to_string()));
                }
                Ok(())
            }
            (Self::Tls(_), false) => Err(TransportError::TlsOverHttp(uri.to_string())),
            (Self::Plaintext(_), true) => Err(TransportError::TlsNotConfigured(uri.to_string())),
            (Self::Plaintext(Plaintext::AllowAnywhere), false) => Ok(()),
            (Self::Plaintext(Plaintext::LoopbackOnly), false) => {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if loopback {
                    Ok(())
                } else {
                    Err(TransportError::PlaintextRefused(uri.to_string()))
                }
            }
        }
    }

    /// `endpoint`, checked, and set up for TLS when this is TLS.
    pub fn prepare(&self, endpoint: &Endpoint) -> Result<Endpoint, TransportError> {
        self.check(endpoint)?;
        match self {
            Self::Plaintext(_) => Ok(endpoint.clone()),
            Self::Tls(tls) => {
                endpoint
                    .clone()
                    .tls_config(tls.config())
                    .map_err(|e| TransportError::Tls {
                        uri: endpoint.uri().to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(uri: &'static str) -> Endpoint {
        Endpoint::from_static(uri)
    }

    const LOOPBACK_ONLY: Transport = Transport::Plaintext(Plaintext::LoopbackOnly);
    const ANYWHERE: Transport = Transport::Plaintext(Plaintext::AllowAnywhere);

    #[test]
    fn plaintext_to_loopback_is_allowed() {
        for uri in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:50051",
            "http://127.9.9.9",
        ] {
            assert!(LOOPBACK_ONLY.check(&endpoint(uri)).is_ok(), "{uri}");
        }
    }

    #[test]
    fn plaintext_to_another_machine_is_refused_unless_allowed() {
        for uri in [
            "http://10.0.0.5:50051",
            "http://tessera.internal:50051",
            "http://localhost.evil.example",
        ] {
            assert!(matches!(
                LOOPBACK_ONLY.check(&endpoint(uri)),
                Err(TransportError::PlaintextRefused(_))
            ));
            assert!(ANYWHERE.check(&endpoint(uri)).is_ok(), "{uri}");
        }
    }

    #[test]
    fn https_without_a_tls_configuration_is_an_error_even_on_loopback() {
        for transport in [LOOPBACK_ONLY, ANYWHERE] {
            assert!(matches!(
                transport.check(&endpoint("https://127.0.0.1:50051")),
                Err(TransportError::TlsNotConfigured(_))
            ));
        }
    }

    #[test]
    fn tls_needs_https_and_something_to_trust() {
        let trusting = Transport::Tls(ClientTls::new().with_system_roots());
        assert!(
            trusting
                .check(&endpoint("https://tessera.example:443"))
                .is_ok()
        );
        assert!(matches!(
            trusting.check(&endpoint("http://tessera.example")),
            Err(TransportError::TlsOverHttp(_))
        ));
        assert!(matches!(
            Transport::Tls(ClientTls::new()).check(&endpoint("https://tessera.example")),
            Err(TransportError::NoTrust(_))
        ));
    }

    #[test]
    fn the_identity_key_is_not_printed() {
        let tls = ClientTls::new().with_identity("CERT", SecretString::from("SECRET KEY"));
        assert!(!format!("{tls:?}").contains("SECRET"));
    }
}
