//! `files.*`: the placed files exist with the owners and modes of DESIGN.md,
//! and the token and certificates are valid now.

use std::path::Path;

use x509_parser::prelude::*;

use super::inputs::{self, Inputs};
use super::{fail, pass, skip, warn};
use crate::layout::{self, Owner, Placement};
use crate::report::Check;
use crate::sysroot::{Kind, Sysroot};

pub use super::inputs::{WORKLOAD_CERT, WORKLOAD_KEY};

const CERT_SOON_SECS: i64 = 30 * 24 * 3600;
const TOKEN_SOON_SECS: i64 = 10 * 60;

/// The istio-proxy uid/gid, if the user exists (`Sysroot::user`: NSS when
/// live, the root's /etc/passwd otherwise, as apply and capture see it).
pub fn proxy_ids(root: &Path) -> Option<(u32, u32)> {
    let u = Sysroot::new(root).ok()?.user(layout::PROXY_USER).ok()??;
    Some((u.uid, u.gid))
}

pub use crate::bundle::token::Claims;

/// The token's claims, decoded only: the signature is the API server's
/// business (istiod checks it with a TokenReview).
pub fn decode_claims(token: &[u8]) -> Result<Claims, String> {
    Claims::decode(token).map_err(|e| format!("the token {e}"))
}

/// A certificate's validity window and URI SANs.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<(CertInfo, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for p in Pem::iter_from_buffer(pem) {
        let p = p.map_err(|e| format!("not PEM: {e}"))?;
        if p.label != "CERTIFICATE" {
            continue;
        }
        let (_, c) = X509Certificate::from_der(&p.contents)
            .map_err(|e| format!("a CERTIFICATE block does not parse: {e}"))?;
        out.push((cert_info(&c), p.contents.clone()));
    }
    if out.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(out)
}

