//! Tessera's token service: issues, rotates, revokes and introspects tokens
//! over gRPC.
//!
//! # Layout
//! - [`cli`]: the `tessera` command line; [`config`]: typed settings.
//! - [`startup`]: the only place that wires parts together and serves.
//! - [`grpc`]: protobuf ↔ domain, and the one error → status mapping.
//! - [`domain`]: issue, refresh, revoke, introspect; no gRPC, no SQL.
//! - [`store`]: the storage trait, over PostgreSQL or embedded SQLite.
//! - [`keys`]: signing keys (encrypted at rest) and JWT sign/verify.
//! - [`revocation`]: in-memory revocation state and the task following the log.
//! - [`clock`]: injected time; [`telemetry`]: logs and OpenTelemetry.

pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod keys;
pub mod revocation;
pub mod startup;
pub mod store;
pub mod telemetry;
