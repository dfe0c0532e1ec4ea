//! A client's certificate as the handlers see it: its SHA-256 thumbprint
//! (RFC 8705 `x5t#S256`) and the names in its subjectAltName (DNS names,
//! and URIs such as SPIFFE IDs), read from the DER rustls verified.

use aws_lc_rs::digest;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// A verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCertificate {
    /// SHA-256 of the DER certificate.
    pub(crate) sha256: [u8; 32],
    /// DNS names and URIs from subjectAltName.
    pub(crate) names: Vec<String>,
}

impl ClientCertificate {
    pub(crate) fn from_der(der: &[u8]) -> Self {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Self {
            sha256,
            names: subject_alt_names(der).unwrap_or_default(),
        }
    }

    /// The RFC 8705 `x5t#S256` confirmation value: base64url SHA-256.
    #[allow(dead_code)] // used by RFC 8705 binding, next
    pub(crate) fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256)
    }
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
