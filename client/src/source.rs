//! A token source: one per credential, cheap to clone, shared by any number
//! of channels. A single background task obtains tokens and publishes them
//! through a `watch` channel, so exactly one refresh is in flight however
//! many calls wait, and callers never block while a valid token exists.

use std::{
    hash::{BuildHasher, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use tessera::pb::{
    ClientCredentialsGrant, IssueRequest, PasswordGrant, RefreshRequest, issue_request::Grant,
    token_service_client::TokenServiceClient,
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::{Instant, sleep_until, timeout},
};
use tonic::{
    Code, Status,
    metadata::AsciiMetadataValue,
    transport::{Channel, Endpoint},
};
use tracing::Instrument;

use crate::transport::{Transport, TransportError};

/// What the source authenticates with.
pub enum Credentials {
    /// A user's name and password (password grant).
    Password {
        /// Login name.
        username: String,
        /// Password.
        password: SecretString,
    },
    /// A client's id and secret (client credentials grant).
    ClientCredentials {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
    },
    /// An existing refresh token; when it is rejected there is nothing to
    /// fall back to, and the source reports UNAUTHENTICATED.
    RefreshToken(SecretString),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Password { username, .. } => write!(f, "Password({username})"),
            Self::ClientCredentials { client_id, .. } => {
                write!(f, "ClientCredentials({client_id})")
            }
            Self::RefreshToken(_) => f.write_str("RefreshToken(..)"),
        }
    }
}

/// How the source schedules its work.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Refresh when this fraction of the token's lifetime has passed.
    pub refresh_at: f64,
    /// Random spread around `refresh_at` (± this fraction of the lifetime),
    /// so many clients started together do not refresh together.
    pub jitter: f64,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Deadline of each Issue or Refresh call (the source's own, never a caller's).
    pub rpc_timeout: Duration,
    /// `invalidate()` is honoured at most once per this interval.
    pub invalidate_interval: Duration,
    /// A token is not handed out in its last moments, so it does not expire in flight.
    pub expiry_margin: Duration,
    /// Scopes to ask for; empty means all the principal's.
    pub scopes: Vec<String>,
    /// Audience to ask for; empty means the server default.
    pub audience: String,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            refresh_at: 0.75,
            jitter: 0.05,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(10),
            invalidate_interval: Duration::from_secs(5),
            expiry_margin: Duration::from_secs(1),
            scopes: Vec::new(),
            audience: String::new(),
        }
    }
}

/// An access token ready to attach, with its deadline on the monotonic clock.
#[derive(Clone)]
pub struct AccessToken {
    /// `Bearer <token>`, marked sensitive so it is never logged by tonic or hyper.
    header: AsciiMetadataValue,
    /// When the source stops handing it out.
    usable_until: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("usable_until", &self.usable_until)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    /// The `authorization` metadata value.
    pub fn header(&self) -> &AsciiMetadataValue {
        &self.header
    }

    /// The bare token (for a call that carries it in a message, like Introspect's).
    pub fn secret(&self) -> &str {
        let value = self.header.to_str().unwrap_or_default();
        value.strip_prefix("Bearer ").unwrap_or(value)
    }

    fn is_usable(&self) -> bool {
        Instant::now() < self.usable_until
    }
}

/// Counters kept by a source.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Tokens obtained with Issue.
    pub issues: AtomicU64,
    /// Tokens obtained with Refresh.
    pub refreshes: AtomicU64,
    /// Rejected refreshes that fell back to Issue.
    pub fallbacks: AtomicU64,
    /// Failed attempts (the server was down, slow or said no).
    pub failures: AtomicU64,
    /// Honoured invalidations.
    pub invalidations: AtomicU64,
}

