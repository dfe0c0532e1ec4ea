//! A client's certificate as the domain sees it: its SHA-256 thumbprint
//! (RFC 8705 `x5t#S256`) and the names in its subjectAltName (DNS names,
//! and URIs such as SPIFFE IDs), read from the DER the TLS layer verified.

use aws_lc_rs::{constant_time, digest};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::InvalidInput;

/// A verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// SHA-256 of the DER certificate.
    pub sha256: [u8; 32],
    /// DNS names and URIs from subjectAltName.
    pub names: Vec<String>,
}

impl ClientCertificate {
    /// The certificate in DER form (already verified by TLS).
    pub fn from_der(der: &[u8]) -> Self {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Self {
            sha256,
            names: subject_alt_names(der).unwrap_or_default(),
        }
    }

    /// The RFC 8705 `x5t#S256` confirmation value: base64url SHA-256.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256)
    }

    /// True when this is the certificate with thumbprint `sha256`.
    pub fn has_sha256(&self, sha256: &[u8; 32]) -> bool {
        constant_time::verify_slices_are_equal(&self.sha256, sha256).is_ok()
    }
}

/// A certificate thumbprint as an operator gives it: 64 hex digits (with or
/// without colons, as `openssl x509 -fingerprint -sha256` prints them), or
/// the base64url `x5t#S256` form.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], InvalidInput> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
    } else {
        URL_SAFE_NO_PAD.decode(text).ok()
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            InvalidInput(format!(
                "certificate thumbprint {text:?} is not a SHA-256: give 64 hex digits \
                 (openssl x509 -noout -fingerprint -sha256) or base64url"
            ))
        })
}

/// Splits one DER element off `input`: (tag, contents, remainder).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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

/// The elements of a constructed DER value, in order.
fn children(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = element(input)?;
        input = rest;
        Some((tag, contents))
    })
}

/// `id-ce-subjectAltName`, 2.5.29.17, as DER contents.
const SAN_OID: [u8; 3] = [0x55, 0x1d, 0x11];

/// DNS names (`[2]`) and URIs (`[6]`) of the certificate's subjectAltName:
/// Certificate → tbsCertificate → `[3]` extensions → the SAN extension's
/// OCTET STRING → GeneralNames.
fn subject_alt_names(der: &[u8]) -> Option<Vec<String>> {
    let (_, certificate, _) = element(der)?;
    let (_, tbs, _) = element(certificate)?;
    let (_, extensions) = children(tbs).find(|(tag, _)| *tag == 0xa3)?;
    let (_, extensions, _) = element(extensions)?;
    for (_, extension) in children(extensions) {
        let mut fields = children(extension);
        let (_, oid) = fields.next()?;
        if oid != SAN_OID {
            continue;
        }
        let (_, value) = fields.find(|(tag, _)| *tag == 0x04)?;
        let (_, names, _) = element(value)?;
        return Some(
            children(names)
                .filter(|(tag, _)| matches!(tag, 0x82 | 0x86))
                .filter_map(|(_, name)| std::str::from_utf8(name).ok().map(str::to_owned))
                .collect(),
        );
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbprint_is_read_in_hex_with_or_without_colons_or_base64url() {
        let bytes: [u8; 32] = core::array::from_fn(|i| u8::try_from(i).unwrap() * 7);
        let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        let colons = bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_sha256(&hex).unwrap(), bytes);
        assert_eq!(parse_sha256(&colons).unwrap(), bytes);
        assert_eq!(parse_sha256(&URL_SAFE_NO_PAD.encode(bytes)).unwrap(), bytes);
        assert!(parse_sha256("abcd").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
