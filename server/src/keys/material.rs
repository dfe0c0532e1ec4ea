//! Key generation with aws-lc-rs: a PKCS#8 private key (sealed before it is
//! stored) and its public JWK (with `kid`, `alg` and `use`).

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
use serde_json::json;
use tessera_token::Algorithm;

/// A freshly generated key pair.
pub(super) struct Generated {
    /// PKCS#8 DER; sealed before it is stored.
    pub(super) pkcs8: Vec<u8>,
    /// The public JWK as JSON.
    pub(super) public_jwk: String,
}

/// Generates a key pair for `alg` named `kid`.
pub(super) fn generate(alg: Algorithm, kid: &str) -> Result<Generated, String> {
    let err = |e: aws_lc_rs::error::Unspecified| format!("{alg} key generation failed: {e}");
    let rng = SystemRandom::new();
    let (pkcs8, params) = match alg {
        Algorithm::Es256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(err)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                .map_err(|e| e.to_string())?;
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let (x, y) = point[1..].split_at(32);
            let params = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
            (doc.as_ref().to_vec(), params)
        }
        Algorithm::EdDsa => {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(err)?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
            let params =
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
            (doc.as_ref().to_vec(), params)
        }
        Algorithm::Rs256 => {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(err)?;
            let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            let params = json!({"kty": "RSA", "n": b64(&components.n), "e": b64(&components.e)});
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair)
                .map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use tessera_token::{AccessClaims, Audience, SigningKey, VerifyRules, VerifyingKey};

    use super::*;

    #[test]
    fn every_algorithm_generates_a_key_that_signs_and_verifies() {
        let claims = AccessClaims {
            iss: "i".into(),
            sub: "s".into(),
            aud: Audience::One("a".into()),
            exp: 200,
            iat: 100,
            nbf: 100,
            jti: "j".into(),
            client_id: "c".into(),
            scope: String::new(),
            sid: "s".into(),
            cnf: None,
            roles: Vec::new(),
        };
        let rules = VerifyRules {
            issuer: "i".into(),
            audience: Some("a".into()),
            leeway: std::time::Duration::ZERO,
            max_lifetime: std::time::Duration::from_secs(100),
        };
        for alg in Algorithm::ALL {
            let generated = generate(alg, "k1").unwrap();
            let signing = SigningKey::from_pkcs8("k1", alg, &generated.pkcs8).unwrap();
            let verifying = VerifyingKey::from_jwk_json(&generated.public_jwk).unwrap();
            let token = signing.sign(&claims).unwrap();
            let verified = tessera_token::parse(&token)
                .and_then(|t| t.verify(&verifying, &rules, 150))
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(verified, claims);
            // And by an implementation that is not ours.
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(&generated.public_jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg.as_str().parse().unwrap());
            validation.set_audience(&["a"]);
            validation.validate_exp = false;
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(
                (header.typ.as_deref(), header.kid.as_deref()),
                (Some("at+jwt"), Some("k1"))
            );
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
                &validation,
            )
            .unwrap_or_else(|e| panic!("{alg}: jsonwebtoken refuses it: {e}"));
        }
    }

    #[test]
    fn the_public_jwk_has_no_private_parameters() {
        for alg in Algorithm::ALL {
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
