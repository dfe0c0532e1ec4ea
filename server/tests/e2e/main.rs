//! End-to-end tests: every test starts its own Tessera on `127.0.0.1:0`
//! over its own database (a fresh PostgreSQL database, or a SQLite file in a
//! temp folder) and talks real gRPC to it; `cli` runs the real `tessera`
//! binary. One binary, so the suite links once.
//!
//! PostgreSQL comes from `TESSERA_TEST_DATABASE_URL`, which
//! `scripts/test.sh` sets after starting a throwaway cluster. Without it the
//! PostgreSQL tests fail rather than skip, so a run that silently missed
//! them cannot look green.

mod helpers;

mod api;
mod bound_tokens;
mod cli;
mod client;
mod deployment;
mod faults;
mod gateway;
mod guessing;
mod hostile_tokens;
mod limits;
mod operations;
mod outside;
mod pki;
mod replicas;
mod restart;
mod store;
mod tls;