impl SourceMetrics {
    /// Counts an event here and in the OpenTelemetry counter
    /// `tessera_client_token_events_total{event}` (through the global meter
    /// provider: nothing is exported unless the application sets one).
    fn bump(counter: &AtomicU64, event: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        crate::otel::token_events().add(1, &[opentelemetry::KeyValue::new("event", event)]);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The source's task ended (it never does on its own).
    #[error("token source stopped")]
    Stopped,
}

/// Keeps one credential's access token fresh. Clones share everything.
#[derive(Clone, Debug)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The published token. Shared with the refresher, so `invalidate()` can
    /// withdraw a rejected token at once rather than when the refresher next runs.
    publisher: Arc<watch::Sender<Option<AccessToken>>>,
    invalidate: Arc<Notify>,
    last_invalidate: Mutex<Option<Instant>>,
    invalidate_interval: Duration,
    metrics: Arc<SourceMetrics>,
    /// Aborted when the last clone goes away.
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenSource {
    /// Starts obtaining tokens for `credentials` from the Tessera at
    /// `endpoint`, over `transport`. Connects lazily; must be called inside
    /// a tokio runtime.
    pub fn connect(
        endpoint: &Endpoint,
        transport: &Transport,
        credentials: Credentials,
        config: SourceConfig,
    ) -> Result<Self, TransportError> {
        let endpoint = transport.prepare(endpoint)?;
        Ok(Self::new(endpoint.connect_lazy(), credentials, config))
    }

    fn new(channel: Channel, credentials: Credentials, config: SourceConfig) -> Self {
        let (tx, _) = watch::channel(None);
        let tx = Arc::new(tx);
        let invalidate_interval = config.invalidate_interval;
        let invalidate = Arc::new(Notify::new());
        let metrics = Arc::new(SourceMetrics::default());
        let refresh_token = match &credentials {
            Credentials::RefreshToken(token) => Some(token.clone()),
            _ => None,
        };
        let refresher = Refresher {
            client: TokenServiceClient::new(channel),
            credentials,
            refresh_token,
            config,
            tx: Arc::clone(&tx),
            invalidate: Arc::clone(&invalidate),
            metrics: Arc::clone(&metrics),
        };
        let task = tokio::spawn(refresher.run());
        Self {
            inner: Arc::new(Inner {
                publisher: tx,
                invalidate,
                last_invalidate: Mutex::new(None),
                invalidate_interval,
                metrics,
                task,
            }),
        }
    }

    /// The current token if it is still usable; never waits.
    pub fn current(&self) -> Option<AccessToken> {
        self.inner
            .publisher
            .borrow()
            .as_ref()
            .filter(|t| t.is_usable())
            .cloned()
    }

    /// A usable token, waiting for one if there is none yet (start-up, or
    /// after an outage longer than a token's life).
    pub async fn token(&self) -> Result<AccessToken, SourceError> {
        let mut rx = self.inner.publisher.subscribe();
        loop {
            if let Some(token) = rx.borrow_and_update().as_ref().filter(|t| t.is_usable()) {
                return Ok(token.clone());
            }
            rx.changed().await.map_err(|_| SourceError::Stopped)?;
        }
    }

    /// Waits until a first token has been obtained.
    pub async fn ready(&self) -> Result<(), SourceError> {
        self.token().await.map(drop)
    }

    /// Tells the source the server rejected its token: drops it and fetches
    /// another at once. Honoured at most once per `invalidate_interval`, so a
    /// misbehaving server cannot turn every failed call into a token request.
    pub fn invalidate(&self) -> bool {
        let mut last = self.inner.last_invalidate.lock();
        if last.is_some_and(|at| at.elapsed() < self.inner.invalidate_interval) {
            return false;
        }
        *last = Some(Instant::now());
        let metrics = &self.inner.metrics;
        SourceMetrics::bump(&metrics.invalidations, "invalidations");
        self.inner.publisher.send_replace(None);
        self.inner.invalidate.notify_one();
        true
    }

    /// The source's counters.
    pub fn metrics(&self) -> &SourceMetrics {
        &self.inner.metrics
    }
}

/// The background task: the only code that calls Issue or Refresh.
struct Refresher {
    client: TokenServiceClient<Channel>,
    credentials: Credentials,
    /// The latest refresh token, if the credential yields them.
    refresh_token: Option<SecretString>,
    config: SourceConfig,
    tx: Arc<watch::Sender<Option<AccessToken>>>,
    invalidate: Arc<Notify>,
    metrics: Arc<SourceMetrics>,
}

/// A token as the server returned it, with when the request was sent.
struct Obtained {
    access_token: String,
    expires_in: Duration,
    sent_at: Instant,
}

impl Refresher {
    async fn run(mut self) {
        let mut backoff = self.config.min_backoff;
        loop {
            let span = tracing::info_span!("tessera.token_refresh", credential = ?self.credentials);
            let next = match self.obtain().instrument(span).await {
                Ok(obtained) => {
                    backoff = self.config.min_backoff;
                    self.publish(&obtained)
                }
                Err(status) => {
                    SourceMetrics::bump(&self.metrics.failures, "failures");
                    tracing::warn!(code = ?status.code(), message = status.message(), "could not obtain a token; keeping the last one until it expires");
                    let delay = jittered(backoff, 0.5);
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    Instant::now() + delay
                }
            };
            tokio::select! {
                () = sleep_until(next) => {}
                () = self.invalidate.notified() => {}
            }
        }
    }