pub fn cert_info(c: &X509Certificate<'_>) -> CertInfo {
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        dns.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    CertInfo {
        subject: c.subject().to_string(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        is_ca: c.is_ca(),
        uris,
        dns,
    }
}

pub fn fmt_time(t: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn check_id(p: &Placement) -> String {
    match p.path {
        layout::ROOT_CERT => "files.root_cert".into(),
        layout::TOKEN => "files.token".into(),
        layout::TOKEN_PERSISTENT => "files.token_persistent".into(),
        layout::CLUSTER_ENV => "files.cluster_env".into(),
        layout::MESH_CONFIG => "files.mesh_config".into(),
        // A placement added to layout.rs later still gets a stable id.
        other => format!(
            "files.{}",
            other
                .rsplit('/')
                .next()
                .unwrap_or(other)
                .replace(['-', '.'], "_")
        ),
    }
}

/// Problems with owner and mode, worst first: (fatal, message, fix).
fn owner_mode(
    root: &Path,
    p: &Placement,
    proxy: Option<(u32, u32)>,
    live: bool,
) -> Result<Vec<(bool, String, String)>, String> {
    let m = Sysroot::new(root)
        .and_then(|r| r.stat(p.path))
        .map_err(|e| format!("{}: {e:#}", p.path))?
        .ok_or_else(|| format!("{} does not exist", p.path))?;
    if m.kind != Kind::File {
        // A FIFO or device is never opened (it could block verify forever).
        return Err(format!(
            "{} is not a regular file (a FIFO, device or directory is in its place)",
            p.path
        ));
    }
    let mut out = Vec::new();
    let mode = m.mode;
    if mode != p.mode {
        // A world- or group-readable token is a leaked credential; any other
        // mode difference only departs from the layout.
        let leak = p.secret && mode & 0o077 != 0;
        out.push((
            leak,
            format!("{} has mode {mode:04o}, expected {:04o}", p.path, p.mode),
            format!("chmod {:04o} {}", p.mode, p.path),
        ));
    }
    let want_uid = match p.owner {
        Owner::Root => Some(0),
        Owner::IstioProxy => proxy.map(|(u, _)| u),
    };
    match want_uid {
        Some(uid) if m.uid != uid => {
            // The agent runs as istio-proxy and must read its 0600 token.
            let fatal = p.secret && p.owner == Owner::IstioProxy;
            out.push((
                fatal,
                format!("{} is owned by uid {}, expected {}", p.path, m.uid, layout::PROXY_USER),
                format!("chown {}:{} {}", layout::PROXY_USER, layout::PROXY_USER, p.path),
            ));
        }
        None if live => out.push((
            true,
            format!("user {} does not exist", layout::PROXY_USER),
            "install the istio-sidecar package (it creates the user), then run istio-vm install again".into(),
        )),
        _ => {}
    }
    out.sort_by_key(|(fatal, _, _)| !*fatal);
    Ok(out)
}

/// All `files.*` checks, in a fixed order.
pub fn checks(root: &Path, live: bool, inputs: &Inputs, now: i64) -> Vec<Check> {
    let proxy = proxy_ids(root);
    let workload = workload_cert(root, inputs, now);
    let mut out = Vec::new();
    for p in layout::PLACEMENTS {
        let id = &check_id(p);
        let problems = match owner_mode(root, p, proxy, live) {
            Ok(v) => v,
            Err(e) => {
                let hint = match p.path {
                    layout::TOKEN => format!(
                        "/var/run is a tmpfs and a reboot empties it; run `istio-vm install` again \
                         (it restores the token from {}) or place a fresh token",
                        layout::TOKEN_PERSISTENT
                    ),
                    _ => "run `istio-vm install --bundle DIR` to place it".to_string(),
                };
                out.push(fail(id, e, hint));
                continue;
            }
        };
        let content = match p.path {
            layout::ROOT_CERT => root_cert(inputs, now),
            layout::TOKEN => token(inputs, &workload, now),
            layout::CLUSTER_ENV => cluster_env(inputs),
            layout::MESH_CONFIG => mesh_config(root),
            layout::TOKEN_PERSISTENT => persistent_token(root, inputs),
            _ => Ok(("present".to_string(), None)),
        };
        let c = match (problems.first(), content) {
            (_, Err((detail, hint))) => fail(id, detail, hint),
            (Some((true, msg, fix)), _) => {
                fail(id, msg.clone(), format!("{fix}: {}", why_owner(p)))
            }
            (Some((false, msg, fix)), Ok((detail, _))) => warn(
                id,
                format!("{detail}; {msg}"),
                format!("{fix} (DESIGN.md layout)"),
            ),
            (None, Ok((detail, Some(w)))) => warn(id, detail, w),
            (None, Ok((detail, None))) => pass(id, detail),
        };
        out.push(c);
    }
    out.push(workload.check);
    out.push(dirs(root, proxy, live));
    out.push(hosts(inputs));
    out.push(sidecar(inputs));
    out
}

/// `files.sidecar`: which istio-sidecar is installed, so which Istio rules
/// the addresses below follow.
fn sidecar(inputs: &Inputs) -> Check {
    let id = "files.sidecar";
    let targets = {
        let d = inputs
            .discovery
            .as_ref()
            .map(|t| format!("discovery {} ({})", t.addr(), t.source));
        let c = inputs
            .ca_target()
            .map(|t| format!("CA {} ({})", t.addr(), t.source));
        let mut v: Vec<String> = d.into_iter().chain(c).collect();
        v.extend(inputs.notes.iter().cloned());
        v.join("; ")
    };
    match &inputs.sidecar {
        Some(s) => pass(
            id,
            format!(
                "{}: verify follows Istio {}.{}'s istio-start.sh and pilot-agent: {targets}",
                s.source, s.version.major, s.version.minor
            ),
        ),
        None => skip(
            id,
            format!(
                "no istio-sidecar in the package database and no {}: verify uses current Istio (1.12 and later) semantics: {targets}",
                inputs::START_SCRIPT
            ),
            "install the istio-sidecar package of istiod's Istio release (its .deb or .rpm); verify then follows that version",
        ),
    }
}

fn why_owner(p: &Placement) -> &'static str {
    if p.secret {
        "the agent runs as istio-proxy and must be the only one able to read the token"
    } else {
        "the agent runs as istio-proxy"
    }
}

type Content = Result<(String, Option<String>), (String, String)>;

fn root_cert(inputs: &Inputs, now: i64) -> Content {
    let pem = inputs.root_cert_pem.as_deref().unwrap_or_default();
    let certs = crate::bundle::root_cert::parse(pem).map_err(|e| {
        (
            format!("{}: {e}", layout::ROOT_CERT),
            "place the bundle's root-cert.pem (the istio-ca-root-cert configmap's root-cert.pem)"
                .into(),
        )
    })?;
    for c in &certs {
        if now > c.not_after {
            return Err((
                format!("root certificate {} expired at {}", c.subject, fmt_time(c.not_after)),
                "the mesh root was rotated or the bundle is stale: regenerate it with istioctl x workload entry configure".into(),
            ));
        }
        if now < c.not_before {
            return Err((
                format!(
                    "root certificate {} is valid only from {}",
                    c.subject,
                    fmt_time(c.not_before)
                ),
                "this VM's clock is behind: fix time sync (chrony/systemd-timesyncd)".into(),
            ));
        }
        if !c.is_ca {
            return Err((
                format!("{} is not a CA certificate", c.subject),
                "root-cert.pem must hold the mesh root CA, not a workload or server certificate"
                    .into(),
            ));
        }
    }
    let first = certs.iter().map(|c| c.not_after).min().unwrap_or(i64::MAX);
    let detail = format!(
        "{} certificate(s), {}, valid until {}",
        certs.len(),
        certs[0].subject,
        fmt_time(first)
    );
    let soon = (first - now < CERT_SOON_SECS).then(|| {
        "the mesh root expires in under 30 days: plan the root rotation and a new bundle"
            .to_string()
    });
    Ok((detail, soon))
}

/// What the workload certificate in /etc/certs says about renewal.
pub struct Workload {
    /// Valid now, with its expiry.
    pub valid_until: Option<i64>,
    pub check: Check,
}

fn workload_cert(root: &Path, inputs: &Inputs, now: i64) -> Workload {
    let id = "files.workload_cert";
    let Ok(pem) = inputs::read(root, WORKLOAD_CERT) else {
        return Workload {
            valid_until: None,
            check: skip(
                id,
                format!(
                    "no {WORKLOAD_CERT} yet: the agent writes it after its first certificate; until then it authenticates with the token"
                ),
                "nothing to fix while the token is valid: the agent writes this after its first CA call",
            ),
        };
    };
    let certs = match parse_pem_certs(&pem) {
        Ok(c) => c,
        Err(e) => {
            return Workload {
                valid_until: None,
                check: warn(
                    id,
                    format!("{WORKLOAD_CERT}: {e}"),
                    "the agent logs `cannot parse the cert chain, using token instead`; delete the file and let it fetch a new one with the token",
                ),
            };
        }
    };
    let leaf = &certs[0].0;
    let want = inputs.identity().map(|i| i.spiffe());
    let version = inputs.sidecar.as_ref().map(|s| s.version);
    if now > leaf.not_after && !super::version::expired_cert(version).ca_uses_token {
        // citadel/client.go@1.10.0 presents it anyway (see ca.token).
        return Workload {
            valid_until: None,
            check: fail(
                id,
                format!(
                    "workload certificate expired at {}; istio-sidecar {} presents it anyway and istiod refuses the handshake",
                    fmt_time(leaf.not_after),
                    version.map(|v| v.to_string()).unwrap_or_default()
                ),
                format!(
                    "this VM is stuck until the files are removed: delete {WORKLOAD_CERT} and {WORKLOAD_KEY}, then `systemctl restart istio`"
                ),
            ),
        };
    }
    if now > leaf.not_after {
        // The CA falls back to the token from 1.11 (citadel/client.go@1.11.0);
        // XDS only from 1.16 (pkg/istio-agent/xds_proxy.go@1.16.0
        // getTLSDialOption): @1.15.0 loads PROV_CERT's files whatever their
        // dates, so XDS fails until the renewed certificate is written there.
        let xds = if super::version::expired_cert(version).xds_uses_token {
            "the agent falls back to the token for the CA and XDS (`cert expired, using token instead`)"
        } else {
            "the agent falls back to the token for the CA (`cert expired, using token instead`), but until it has written the \
             renewed certificate to /etc/certs its XDS connection presents the expired one and istiod refuses it (XDS falls back \
             to the token only from Istio 1.16)"
        };
        return Workload {
            valid_until: None,
            check: warn(
                id,
                format!(
                    "workload certificate expired at {}",
                    fmt_time(leaf.not_after)
                ),
                format!("{xds}; if the token has expired too, a new token is needed"),
            ),
        };
    }
    if let Some(w) = &want
        && !leaf.uris.iter().any(|u| u == w)
    {
        return Workload {
            valid_until: Some(leaf.not_after),
            check: warn(
                id,
                format!(
                    "workload certificate is for {} but cluster.env declares {w}",
                    leaf.uris.join(", ")
                ),
                "istiod refuses XDS for a mismatched identity (PermissionDenied); remove /etc/certs/cert-chain.pem and key.pem after fixing cluster.env or the token",
            ),
        };
    }
    Workload {
        valid_until: Some(leaf.not_after),
        check: pass(
            id,
            format!(
                "{} valid until {}",
                leaf.uris.join(", "),
                fmt_time(leaf.not_after)
            ),
        ),
    }
}

fn token(inputs: &Inputs, workload: &Workload, now: i64) -> Content {
    let raw = inputs.token.as_deref().unwrap_or_default();
    let claims = decode_claims(raw).map_err(|e| {
        (
            format!("{}: {e}", layout::TOKEN),
            "place the bundle's istio-token exactly as istioctl wrote it".into(),
        )
    })?;
    let renew = |exp: i64| {
        match workload.valid_until {
        Some(until) => Ok((
            format!("token expired at {}", fmt_time(exp)),
            Some(format!(
                "the token is only needed for the first certificate: the agent renews with its workload certificate, valid until {}; if the VM stays off past then it needs a new token",
                fmt_time(until)
            )),
        )),
        None => Err((
            format!("token expired at {} and there is no valid workload certificate in /etc/certs", fmt_time(exp)),
            "this VM cannot authenticate to istiod: create a new token (istioctl x workload entry configure, or kubectl create token <sa> --audience istio-ca) and run istio-vm install with it".to_string(),
        )),
    }
    };
    if let Some(nbf) = claims.nbf
        && now + 60 < nbf
    {
        return Err((
            format!("token is valid only from {}", fmt_time(nbf)),
            "this VM's clock is behind: fix time sync".into(),
        ));
    }
    if !claims.aud.iter().any(|a| a == "istio-ca") {
        return Err((
            format!("token audience is {:?}, not istio-ca", claims.aud),
            "istiod asks the API server to review the token for audience istio-ca (TOKEN_AUDIENCES): create it with --audience istio-ca (istioctl does)".into(),
        ));
    }
    if let (Some(sub), Some(id)) = (&claims.sub, inputs.identity()) {
        let want = format!(
            "system:serviceaccount:{}:{}",
            id.namespace, id.service_account
        );
        if *sub != want {
            return Err((
                format!("token is for {sub} but cluster.env declares {want}"),
                "istiod signs the identity of the token, then refuses XDS for the one cluster.env declares (PermissionDenied, istio#35249): use a token of the right service account or fix POD_NAMESPACE/SERVICE_ACCOUNT".into(),
            ));
        }
    }
    match claims.exp {
        Some(exp) if exp <= now => renew(exp),
        Some(exp) => {
            let detail = format!(
                "{} until {}",
                claims.sub.as_deref().unwrap_or("token"),
                fmt_time(exp)
            );
            let soon = (exp - now < TOKEN_SOON_SECS && workload.valid_until.is_none()).then(|| {
                "the token expires in under 10 minutes and there is no workload certificate yet: start the agent now or get a longer token (--tokenDuration)".to_string()
            });
            Ok((detail, soon))
        }
        None => Ok((
            "token without expiry (legacy first-party token)".into(),
            None,
        )),
    }
}

/// The copy tmpfiles.d puts back into /var/run at boot must be the token in use.
fn persistent_token(root: &Path, inputs: &Inputs) -> Content {
    let copy = inputs::read(root, layout::TOKEN_PERSISTENT).map_err(|e| (e, String::new()))?;
    match &inputs.token {
        Some(t) if *t != copy => Ok((
            format!("differs from {}", layout::TOKEN),
            Some(format!(
                "after a reboot the copy in {} replaces the token in use: run `istio-vm install` with the current token so both match",
                layout::TOKEN_PERSISTENT
            )),
        )),
        Some(_) => Ok((
            format!("same as {}: survives a reboot", layout::TOKEN),
            None,
        )),
        None => Ok((
            format!(
                "present; {} is missing and is restored from it at boot",
                layout::TOKEN
            ),
            None,
        )),
    }
}

fn cluster_env(inputs: &Inputs) -> Content {
    if let Some(e) = &inputs.env_error {
        return Err((
            e.clone(),
            "place the bundle's cluster.env unchanged (bash sources it)".into(),
        ));
    }
    match inputs.identity() {
        Some(id) => Ok((
            format!("{} keys, identity {}", inputs.env.len(), id.spiffe()),
            None,
        )),
        None => Err((
            "cluster.env names no POD_NAMESPACE/SERVICE_ACCOUNT".into(),
            "regenerate cluster.env with istioctl x workload entry configure".into(),
        )),
    }
}

fn mesh_config(root: &Path) -> Content {
    let b = inputs::read(root, layout::MESH_CONFIG).map_err(|e| (e, String::new()))?;
    if serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(&b).is_err() {
        return Err((
            format!("{} is not YAML", layout::MESH_CONFIG),
            "place the bundle's mesh.yaml unchanged".into(),
        ));
    }
    Ok(match inputs::discovery_address(&b) {
        Some(a) => (format!("discoveryAddress {a}"), None),
        None => (
            format!(
                "no discoveryAddress: the agent uses {}",
                inputs::DEFAULT_DISCOVERY
            ),
            None,
        ),
    })
}

fn dirs(root: &Path, proxy: Option<(u32, u32)>, live: bool) -> Check {
    let id = "files.dirs";
    let Some((uid, _)) = proxy else {
        return if live {
            fail(
                id,
                format!("user {} does not exist", layout::PROXY_USER),
                "install the istio-sidecar package (it creates the user), then run istio-vm install again",
            )
        } else {
            skip(
                id,
                format!(
                    "{} is not in the root's /etc/passwd yet: sysusers.d and tmpfiles.d create it and fix ownership at first boot",
                    layout::PROXY_USER
                ),
                "nothing to fix in an image tree: the first boot creates the user",
            )
        };
    };
    let mut bad = Vec::new();
    for d in layout::PROXY_DIRS {
        match Sysroot::new(root).and_then(|r| r.stat(d)) {
            Ok(Some(m)) if m.kind == Kind::Dir && m.uid == uid => {}
            Ok(Some(m)) if m.kind == Kind::Dir => bad.push(format!("{d} (owner uid {})", m.uid)),
            Ok(Some(_)) => bad.push(format!("{d} (not a directory)")),
            _ => bad.push(format!("{d} (missing)")),
        }
    }
    if bad.is_empty() {
        pass(
            id,
            format!(
                "{} directories owned by {}",
                layout::PROXY_DIRS.len(),
                layout::PROXY_USER
            ),
        )
    } else {
        fail(
            id,
            format!("not usable by {}: {}", layout::PROXY_USER, bad.join(", ")),
            "the agent writes certificates to /etc/certs and its SDS socket under /var/run/secrets (`bind: permission denied`, istio#42603): run istio-vm install again or chown -R istio-proxy these directories",
        )
    }
}

fn hosts(inputs: &Inputs) -> Check {
    let id = "files.hosts";
    let Some(t) = &inputs.discovery else {
        return skip(id, "no discovery address", "see files.mesh_config");
    };
    if t.host.parse::<std::net::IpAddr>().is_ok() {
        return pass(
            id,
            format!(
                "discovery address {} is an IP: no hosts entry needed",
                t.host
            ),
        );
    }
    let (addrs, in_block) = inputs.hosts_addrs(&t.host);
    match (addrs.is_empty(), in_block) {
        (false, true) => pass(
            id,
            format!(
                "istio-vm block maps {} to {}",
                t.host,
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (false, false) => pass(
            id,
            format!("/etc/hosts maps {} (outside the istio-vm block)", t.host),
        ),
        (true, _) => warn(
            id,
            format!("/etc/hosts has no entry for {}", t.host),
            "without it the name must resolve through DNS; istioctl writes an empty hosts file when the east-west gateway has only a hostname: regenerate with --ingressIP, or set ISTIOD_SAN and an address that resolves",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> Vec<u8> {
        use base64::Engine;
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", e("{\"alg\":\"RS256\"}"), e(payload), e("sig")).into_bytes()
    }

    #[test]
    fn claims_decode() {
        let c = decode_claims(&jwt(
            r#"{"aud":["istio-ca"],"exp":10,"sub":"system:serviceaccount:a:b"}"#,
        ))
        .unwrap();
        assert_eq!(c.aud, vec!["istio-ca"]);
        assert_eq!(c.exp, Some(10));
        let c = decode_claims(&jwt(r#"{"aud":"x"}"#)).unwrap();
        assert_eq!(c.aud, vec!["x"]);
        assert!(decode_claims(b"nope").is_err());
        assert!(decode_claims(b"a.!!!.c").is_err());
    }

    fn inputs_with(token: &[u8]) -> Inputs {
        let mut i = Inputs::default();
        i.env.insert("ISTIO_NAMESPACE".into(), "vm-apps".into());
        i.env.insert("SERVICE_ACCOUNT".into(), "ratings-sa".into());
        i.token = Some(token.to_vec());
        i
    }

    fn none() -> Workload {
        Workload {
            valid_until: None,
            check: skip("files.workload_cert", "", ""),
        }
    }

    #[test]
    fn expired_token_depends_on_the_workload_cert() {
        let i = inputs_with(&jwt(
            r#"{"aud":["istio-ca"],"exp":100,"sub":"system:serviceaccount:vm-apps:ratings-sa"}"#,
        ));
        let (detail, hint) = token(&i, &none(), 200).unwrap_err();
        assert!(detail.contains("expired"), "{detail}");
        assert!(hint.contains("new token"), "{hint}");
        let w = Workload {
            valid_until: Some(5000),
            check: skip("x", "", ""),
        };
        let (detail, hint) = token(&i, &w, 200).unwrap();
        assert!(detail.contains("expired"));
        assert!(
            hint.unwrap()
                .contains("renews with its workload certificate")
        );
    }

    #[test]
    fn audience_and_subject() {
        let i = inputs_with(&jwt(
            r#"{"aud":["api"],"exp":1000,"sub":"system:serviceaccount:vm-apps:ratings-sa"}"#,
        ));
        assert!(token(&i, &none(), 10).unwrap_err().0.contains("audience"));
        let i = inputs_with(&jwt(
            r#"{"aud":["istio-ca"],"exp":1000,"sub":"system:serviceaccount:other:x"}"#,
        ));
        assert!(token(&i, &none(), 10).unwrap_err().1.contains("35249"));
    }
}
