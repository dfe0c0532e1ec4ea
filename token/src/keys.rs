//! Keys as the token profile uses them: a [`SigningKey`] from a PKCS#8
//! private key, a [`VerifyingKey`] from a public JWK. Neither `Debug`
//! prints key material.

use std::fmt;

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
        Ed25519KeyPair, ParsedPublicKey, RSA_PKCS1_SHA256, RsaKeyPair,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
};

use crate::{ACCESS_TOKEN_TYPE, AccessClaims, Algorithm};

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The private key is not a valid PKCS#8 key for its algorithm.
    #[error("invalid {0} private key")]
    Private(Algorithm),
    /// The JWK is not a public key Tessera can verify with.
    #[error("unusable JWK: {0}")]
    Jwk(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The parsed private key: parsed (and checked) once, not per token.
enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// A private key that signs access tokens under its `kid`.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    signer: Signer,
    /// The base64url JOSE header every token of this key carries.
    header: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A key from its PKCS#8 DER form, checked to be a key of `alg`.
    pub fn from_pkcs8(kid: &str, alg: Algorithm, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let invalid = |_| KeyError::Private(alg);
        let signer = match alg {
            Algorithm::Es256 => Signer::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(invalid)?,
            ),
            Algorithm::EdDsa => Signer::EdDsa(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(invalid)?),
            Algorithm::Rs256 => {
                // The PKCS#1 RSAPrivateKey inside the PKCS#8 wrapper.
                let pkcs1 = pkcs8_inner_key(pkcs8).ok_or(KeyError::Private(alg))?;
                Signer::Rs256(RsaKeyPair::from_der(pkcs1).map_err(invalid)?)
            }
        };
        let header = serde_json::json!({
            "typ": ACCESS_TOKEN_TYPE,
            "alg": alg.as_str(),
            "kid": kid,
        });
        Ok(Self {
            kid: kid.to_owned(),
            alg,
            signer,
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
        })
    }

    /// The key id written as `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// `claims` as a signed RFC 9068 access token (compact JWS).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 400);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.sign_raw(token.as_bytes())?;
        token.push('.');
        token.push_str(&signature);
        Ok(token)
    }

    /// Signs arbitrary bytes (a JWS signing input), base64url-encoded.
    pub fn sign_raw(&self, message: &[u8]) -> Result<String, KeyError> {
        let failed = |_| KeyError::Sign(format!("{} signing failed", self.alg));
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Es256(key) => key.sign(&rng, message).map_err(failed)?.as_ref().to_vec(),
            Signer::EdDsa(key) => key.sign(message).as_ref().to_vec(),
            Signer::Rs256(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(failed)?;
                signature
            }
        };
        Ok(URL_SAFE_NO_PAD.encode(signature))
    }
}

/// How a public key checks signatures.
enum Checker {
    /// ES256 and EdDSA: the point parsed (and validated) once.
    Parsed(ParsedPublicKey),
    /// RS256: through jsonwebtoken, from the modulus and exponent.
    Rsa(DecodingKey),
}