    /// Refresh when there is a refresh token; Issue when there is none or
    /// the server rejects it.
    async fn obtain(&mut self) -> Result<Obtained, Status> {
        if let Some(refresh_token) = self.refresh_token.clone() {
            let request = RefreshRequest {
                refresh_token: refresh_token.expose_secret().to_owned(),
                scopes: self.config.scopes.clone(),
            };
            let sent_at = Instant::now();
            match self
                .call(|mut client| async move { client.refresh(request).await })
                .await
            {
                Ok(response) => {
                    SourceMetrics::bump(&self.metrics.refreshes, "refreshes");
                    let response = response.into_inner();
                    self.refresh_token = Some(SecretString::from(response.refresh_token));
                    return Ok(Obtained {
                        access_token: response.access_token,
                        expires_in: Duration::from_secs(response.expires_in.max(0).unsigned_abs()),
                        sent_at,
                    });
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ) =>
                {
                    tracing::info!("refresh token rejected; issuing a new token instead");
                    SourceMetrics::bump(&self.metrics.fallbacks, "fallbacks");
                    self.refresh_token = None;
                }
                Err(status) => return Err(status),
            }
        }
        let grant = match &self.credentials {
            Credentials::Password { username, password } => Grant::Password(PasswordGrant {
                username: username.clone(),
                password: password.expose_secret().to_owned(),
            }),
            Credentials::ClientCredentials {
                client_id,
                client_secret,
            } => Grant::ClientCredentials(ClientCredentialsGrant {
                client_id: client_id.clone(),
                client_secret: client_secret.expose_secret().to_owned(),
            }),
            Credentials::RefreshToken(_) => {
                return Err(Status::unauthenticated(
                    "the refresh token was rejected and there are no credentials to issue with",
                ));
            }
        };
        let request = IssueRequest {
            grant: Some(grant),
            scopes: self.config.scopes.clone(),
            audience: self.config.audience.clone(),
        };
        let sent_at = Instant::now();
        let response = self
            .call(|mut client| async move { client.issue(request).await })
            .await?
            .into_inner();
        SourceMetrics::bump(&self.metrics.issues, "issues");
        if !response.refresh_token.is_empty() {
            self.refresh_token = Some(SecretString::from(response.refresh_token));
        }
        Ok(Obtained {
            access_token: response.access_token,
            expires_in: Duration::from_secs(response.expires_in.max(0).unsigned_abs()),
            sent_at,
        })
    }

    /// One RPC under the source's own deadline.
    async fn call<T, F, Fut>(&self, rpc: F) -> Result<T, Status>
    where
        F: FnOnce(TokenServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        timeout(self.config.rpc_timeout, rpc(self.client.clone()))
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("token request timed out")))
    }

    /// Publishes a token and returns when to refresh it. Lifetimes count from
    /// when the request was sent, on the monotonic clock, so neither latency
    /// nor the local wall clock can make a token outlive its real expiry.
    fn publish(&self, obtained: &Obtained) -> Instant {
        let expires_at = obtained.sent_at + obtained.expires_in;
        let header = format!("Bearer {}", obtained.access_token);
        let Ok(mut header) = AsciiMetadataValue::try_from(header) else {
            tracing::error!("the server returned a token that is not valid metadata");
            return Instant::now() + self.config.min_backoff;
        };
        header.set_sensitive(true);
        let usable_until = expires_at
            .checked_sub(self.config.expiry_margin)
            .unwrap_or(obtained.sent_at);
        self.tx.send_replace(Some(AccessToken {
            header,
            usable_until,
        }));
        let fraction = (self.config.refresh_at + self.config.jitter * (2.0 * random_unit() - 1.0))
            .clamp(0.1, 0.95);
        obtained.sent_at + obtained.expires_in.mul_f64(fraction)
    }
}

/// A uniformly random number in [0, 1), from the standard library's randomly
/// keyed hasher (jitter needs spread, not cryptographic strength).
fn random_unit() -> f64 {
    // Each RandomState is keyed afresh, so hashing nothing yields a new value.
    let hasher = std::collections::hash_map::RandomState::new().build_hasher();
    #[allow(clippy::cast_precision_loss)]
    let unit = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    unit
}

/// `d` spread by ± `spread` of itself.
fn jittered(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + spread * (2.0 * random_unit() - 1.0))
}
