//! `ca.token`: the real `IstioCertificateService/CreateCertificate` call the
//! agent makes on first start, with a fresh key and the token as bearer.
//! Whatever comes back stays in memory.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tonic::metadata::MetadataValue;

use super::files::{self, Claims};
use super::inputs::{Identity, Inputs, Target};
use super::net::{self, Tls};
use super::proto;
use super::{fail, pass};
use crate::report::Check;

/// A certificate istiod issued to verify, for the XDS check.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Issued {
    pub fn key_clone(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// The workload certificate and key the agent wrote, when the certificate is
/// valid now: pilot-agent presents them on the CA connection and istiod tries
/// them before the token (pilot/pkg/grpc/tls.go, reference §4.3), which is how
/// a VM renews after its token expired.
pub fn workload_credential(
    inputs: &Inputs,
    now: i64,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, i64)> {
    let (cert_pem, key_pem) = inputs.workload.as_ref()?;
    let certs = files::parse_pem_certs(cert_pem).ok()?;
    let (not_before, not_after) = certs.first().map(|(c, _)| (c.not_before, c.not_after))?;
    if now < not_before || now > not_after {
        return None;
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).ok()?;
    let chain = certs
        .into_iter()
        .map(|(_, d)| CertificateDer::from(d))
        .collect();
    Some((chain, key, not_after))
}

/// When the workload certificate the agent wrote has expired, its expiry.
pub fn expired_workload(inputs: &Inputs, now: i64) -> Option<i64> {
    let (cert_pem, _) = inputs.workload.as_ref()?;
    let certs = files::parse_pem_certs(cert_pem).ok()?;
    let not_after = certs.first()?.0.not_after;
    (now > not_after).then_some(not_after)
}

/// Key pair and PEM CSR for `identity`. istiod ignores the CSR's names and
/// signs the caller's identity (security/pkg/server/ca/server.go), but the
/// agent asks for its own, and so do we.
pub fn key_and_csr(identity: &str) -> Result<(rcgen::KeyPair, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(identity.to_string())
            .map_err(|e| format!("identity {identity}: {e}"))?,
    )];
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("building the CSR: {e}"))?;
    Ok((key, csr))
}

