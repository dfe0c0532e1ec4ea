//! Tessera's token service: issues, rotates, revokes and introspects tokens
//! over gRPC.
//!
//! # Layout
//! Requests flow one way: `grpc` → `domain` → `store`, `keys`, `revocation`,
//! `directory` → `model`.
//! - `model`: the leaf: names, secrets, time, revocation entries, the
//!   refresh token's states. Imports nothing from the crate.
//! - `store`: the storage trait and records; one portable SQL
//!   implementation, per-backend connection, migrations and change feed.
//! - `keys`: signing keys (encrypted at rest by the KEK), rotation; token
//!   rules themselves are the `tessera_token` crate's.
//! - `revocation`: the in-memory revocation state Introspect consults.
//! - `directory`: the clients in use, held in memory for client logins
//!   (bounded), dropped when the store's directory version moves.
//! - `follow`: the task keeping keys and revocation state in step with the
//!   database (LISTEN/NOTIFY and polling).
//! - `domain`: the use cases (issue, refresh, revoke, introspect, admin);
//!   no gRPC, no SQL.
//! - `grpc`: protobuf ↔ domain; `grpc::status` is the one error → status map.
//! - `transport`: accepting connections within bounds (caps, handshake
//!   and idle timeouts, accept backoff); `tls`: certificates re-read when
//!   they change, client certificates verified and handed to handlers.
//! - `config`: typed settings; `startup`: the only place that wires parts
//!   together and serves; `cli`: the `tessera` command line;
//!   `telemetry`: logs, OpenTelemetry, per-request spans.

mod background;
mod cli;
mod config;
mod directory;
mod domain;
mod follow;
mod grpc;
mod http;
mod keys;
mod metrics;
mod model;
mod revocation;
mod startup;
mod store;
mod telemetry;
mod tls;
mod transport;

pub use cli::{Cli, CliError};
pub use config::{Options, Settings, SettingsError};
pub use domain::{
    Admin, AdminError, AdminUserChange, HashingSettings, NewClientCredential, ThrottleSettings,
    TokenSettings,
};
pub use follow::FollowSettings;
pub use grpc::MAX_REQUEST_BYTES;
pub use http::JWKS_MAX_AGE;
pub use keys::{Kek, KekError, KeyError, KeyState, add_key, deployment_algorithm, key_states};
pub use model::{
    Audience, ClientCertificate, ClientId, Clock, ExchangeRules, InvalidInput, ManualClock,
    Password, RefreshTokenState, Revocation, RevocationKind, Scope, ScopeSet, SecretHash,
    SystemClock, UnixTime, Username, parse_sha256, random_id,
};
pub use startup::{Application, StartupError, load_kek, open_admin, open_store, shutdown_signal};
pub use store::{
    Backend, ClientChange, ClientCredential, ClientRecord, Exchange, ExchangeRequest,
    NewRefreshToken, NewSession, Pruned, RefreshTokenRecord, Store, StoreError, StoredKey,
    Successor, UserChange, UserRecord, connect as connect_store,
};
pub use telemetry::{Telemetry, TelemetryError, init as init_telemetry};
pub use tessera_token::Algorithm;
pub use tls::{ClientAuth, TlsError, TlsSettings};
pub use transport::ConnectionSettings;
