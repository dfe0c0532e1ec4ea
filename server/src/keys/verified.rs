//! Tokens whose form and signature were verified. Microservices introspect
//! the same tokens over and over, and a signature check costs far more than
//! the rest of an Introspect call; only what cannot change is remembered
//! (the token's form, signature and claims, and which key signed it).
//! Issuer, audience and time are checked again on every use, and
//! revocation is never the cache's business. Expired tokens, and those
//! whose key is no longer published, are swept out at each key re-read.

use std::sync::Arc;

use quick_cache::{Weighter, sync::Cache};
use tessera_token::AccessClaims;

use super::LoadedKey;

/// What the cache may hold, in (estimated) bytes: about 15,000 typical
/// tokens. Bounded by weight rather than count, so large tokens cannot
/// inflate it.
const CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// A typical entry's weight, for sizing the cache's tables.
const TYPICAL_ENTRY_BYTES: u64 = 1100;

/// A verified token: its claims, and the key whose signature it carries.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub(super) key: Arc<LoadedKey>,
    pub(super) claims: Arc<AccessClaims>,
}

#[derive(Debug, Clone, Copy)]
struct ByEstimatedSize;

impl Weighter<Box<str>, Verified> for ByEstimatedSize {
    fn weight(&self, token: &Box<str>, v: &Verified) -> u64 {
        entry_bytes(token, &v.claims)
    }
}

/// What the entry for `token` with `claims` takes: the token, kept as the
/// key, and the claims.
fn entry_bytes(token: &str, claims: &AccessClaims) -> u64 {
    (token.len() + PER_ALLOCATION) as u64 + estimated_bytes(claims)
}

/// The allocator's own bytes on each heap allocation (glibc: 16).
const PER_ALLOCATION: usize = 16;

/// An entry's fixed part: the claims, their `Arc`, the key's box and the
/// cache's slot for it.
const PER_ENTRY: usize = size_of::<AccessClaims>()
    + 2 * size_of::<usize>()
    + PER_ALLOCATION
    + size_of::<Box<str>>()
    + size_of::<Verified>()
    + 32;

/// What the claims `c` take in an entry: its fixed part and every string
/// the claims carry, each a heap allocation of its own.
fn estimated_bytes(c: &AccessClaims) -> u64 {
    let strings = [&c.iss, &c.sub, &c.jti, &c.client_id, &c.scope, &c.sid]
        .into_iter()
        .map(String::len)
        .chain(c.cnf.iter().map(|cnf| cnf.x5t_s256.len()))
        .map(|len| len + PER_ALLOCATION)
        .sum::<usize>();
    (PER_ENTRY + strings + listed(c.aud.iter()) + listed(c.roles.iter().map(String::as_str))) as u64
}

/// The bytes of a list of strings: the list's allocation, and each string's
/// header and allocation.
fn listed<'a>(items: impl Iterator<Item = &'a str>) -> usize {
    PER_ALLOCATION
        + items
            .map(|s| size_of::<String>() + s.len() + PER_ALLOCATION)
            .sum::<usize>()
}

/// The cache of verified tokens: sharded (no global lock), bounded by
/// weight, evicting the coldest entries first.
///
/// Keyed by the token itself: a hit is a token equal byte for byte to one
/// whose signature was checked, so no other token can be taken for it.
/// The table hashes tokens with foldhash, seeded at random per process (a
/// ~500-byte token: ~80 ns in a profile, where its SHA-256 took ~340 ns,
/// twice per Introspect); a collision costs a comparison, never a wrong
/// answer, and only tokens that passed verification are ever inserted.
#[derive(Debug)]
pub(super) struct VerifiedTokens(
    Cache<Box<str>, Verified, ByEstimatedSize, foldhash::quality::RandomState>,
);

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self(Cache::with(
            (CAPACITY_BYTES / TYPICAL_ENTRY_BYTES) as usize,
            CAPACITY_BYTES,
            ByEstimatedSize,
            foldhash::quality::RandomState::default(),
            Default::default(),
        ))
    }
}

impl VerifiedTokens {
    pub(super) fn get(&self, token: &str) -> Option<Verified> {
        self.0.get(token)
    }

    pub(super) fn insert(&self, token: &str, verified: Verified) {
        self.0.insert(token.into(), verified);
    }

    pub(super) fn remove(&self, token: &str) {
        self.0.remove(token);
    }

    /// Keeps only the entries `keep` accepts, one shard locked at a time;
    /// the claims of the others are freed once no shard is locked, so a
    /// large sweep does not hold up lookups.
    pub(super) fn retain(&self, keep: impl Fn(&Verified) -> bool) {
        let gone = std::cell::RefCell::new(Vec::new());
        self.0.retain(|_, v| {
            let kept = keep(v);
            if !kept {
                gone.borrow_mut().push(Arc::clone(&v.claims));
            }
            kept
        });
        drop(gone);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(roles: Vec<String>, scope: String) -> AccessClaims {
        AccessClaims {
            iss: "tessera".into(),
            sub: "u".into(),
            aud: tessera_token::Audience::One("api".into()),
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "j".into(),
            client_id: "c".into(),
            scope,
            sid: "s".into(),
            cnf: None,
            roles,
        }
    }

    #[test]
    fn every_string_a_token_carries_counts_toward_the_bound() {
        let plain = estimated_bytes(&claims(Vec::new(), "read".into()));
        let roles: Vec<String> = (0..50).map(|i| format!("role-{i:035}")).collect();
        let carried: u64 = roles.iter().map(|r| r.len() as u64).sum();
        assert!(estimated_bytes(&claims(roles, "read".into())) >= plain + carried);
        let scope = "s".repeat(2000);
        assert!(estimated_bytes(&claims(Vec::new(), scope)) >= plain + 2000 - 4);
    }

    #[test]
    fn the_token_a_cache_entry_is_keyed_by_counts_toward_the_bound_too() {
        let claims = claims(Vec::new(), String::new());
        let short = entry_bytes("a.b.c", &claims);
        let long = entry_bytes(&"t".repeat(4000), &claims);
        assert!(long >= short + 4000 - 5, "{short} {long}");
        assert!(short >= estimated_bytes(&claims));
    }
}
