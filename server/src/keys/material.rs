//! Key generation and conversion between aws-lc-rs key pairs, PKCS#8, public
//! JWKs and jsonwebtoken's key types.

use std::{fmt, str::FromStr};

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
        RsaPublicKeyComponents,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, jwk::Jwk};
use serde_json::json;

/// Signing algorithms Tessera can use for access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256: the default, small and fast to verify.
    Es256,
    /// Ed25519.
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys, for verifiers that know nothing else.
    Rs256,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    /// The jsonwebtoken algorithm, pinned for every key of this kind.
    pub fn jwt_algorithm(self) -> Algorithm {
        match self {
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
            Self::Rs256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SigningAlg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Self::Es256),
            "EdDSA" => Ok(Self::EdDsa),
            "RS256" => Ok(Self::Rs256),
            other => Err(format!(
                "unsupported signing algorithm {other:?} (ES256, EdDSA or RS256)"
            )),
        }
    }
}

/// Why key material could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("invalid key material: {0}")]
pub struct KeyMaterialError(pub String);

fn err(what: impl fmt::Display) -> KeyMaterialError {
    KeyMaterialError(what.to_string())
}

/// A freshly generated key pair: PKCS#8 private key and public JWK (with
/// `kid`, `alg` and `use`).
pub struct Generated {
    /// PKCS#8 DER; sealed before it is stored.
    pub pkcs8: Vec<u8>,
    /// The public JWK as JSON.
    pub public_jwk: String,
}

/// Generates a key pair for `alg` named `kid`.
pub fn generate(alg: SigningAlg, kid: &str) -> Result<Generated, KeyMaterialError> {
    let rng = SystemRandom::new();
    let (pkcs8, params) = match alg {
        SigningAlg::Es256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(err)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                .map_err(err)?;
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let (x, y) = point[1..].split_at(32);
            let params = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
            (doc.as_ref().to_vec(), params)
        }
        SigningAlg::EdDsa => {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(err)?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(err)?;
            let params =
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
            (doc.as_ref().to_vec(), params)
        }
        SigningAlg::Rs256 => {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(err)?;
            let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            let params = json!({"kty": "RSA", "n": b64(&components.n), "e": b64(&components.e)});
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair).map_err(err)?;
            (der.as_ref().to_vec(), params)
        }
    };
    let mut jwk = params;
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.as_str());
    jwk["use"] = json!("sig");
    Ok(Generated {
        pkcs8,
        public_jwk: jwk.to_string(),
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The jsonwebtoken signing key for a PKCS#8 private key.
pub fn encoding_key(alg: SigningAlg, pkcs8: &[u8]) -> Result<EncodingKey, KeyMaterialError> {
    match alg {
        SigningAlg::Es256 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(err)?;
            Ok(EncodingKey::from_ec_der(pkcs8))
        }
        SigningAlg::EdDsa => {
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(err)?;
            Ok(EncodingKey::from_ed_der(pkcs8))
        }
        SigningAlg::Rs256 => {
            // jsonwebtoken wants the PKCS#1 RSAPrivateKey inside the PKCS#8 wrapper.
            let pkcs1 = pkcs8_inner_key(pkcs8).ok_or_else(|| err("RSA PKCS#8 is malformed"))?;
            RsaKeyPair::from_der(pkcs1).map_err(err)?;
            Ok(EncodingKey::from_rsa_der(pkcs1))
        }
    }
}

/// The jsonwebtoken verifying key for a stored public JWK.
pub fn decoding_key(public_jwk: &str) -> Result<DecodingKey, KeyMaterialError> {
    let jwk: Jwk = serde_json::from_str(public_jwk).map_err(err)?;
    DecodingKey::from_jwk(&jwk).map_err(err)
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
    fn every_algorithm_generates_a_key_that_signs_and_verifies() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Rs256] {
            let generated = generate(alg, "k1").unwrap();
            let enc = encoding_key(alg, &generated.pkcs8).unwrap();
            let dec = decoding_key(&generated.public_jwk).unwrap();
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(alg.jwt_algorithm()),
                &json!({"sub": "x"}),
                &enc,
            )
            .unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg.jwt_algorithm());
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &dec, &validation)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
        }
    }

    #[test]
    fn the_public_jwk_has_no_private_parameters() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Rs256] {
            let jwk: serde_json::Value =
                serde_json::from_str(&generate(alg, "k1").unwrap().public_jwk).unwrap();
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(jwk.get(private).is_none(), "{alg} JWK has {private}");
            }
            assert_eq!(jwk["kid"], "k1");
            assert_eq!(jwk["alg"], alg.as_str());
        }
    }
}