/// A public key that checks signatures made under its `kid`.
pub struct VerifyingKey {
    kid: String,
    alg: Algorithm,
    checker: Checker,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// A key from a public JWK, which must name its `kid` and an `alg`
    /// Tessera signs with (the algorithm is pinned to the key, never taken
    /// from a token).
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| KeyError::Jwk("no kid".into()))?;
        let alg = jwk
            .common
            .key_algorithm
            .ok_or_else(|| KeyError::Jwk("no alg".into()))?;
        let alg: Algorithm = alg
            .to_string()
            .parse()
            .map_err(|e: crate::UnknownAlgorithm| KeyError::Jwk(e.to_string()))?;
        let unusable = |what: &str| KeyError::Jwk(format!("not a {alg} public key: {what}"));
        let base64 = |field: &str| {
            URL_SAFE_NO_PAD
                .decode(field)
                .map_err(|_| unusable("a parameter is not base64url"))
        };
        let checker = match (alg, &jwk.algorithm) {
            (Algorithm::Es256, AlgorithmParameters::EllipticCurve(ec))
                if ec.curve == EllipticCurve::P256 =>
            {
                let (x, y) = (base64(&ec.x)?, base64(&ec.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(unusable("x and y must be 32 bytes"));
                }
                let point = [&[0x04][..], &x, &y].concat();
                Checker::Parsed(
                    ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                        .map_err(|_| unusable("not a point on P-256"))?,
                )
            }
            (Algorithm::EdDsa, AlgorithmParameters::OctetKeyPair(okp))
                if okp.curve == EllipticCurve::Ed25519 =>
            {
                Checker::Parsed(
                    ParsedPublicKey::new(&ED25519, base64(&okp.x)?)
                        .map_err(|_| unusable("not an Ed25519 key"))?,
                )
            }
            (Algorithm::Rs256, AlgorithmParameters::RSA(_)) => {
                Checker::Rsa(DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Jwk(e.to_string()))?)
            }
            _ => return Err(unusable("its key type or curve")),
        };
        Ok(Self { kid, alg, checker })
    }

    /// A key from a public JWK in JSON form.
    pub fn from_jwk_json(json: &str) -> Result<Self, KeyError> {
        let jwk: Jwk = serde_json::from_str(json).map_err(|e| KeyError::Jwk(e.to_string()))?;
        Self::from_jwk(&jwk)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Whether `signature` (base64url, as a JWS carries it) is this key's
    /// signature over `message`. The signature alone: a token is verified
    /// with [`crate::parse`] and [`crate::UnverifiedToken::verify`].
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        match &self.checker {
            Checker::Parsed(key) => {
                // ES256 and Ed25519 signatures are 64 bytes (86 characters).
                let mut raw = [0u8; 64];
                matches!(URL_SAFE_NO_PAD.decode_slice(signature, &mut raw), Ok(64))
                    && key.verify_sig(message, &raw).is_ok()
            }
            Checker::Rsa(decoding) => {
                jsonwebtoken::crypto::verify(signature, message, decoding, self.alg.jwt())
                    .unwrap_or(false)
            }
        }
    }
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo`:
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, ... }`.
fn pkcs8_inner_key(der: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, rest) = der_element(body)?;
    if tag != 0x02 {
        return None;
    }
    let (tag, _, rest) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, key, _) = der_element(rest)?;
    (tag == 0x04).then_some(key)
}

/// Splits one DER element off `input`: (tag, contents, remainder).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_private_key_of_any_algorithm() {
        for alg in Algorithm::ALL {
            assert!(SigningKey::from_pkcs8("k", alg, b"not a key").is_err());
        }
    }

    #[test]
    fn a_jwk_without_kid_or_alg_or_with_a_foreign_alg_is_refused() {
        // RFC 7517 A.1's P-256 key.
        let point = r#""kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM""#;
        assert!(VerifyingKey::from_jwk_json(&format!(r#"{{{point},"alg":"ES256"}}"#)).is_err());
        assert!(VerifyingKey::from_jwk_json(&format!(r#"{{{point},"kid":"k"}}"#)).is_err());
        assert!(
            VerifyingKey::from_jwk_json(&format!(r#"{{{point},"kid":"k","alg":"ES384"}}"#))
                .is_err()
        );
        let key = VerifyingKey::from_jwk_json(&format!(r#"{{{point},"kid":"k","alg":"ES256"}}"#))
            .unwrap();
        assert_eq!((key.kid(), key.algorithm()), ("k", Algorithm::Es256));
        // A point not on the curve, or a key of another type under ES256.
        let off_curve = point.replace("4Etl6SRW", "4Etl6SRX");
        assert!(
            VerifyingKey::from_jwk_json(&format!(r#"{{{off_curve},"kid":"k","alg":"ES256"}}"#))
                .is_err()
        );
        let okp =
            r#""kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo""#;
        assert!(
            VerifyingKey::from_jwk_json(&format!(r#"{{{okp},"kid":"k","alg":"ES256"}}"#)).is_err()
        );
        assert!(
            VerifyingKey::from_jwk_json(&format!(r#"{{{okp},"kid":"k","alg":"EdDSA"}}"#)).is_ok()
        );
    }
}