pub async fn check(
    inputs: &Inputs,
    t: &Target,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> (Check, Option<Issued>) {
    let id = "ca.token";
    let Some(identity) = inputs.identity() else {
        return (
            fail(
                id,
                "cluster.env names no POD_NAMESPACE/SERVICE_ACCOUNT",
                "see files.cluster_env",
            ),
            None,
        );
    };
    let now = super::now();
    let installed = inputs.sidecar.as_ref();
    if let Some(expired) = expired_workload(inputs, now)
        && !super::version::expired_cert(installed.map(|s| s.version)).ca_uses_token
    {
        // security/pkg/nodeagent/caclient/providers/citadel/client.go@1.10.0
        // loads /etc/certs and presents it whatever its dates; only 1.11
        // added `cert expired, using token instead`. istiod's TLS refuses
        // the expired client certificate, so the token never gets a say.
        return (
            fail(
                id,
                format!(
                    "{} expired at {}, and istio-sidecar {} presents it to the CA anyway: the handshake fails before the token is looked at",
                    files::WORKLOAD_CERT,
                    files::fmt_time(expired),
                    installed.map(|s| s.version.to_string()).unwrap_or_default()
                ),
                format!(
                    "this VM is stuck until the files are removed: delete {} and {}, then `systemctl restart istio` \
                     (it then authenticates with the token); Istio 1.11 and later fall back to the token by themselves",
                    files::WORKLOAD_CERT,
                    files::WORKLOAD_KEY
                ),
            ),
            None,
        );
    }
    let credential_until = workload_credential(inputs, now).map(|(_, _, until)| until);
    let token = inputs
        .token
        .as_deref()
        .map(|t| String::from_utf8_lossy(t).trim().to_string());
    if token.is_none() && credential_until.is_none() {
        return (
            fail(
                id,
                "no token and no valid workload certificate to authenticate with",
                "see files.token: place a fresh token",
            ),
            None,
        );
    }
    let claims = token
        .as_deref()
        .and_then(|t| files::decode_claims(t.as_bytes()).ok());
    let Some(pem) = inputs.root_cert_pem.as_deref() else {
        return (fail(id, "no root-cert.pem", "see files.root_cert"), None);
    };
    match tokio::time::timeout(
        timeout,
        call(pem, t, addrs, token.as_deref(), &identity, inputs, timeout),
    )
    .await
    {
        Err(_) => (
            fail(
                id,
                format!(
                    "no answer from the CA at {} within {}",
                    t.addr(),
                    net::ms(timeout)
                ),
                "istiod accepted the connection but did not answer: it may be overloaded or unable to reach the Kubernetes API for the TokenReview",
            ),
            None,
        ),
        Ok(Err(c)) => (c, None),
        Ok(Ok((chain_pem, key))) => {
            let (mut c, issued) =
                verify_chain(id, pem, &chain_pem, key, &identity, claims.as_ref(), t);
            if let Some(until) = credential_until {
                let expired = claims.as_ref().and_then(|c| c.exp).is_none_or(|e| e <= now);
                c.detail.push_str(&if expired {
                    format!(
                        "; authenticated with the workload certificate (the token has expired): this VM keeps renewing as long as it renews before {}",
                        files::fmt_time(until)
                    )
                } else {
                    "; presented the workload certificate and the token, as the agent does".to_string()
                });
            }
            (c, issued)
        }
    }
}

async fn call(
    root_pem: &[u8],
    t: &Target,
    addrs: &[SocketAddr],
    token: Option<&str>,
    identity: &Identity,
    inputs: &Inputs,
    timeout: Duration,
) -> Result<(Vec<String>, rcgen::KeyPair), Check> {
    let id = "ca.token";
    let client = workload_credential(inputs, super::now()).map(|(c, k, _)| (c, k));
    let tls = Tls::new(root_pem, client).map_err(|e| fail(id, e.clone(), "see files.root_cert"))?;
    let channel = super::grpc::connect(id, &tls, addrs, t, timeout, inputs.owner).await?;
    let (key, csr) = key_and_csr(&identity.spiffe()).map_err(|e| fail(id, e, "internal error"))?;
    let mut req = tonic::Request::new(proto::IstioCertificateRequest {
        csr,
        // Short: the certificate only lives in this process's memory.
        validity_duration: 3600,
        metadata: None,
    });
    if let Some(token) = token {
        let bearer = MetadataValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            fail(
                id,
                "the token has characters a header cannot carry",
                "place the token exactly as istioctl wrote it",
            )
        })?;
        req.metadata_mut().insert("authorization", bearer);
    }
    // The agent sends its cluster ID so istiod picks the right kube client
    // for the TokenReview (security/pkg/nodeagent/caclient/providers/citadel).
    if let Some(cid) = inputs
        .env
        .get("ISTIO_META_CLUSTER_ID")
        .filter(|c| !c.is_empty())
        && let Ok(v) = MetadataValue::from_str(cid)
    {
        req.metadata_mut().insert("clusterid", v);
    }
    // The generated client of istio/api security/v1alpha1/ca.proto.
    let mut client = proto::IstioCertificateServiceClient::new(channel);
    match client.create_certificate(req).await {
        Ok(resp) => Ok((resp.into_inner().cert_chain, key)),
        Err(s) => Err(status_check(id, &s, inputs)),
    }
}

