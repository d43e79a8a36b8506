//! root-cert.pem: the mesh root CA(s) the agent trusts for istiod and for
//! workload certificates, one or more PEM `CERTIFICATE` blocks.

use std::fmt;

use x509_parser::pem::Pem;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514 text, e.g. `O=cluster.local`.
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// basicConstraints `cA: TRUE`.
    pub is_ca: bool,
    /// keyUsage keyCertSign; `None` when the certificate has no keyUsage
    /// extension (then nothing is restricted).
    pub key_cert_sign: Option<bool>,
    /// Lower-case hex SHA-256 of the DER bytes.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub message: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CertError {}

fn err(message: impl Into<String>) -> CertError {
    CertError {
        message: message.into(),
    }
}

/// Every certificate in the file, in order. Any other PEM block is refused:
/// a private key here would be placed world-readable.
pub fn parse(bytes: &[u8]) -> Result<Vec<CertInfo>, CertError> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    for (i, pem) in Pem::iter_from_buffer(bytes).enumerate() {
        let n = i + 1;
        let pem = pem.map_err(|e| err(format!("PEM block {n} is broken: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(err(format!(
                "PEM block {n} is a {}, not a CERTIFICATE",
                pem.label
            )));
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| err(format!("certificate {n} is not valid X.509: {e}")))?;
        let validity = cert.validity();
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| err(format!("certificate {n}: bad basicConstraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        let key_cert_sign = cert
            .key_usage()
            .map_err(|e| err(format!("certificate {n}: bad keyUsage: {e}")))?
            .map(|ku| ku.value.key_cert_sign());
        out.push(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            is_ca,
            key_cert_sign,
            sha256: format!("{:x}", Sha256::digest(&pem.contents)),
        });
    }
    if out.is_empty() {
        return Err(err("no PEM CERTIFICATE block found"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};

    fn cert(ca: bool) -> String {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "cluster.local");
        p.distinguished_name = dn;
        p.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::NoCa
        };
        p.not_before = time::macros::datetime!(2020-01-01 0:00 UTC);
        p.not_after = time::macros::datetime!(2030-01-01 0:00 UTC);
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn reads_ca_and_leaf() {
        let text = cert(true) + &cert(false);
        let v = parse(text.as_bytes()).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0].is_ca && !v[1].is_ca);
        assert_eq!(v[0].subject, "O=cluster.local");
        assert_eq!(v[0].not_before, 1_577_836_800);
        assert_eq!(v[0].not_after, 1_893_456_000);
    }

    #[test]
    fn refused() {
        let good = cert(true);
        let truncated = &good[..good.len() / 2];
        for bad in [
            "",
            "hello",
            truncated,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse(&[0xff, 0xfe, 0, 1, 2]).is_err());
    }

    #[test]
    fn errors_name_the_block_by_its_position() {
        let text =
            cert(true) + "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        let e = parse(text.as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PEM block 2 is a PRIVATE KEY, not a CERTIFICATE"
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = b"-----BEGIN CERTIFICATE-----\n".to_vec();
            b.extend(bytes);
            let _ = parse(&b);
        }
    }
}
