//! The key-encryption key: AES-256-GCM over the signing keys' private halves,
//! so a database dump alone does not give away the power to mint tokens.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};

use crate::model::random_bytes;

/// Why a key-encryption key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The configured value is not base64 of 32 bytes.
    #[error("the key-encryption key must be 32 bytes, base64-encoded")]
    Malformed,
    /// A ciphertext did not decrypt: wrong key, or tampered data.
    #[error("a private key did not decrypt: wrong key-encryption key, or tampered data")]
    Decrypt,
}

/// An AES-256-GCM key. Its `Debug` prints nothing secret.
pub struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Parses the configured base64 form.
    pub fn from_base64(encoded: &SecretString) -> Result<Self, KekError> {
        let bytes = STANDARD
            .decode(encoded.expose_secret().trim())
            .map_err(|_| KekError::Malformed)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KekError::Malformed)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// A new random key, in the base64 form [`Kek::from_base64`] reads.
    pub fn generate_base64() -> SecretString {
        SecretString::from(STANDARD.encode(random_bytes::<32>()))
    }

    /// `nonce || ciphertext || tag`; `context` (the key id) is bound as
    /// associated data so a ciphertext cannot be moved to another row.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let mut buf = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing cannot fail for in-memory buffers");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// Reverses [`Kek::seal`].
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, KekError> {
        if sealed.len() < NONCE_LEN {
            return Err(KekError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Decrypt)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| KekError::Decrypt)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_with_the_same_key_and_context_only() {
        let kek = Kek::from_base64(&Kek::generate_base64()).unwrap();
        let other = Kek::from_base64(&Kek::generate_base64()).unwrap();
        let sealed = kek.seal(b"private", "kid-1");
        assert_eq!(kek.open(&sealed, "kid-1").unwrap(), b"private");
        assert!(kek.open(&sealed, "kid-2").is_err());
        assert!(other.open(&sealed, "kid-1").is_err());
    }

    #[test]
    fn a_short_key_is_rejected() {
        assert!(Kek::from_base64(&SecretString::from("c2hvcnQ=")).is_err());
    }
}