/// A rejected CreateCertificate, explained.
fn status_check(id: &str, s: &tonic::Status, inputs: &Inputs) -> Check {
    let detail = super::grpc::status_text(s);
    let claims: Option<Claims> = inputs
        .token
        .as_deref()
        .and_then(|t| files::decode_claims(t).ok());
    let now = super::now();
    let hint = match s.code() {
        tonic::Code::Unauthenticated => {
            // `request authenticate failure` says nothing more; the reasons
            // below come from what verify can see itself.
            let why = match &claims {
                Some(c) if c.exp.is_some_and(|e| e <= now) => format!(
                    "the token expired at {}: create a new one (istioctl x workload entry configure) and run istio-vm install; \
                     a VM renews with its workload certificate only while that is still valid",
                    files::fmt_time(c.exp.unwrap_or_default())
                ),
                Some(c) if !c.aud.iter().any(|a| a == "istio-ca") => format!(
                    "the token's audience is {:?}: istiod reviews it for istio-ca (TOKEN_AUDIENCES); create it with --audience istio-ca",
                    c.aud
                ),
                _ => "istiod (its TokenReview) rejected the token: the service account was deleted or recreated, the token comes from \
                      another cluster (ISTIO_META_CLUSTER_ID must name istiod's cluster or a known remote), or it was revoked: create a new token"
                    .to_string(),
            };
            format!("neither a certificate nor the token was accepted: {why}")
        }
        // istiod's CreateCertificate answers only Unauthenticated (every
        // authentication failure, `request authenticate failure`),
        // InvalidArgument or Internal (CSR signing errors): it never refuses
        // an identity with PermissionDenied, it signs the caller's
        // (security/pkg/server/ca/server.go@1.10.0 and at master,
        // security/pkg/pki/error/error.go HTTPErrorCode).
        tonic::Code::Internal => "istiod's CA could not sign (`CSR signing error`): its CA is not ready or its signing key \
                                  is unusable: see istiod's log"
            .to_string(),
        tonic::Code::Unimplemented => "`unknown service istio.v1.auth.IstioCertificateService`: CA_ADDR (or discoveryAddress) points at \
                                       something that is not istiod's CA, e.g. an external CA without Istio's API (istio#57664): point CA_ADDR at istiod:15012"
            .to_string(),
        tonic::Code::Unavailable => "the connection broke during the call: a proxy between the VM and istiod, or istiod restarting".to_string(),
        tonic::Code::InvalidArgument => "istiod rejected the CSR or the requested lifetime (`CSR signing error`): report this as a bug in istio-vm".to_string(),
        _ => "see the error message; istiod's log has the matching `Failed to authenticate client` line".to_string(),
    };
    fail(id, detail, hint)
}

fn verify_chain(
    id: &str,
    root_pem: &[u8],
    chain_pem: &[String],
    key: rcgen::KeyPair,
    identity: &Identity,
    claims: Option<&Claims>,
    t: &Target,
) -> (Check, Option<Issued>) {
    let mut ders: Vec<CertificateDer<'static>> = Vec::new();
    for p in chain_pem {
        match files::parse_pem_certs(p.as_bytes()) {
            Ok(cs) => ders.extend(cs.into_iter().map(|(_, d)| CertificateDer::from(d))),
            Err(e) => {
                return (
                    fail(
                        id,
                        format!("istiod returned a chain that does not parse: {e}"),
                        "report this to the mesh operator",
                    ),
                    None,
                );
            }
        }
    }
    let Some(leaf_der) = ders.first() else {
        return (
            fail(
                id,
                "istiod returned an empty certificate chain",
                "check istiod's CA configuration",
            ),
            None,
        );
    };
    let leaf = match x509_parser::parse_x509_certificate(leaf_der) {
        Ok((_, c)) => files::cert_info(&c),
        Err(e) => {
            return (
                fail(
                    id,
                    format!("issued certificate does not parse: {e}"),
                    "report this to the mesh operator",
                ),
                None,
            );
        }
    };
    // Workload certificates are client certificates on the XDS connection:
    // verify them the way istiod will, against root-cert.pem.
    let chained = net::root_store(root_pem).and_then(|roots| {
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            net::provider(),
        )
        .build()
        .map_err(|e| e.to_string())?
        .verify_client_cert(leaf_der, &ders[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    if let Err(e) = chained {
        return (
            fail(
                id,
                format!("the issued certificate does not chain to root-cert.pem: {e}"),
                "istiod signs with an intermediate whose root is not in root-cert.pem (plug-in CA rotated?): regenerate the bundle so root-cert.pem holds the current root",
            ),
            None,
        );
    }
    let want = identity.spiffe();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let issued = Issued {
        chain: ders.clone(),
        key,
    };
    if !leaf.uris.contains(&want) {
        let token_is = claims
            .and_then(|c| c.sub.clone())
            .map(|s| format!(" (the token is for {s})"))
            .unwrap_or_default();
        return (
            fail(
                id,
                format!(
                    "istiod issued {} but cluster.env declares {want}{token_is}",
                    leaf.uris.join(", ")
                ),
                "istiod signs the identity of the token, not the one asked for; XDS will then fail with PermissionDenied \
                 `no identities matched` (istio#35249): use a token of the service account in cluster.env, or fix POD_NAMESPACE/SERVICE_ACCOUNT/TRUST_DOMAIN",
            ),
            Some(issued),
        );
    }
    (
        pass(
            id,
            format!(
                "{} accepted the token and issued {want}, valid until {}, chained to root-cert.pem",
                t.addr(),
                files::fmt_time(leaf.not_after)
            ),
        ),
        Some(issued),
    )
}
