//! Tokens whose form and signature were verified. Microservices introspect
//! the same tokens over and over, and a signature check costs far more than
//! the rest of an Introspect call; only what cannot change is remembered
//! (the token's form, signature and claims, and which key signed it).
//! Issuer, audience and time are checked again on every use, and
//! revocation is never the cache's business. Expired tokens, and those
//! whose key is no longer published, are swept out at each key re-read.

use std::sync::Arc;

use aws_lc_rs::digest;
use quick_cache::{Weighter, sync::Cache};
use tessera_token::AccessClaims;

use super::LoadedKey;

/// What the cache may hold, in (estimated) bytes: about 25,000 typical
/// tokens. Bounded by weight rather than count, so large tokens cannot
/// inflate it.
const CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// A typical entry's weight, for sizing the cache's tables.
const TYPICAL_ENTRY_BYTES: u64 = 640;

/// The SHA-256 of a token: a fixed-size key that no other token can share.
type TokenDigest = [u8; 32];

/// A verified token: its claims, and the key whose signature it carries.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub(super) key: Arc<LoadedKey>,
    pub(super) claims: Arc<AccessClaims>,
}

#[derive(Debug, Clone, Copy)]
struct ByEstimatedSize;

impl Weighter<TokenDigest, Verified> for ByEstimatedSize {
    fn weight(&self, _: &TokenDigest, v: &Verified) -> u64 {
        estimated_bytes(&v.claims)
    }
}

/// The allocator's own bytes on each heap allocation (glibc: 16).
const PER_ALLOCATION: usize = 16;

/// An entry's fixed part: the claims, their `Arc`, the digest and the
/// cache's slot for it.
const PER_ENTRY: usize = size_of::<AccessClaims>()
    + 2 * size_of::<usize>()
    + PER_ALLOCATION
    + size_of::<TokenDigest>()
    + size_of::<Verified>()
    + 32;

/// What an entry holding `c` takes: its fixed part and every string the
/// claims carry, each a heap allocation of its own.
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
#[derive(Debug)]
pub(super) struct VerifiedTokens(Cache<TokenDigest, Verified, ByEstimatedSize>);

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self(Cache::with_weighter(
            (CAPACITY_BYTES / TYPICAL_ENTRY_BYTES) as usize,
            CAPACITY_BYTES,
            ByEstimatedSize,
        ))
    }
}

impl VerifiedTokens {
    pub(super) fn digest(token: &str) -> TokenDigest {
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    pub(super) fn get(&self, digest: &TokenDigest) -> Option<Verified> {
        self.0.get(digest)
    }

    pub(super) fn insert(&self, digest: TokenDigest, verified: Verified) {
        self.0.insert(digest, verified);
    }

    pub(super) fn remove(&self, digest: &TokenDigest) {
        self.0.remove(digest);
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

    #[test]
    fn every_string_a_token_carries_counts_toward_the_bound() {
        let claims = |roles: Vec<String>, scope: String| AccessClaims {
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
        };
        let plain = estimated_bytes(&claims(Vec::new(), "read".into()));
        let roles: Vec<String> = (0..50).map(|i| format!("role-{i:035}")).collect();
        let carried: u64 = roles.iter().map(|r| r.len() as u64).sum();
        assert!(estimated_bytes(&claims(roles, "read".into())) >= plain + carried);
        let scope = "s".repeat(2000);
        assert!(estimated_bytes(&claims(Vec::new(), scope)) >= plain + 2000 - 4);
    }
}
