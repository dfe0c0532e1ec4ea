//! Tokens whose form and signature were verified. Microservices introspect
//! the same tokens over and over, and a signature check costs far more than
//! the rest of an Introspect call; only what cannot change is remembered
//! (the token's form, signature and claims, and which key signed it).
//! Issuer, audience and time are checked again on every use, and
//! revocation is never the cache's business.

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
        let c = &v.claims;
        let strings = c.iss.len()
            + c.sub.len()
            + c.aud.iter().map(|a| a.len() + 24).sum::<usize>()
            + c.jti.len()
            + c.client_id.len()
            + c.scope.len()
            + c.sid.len()
            + c.cnf.as_ref().map_or(0, |cnf| cnf.x5t_s256.len());
        // The strings, their headers and the entry's own bookkeeping.
        (strings + 256) as u64
    }
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

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}
