//! Secret values: passwords, client secrets and refresh tokens, and the
//! randomness they come from. None of them has a `Debug` or `Display` that
//! shows its value.

use aws_lc_rs::{constant_time, digest, rand};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};

use tessera_token::{CLIENT_SECRET_PREFIX, REFRESH_TOKEN_PREFIX};

use super::InvalidInput;

/// Longest password accepted, checked before any hashing so a huge password
/// cannot be used to burn CPU.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Failure of the system RNG is unrecoverable: nothing secret can be made.
    rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes
}

/// 128 random bits, base64url: ids for users, sessions, keys and tokens.
pub fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

/// A password as presented at login or to `user add`.
pub struct Password(SecretString);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    /// Checks length bounds: 1 to `MAX_PASSWORD_BYTES` (1024) bytes.
    pub fn parse(s: SecretString) -> Result<Self, InvalidInput> {
        match s.expose_secret().len() {
            0 => Err(InvalidInput::new("password is empty")),
            n if n > MAX_PASSWORD_BYTES => Err(InvalidInput::new(format!(
                "password is longer than {MAX_PASSWORD_BYTES} bytes"
            ))),
            _ => Ok(Self(s)),
        }
    }

    /// The password itself, for the hasher only.
    pub(crate) fn secret(&self) -> &SecretString {
        &self.0
    }

    /// Its length in characters.
    pub(crate) fn chars(&self) -> usize {
        self.0.expose_secret().chars().count()
    }
}

/// SHA-256 of a high-entropy secret (refresh token or client secret). A fast
/// hash is enough because the input has 256 bits of entropy; it is what the
/// database stores instead of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Hashes `secret`.
    pub fn of(secret: &str) -> Self {
        let d = digest::digest(&digest::SHA256, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Rebuilds a stored hash; `None` when the stored bytes are not a hash.
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time equality, for checking a presented secret.
    pub fn matches(&self, other: &Self) -> bool {
        constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A new high-entropy secret with a recognisable prefix: 256 random bits.
fn new_prefixed_secret(prefix: &str) -> SecretString {
    SecretString::from(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    ))
}

/// A new refresh token.
pub(crate) fn new_refresh_token() -> SecretString {
    new_prefixed_secret(REFRESH_TOKEN_PREFIX)
}

/// A new client secret.
pub(crate) fn new_client_secret() -> SecretString {
    new_prefixed_secret(CLIENT_SECRET_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_password_is_rejected() {
        assert!(Password::parse(SecretString::from("")).is_err());
    }

    #[test]
    fn a_password_of_1024_bytes_is_accepted_and_1025_is_not() {
        assert!(Password::parse(SecretString::from("x".repeat(1024))).is_ok());
        assert!(Password::parse(SecretString::from("x".repeat(1025))).is_err());
    }

    #[test]
    fn refresh_tokens_carry_256_random_bits_and_the_prefix() {
        let a = new_refresh_token();
        let b = new_refresh_token();
        let body = a
            .expose_secret()
            .strip_prefix(REFRESH_TOKEN_PREFIX)
            .unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn a_secret_hash_matches_only_its_own_secret() {
        let h = SecretHash::of("tsc_abc");
        assert!(h.matches(&SecretHash::of("tsc_abc")));
        assert!(!h.matches(&SecretHash::of("tsc_abd")));
    }

    #[test]
    fn secret_hash_debug_prints_nothing_secret() {
        assert_eq!(format!("{:?}", SecretHash::of("x")), "SecretHash(..)");
    }
}
