//! `dns.discovery`, `tcp.discovery`, `tls.handshake`, and the TLS plumbing the
//! CA and XDS checks share: root-cert.pem is the only trust anchor and the
//! server name is what pilot-agent would verify (pilot/pkg/grpc/tls.go).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::inputs::{Inputs, Target};
use super::{fail, pass, warn};
use crate::report::Check;

/// Istio's auto-allocated service addresses (`ISTIO_META_DNS_AUTO_ALLOCATE`):
/// 240.240.0.0/16 and 2001:2::/48 (pkg/config/constants).
pub fn mesh_allocated(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 240 && v4.octets()[1] == 240,
        IpAddr::V6(v6) => v6.segments()[..3] == [0x2001, 0x2, 0],
    }
}

/// Whose sockets verify's traffic toward istiod is: Istio's capture rules
/// let the istio-proxy uid and gid through by owner match
/// (tools/istio-iptables/pkg/capture/run.go@1.10.0 and at master:
/// `-m owner --uid-owner`/`--gid-owner` RETURN in ISTIO_OUTPUT), so the
/// agent's own connections to istiod are not redirected to Envoy. Without
/// this, verify (root) would be redirected to 15001 and blame the network.
///
/// The kernel matches the *socket's* file credentials, taken when the socket
/// is created (net/netfilter/xt_owner.c and nft `meta skuid` read
/// `sk_socket->file->f_cred->fsuid`), and setfsuid/setfsgid change them for
/// the calling thread only. So a socket made while this thread's fsuid/fsgid
/// are istio-proxy's counts as istio-proxy's, and the thread goes straight
/// back to root: files stay readable, nothing else changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner(pub Option<(u32, u32)>);

impl Owner {
    /// Runs `f`, which creates sockets and must not block on anything else,
    /// with this thread's fsuid/fsgid set to the owner's.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        use nix::unistd::{Gid, Uid, setfsgid, setfsuid};
        let Some((uid, gid)) = self.0 else {
            return f();
        };
        // gid first: once fsuid is not 0 the fs capabilities are gone, but
        // CAP_SETGID/CAP_SETUID (needed for both calls) stay.
        let old_gid = setfsgid(Gid::from_raw(gid));
        let old_uid = setfsuid(Uid::from_raw(uid));
        let r = f();
        setfsuid(old_uid);
        setfsgid(old_gid);
        r
    }

    /// For details: who the connections are made as.
    pub fn describe(self) -> String {
        match self.0 {
            Some((u, g)) => {
                format!("as istio-proxy (uid {u}, gid {g}), exempt from capture like the agent")
            }
            None => {
                "as root: no istio-proxy user, so capture rules (if any) redirect these connections"
                    .into()
            }
        }
    }
}

/// getaddrinfo (so /etc/hosts counts), bounded by `timeout`; its DNS
/// queries are made as `owner`, like the agent's (with DNS capture the rules
/// send everyone else's port 53 to the agent's DNS proxy).
pub async fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
    owner: Owner,
) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let h = host.to_string();
    let lookup = tokio::task::spawn_blocking(move || {
        owner.run(|| (h.as_str(), port).to_socket_addrs().map(Vec::from_iter))
    });
    match tokio::time::timeout(timeout, lookup).await {
        Err(_) => Err(format!("no answer within {}", ms(timeout))),
        Ok(Err(e)) => Err(format!("lookup task failed: {e}")),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Ok(Ok(all))) => {
            let mut v: Vec<SocketAddr> = Vec::new();
            for a in all {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            if v.is_empty() {
                Err("no address".into())
            } else {
                Ok(v)
            }
        }
    }
}

pub fn ms(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn join_ips(v: &[SocketAddr]) -> String {
    v.iter()
        .map(|a| a.ip().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolution of the discovery (and CA) host.
pub struct Resolved {
    pub discovery: Option<Vec<SocketAddr>>,
    pub ca: Option<Vec<SocketAddr>>,
}

/// `live` is false under `--root`: names then resolve through this machine's
/// resolver, not the image's /etc/hosts.
pub async fn dns(inputs: &Inputs, live: bool, timeout: Duration) -> (Check, Resolved) {
    let id = "dns.discovery";
    let none = Resolved {
        discovery: None,
        ca: None,
    };
    let Some(d) = &inputs.discovery else {
        let e = inputs.target_error.clone().unwrap_or_default();
        return (
            fail(
                id,
                e,
                "fix discoveryAddress in the mesh config (host:port) or CA_ADDR in cluster.env",
            ),
            none,
        );
    };
    let targets: Vec<&Target> = std::iter::once(d).chain(inputs.ca.as_ref()).collect();
    let owner = inputs.owner;
    let results = join_ordered(targets.iter().map(|t| {
        let (host, port) = (t.host.clone(), t.port);
        async move { resolve(&host, port, timeout, owner).await }
    }))
    .await;
    let mut details = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut out: Vec<Option<Vec<SocketAddr>>> = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        let (expected, _) = inputs.hosts_addrs(&t.host);
        match r {
            Err(e) => {
                let hint = if t.source == super::version::CA_DEFAULT_SOURCE {
                    // tools/packaging/common/istio-start.sh@1.12.0: CA_ADDR
                    // never follows the mesh file's discoveryAddress.
                    format!(
                        "the agent asks its certificates from {} (istio-start.sh's CA_ADDR default, whatever the mesh config's \
                         discoveryAddress says): add it to the istio-vm hosts block, or set CA_ADDR in cluster.env to the discovery address",
                        t.addr()
                    )
                } else if expected.is_empty() && t.host.parse::<IpAddr>().is_err() {
                    format!(
                        "{} does not resolve and /etc/hosts has no entry for it: run `istio-vm install` with the bundle \
                         (it adds the bundle's hosts line); if the bundle's hosts file is empty the east-west gateway \
                         has only a hostname: regenerate with --ingressIP <gateway IP> (istio#31624)",
                        t.host
                    )
                } else if !live {
                    format!(
                        "the root's /etc/hosts maps {} but verify --root resolves through this machine's resolver: \
                         the block takes effect when the image boots; run verify on the VM itself",
                        t.host
                    )
                } else {
                    format!(
                        "{} does not resolve through this VM's resolver although /etc/hosts names it: \
                         check the `hosts:` line of /etc/nsswitch.conf (it must include `files`)",
                        t.host
                    )
                };
                return (
                    fail(
                        id,
                        format!("{} ({}) does not resolve: {e}", t.host, t.source),
                        hint,
                    ),
                    none,
                );
            }
            Ok(addrs) => {
                if !expected.is_empty() && !addrs.iter().any(|a| expected.contains(&a.ip())) {
                    let exp = expected
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    return (
                        fail(
                            id,
                            format!(
                                "{} resolves to {} but the bundle's hosts line says {exp}",
                                t.host,
                                join_ips(&addrs)
                            ),
                            "another /etc/hosts line or DNS wins over the istio-vm block: remove the stale entry",
                        ),
                        none,
                    );
                }
                if !expected.is_empty() && addrs.iter().any(|a| !expected.contains(&a.ip())) {
                    let extra: Vec<SocketAddr> = addrs
                        .iter()
                        .filter(|a| !expected.contains(&a.ip()))
                        .copied()
                        .collect();
                    warnings.push(format!(
                        "{} also resolves to {} besides the bundle's address",
                        t.host,
                        join_ips(&extra)
                    ));
                }
                let how = if t.host.parse::<IpAddr>().is_ok() {
                    "an IP address"
                } else if expected.is_empty() {
                    "through DNS (no /etc/hosts entry)"
                } else {
                    "as /etc/hosts says"
                };
                details.push(format!("{} -> {} ({how})", t.host, join_ips(&addrs)));
                out.push(Some(addrs));
            }
        }
    }
    let ca = if inputs.ca.is_some() {
        out.get(1).cloned().flatten()
    } else {
        None
    };
    let c = if warnings.is_empty() {
        pass(id, details.join("; "))
    } else {
        warn(
            id,
            format!("{}; {}", details.join("; "), warnings.join("; ")),
            "another /etc/hosts line or DNS also answers for this name and the agent may dial that address first: \
             remove the stale entry so only the istio-vm block names istiod",
        )
    };
    (
        c,
        Resolved {
            discovery: out.first().cloned().flatten(),
            ca,
        },
    )
}

/// Runs the futures concurrently on the runtime; results in input order.
pub async fn join_ordered<F>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, f) in fs.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
    }
    let mut out = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnError {
    Refused(SocketAddr),
    Timeout(SocketAddr),
    Other(SocketAddr, std::io::Error),
}

/// TCP to the first address that answers, with sockets owned by `owner`;
/// each try bounded by `timeout`.
pub async fn tcp_connect(
    addrs: &[SocketAddr],
    timeout: Duration,
    owner: Owner,
) -> Result<TcpStream, ConnError> {
    let mut last = None;
    for a in addrs {
        let sock = owner.run(|| {
            if a.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        });
        let sock = match sock {
            Ok(s) => s,
            Err(e) => {
                last = Some(ConnError::Other(*a, e));
                continue;
            }
        };
        // grpc-go (pilot-agent) sets TCP_NODELAY; without it delayed ACKs
        // add ~40 ms per round trip.
        let _ = sock.set_nodelay(true);
        match tokio::time::timeout(timeout, sock.connect(*a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Some(ConnError::Refused(*a))
            }
            Ok(Err(e)) => last = Some(ConnError::Other(*a, e)),
            Err(_) => last = Some(ConnError::Timeout(*a)),
        }
    }
    Err(last.unwrap_or_else(|| {
        ConnError::Other(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            std::io::Error::other("no address"),
        )
    }))
}

pub fn tcp_failure(id: &str, t: &Target, e: &ConnError, timeout: Duration) -> Check {
    match e {
        ConnError::Refused(a) => fail(
            id,
            format!("{a} refused the connection ({} port {})", t.host, t.port),
            format!(
                "nothing listens on {a}: the east-west gateway does not expose {} (apply samples/multicluster/expose-istiod.yaml), \
                 or the hosts address points at the wrong machine",
                t.port
            ),
        ),
        ConnError::Timeout(a) => fail(
            id,
            format!("no answer from {a} within {}", ms(timeout)),
            format!(
                "a firewall or security group drops traffic to port {} on the way to the gateway, or {} is not reachable from this VM",
                t.port,
                a.ip()
            ),
        ),
        ConnError::Other(a, e) => fail(
            id,
            format!("cannot connect to {a}: {e}"),
            "no route to the gateway from this VM: check its routes and the hosts address",
        ),
    }
}

pub async fn tcp(
    t: &Target,
    addrs: &[SocketAddr],
    timeout: Duration,
    owner: Owner,
) -> (Check, Option<SocketAddr>) {
    let id = "tcp.discovery";
    let start = std::time::Instant::now();
    match tcp_connect(addrs, timeout, owner).await {
        Ok(s) => {
            let peer = s.peer_addr().ok();
            (
                pass(
                    id,
                    format!(
                        "connected to {} in {} ms, {}",
                        peer.map(|p| p.to_string()).unwrap_or_else(|| t.addr()),
                        start.elapsed().as_millis(),
                        owner.describe()
                    ),
                ),
                peer,
            )
        }
        Err(e) => (tcp_failure(id, t, &e, timeout), None),
    }
}

/// Records the certificate the server presented, then lets webpki decide.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(end_entity.to_vec());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn root_store(root_pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (_, der) in super::files::parse_pem_certs(root_pem)? {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| format!("root-cert.pem: {e}"))?;
    }
    Ok(roots)
}

/// A TLS client with root-cert.pem as the only anchor, h2 ALPN, and
/// optionally a client certificate (mTLS for XDS).
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Tls {
    pub fn new(
        root_pem: &[u8],
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Tls, String> {
        let provider = provider();
        let roots = Arc::new(root_store(root_pem)?);
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("root-cert.pem: {e}"))?;
        let seen = Arc::new(Mutex::new(None));
        let verifier = Arc::new(Recording {
            inner,
            seen: seen.clone(),
        });
        let b = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match client {
            Some((chain, key)) => b
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("issued certificate: {e}"))?,
            None => b.with_no_client_auth(),
        };
        // gRPC servers (istiod is grpc-go) insist on ALPN h2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            seen,
        })
    }

    pub async fn handshake(
        &self,
        tcp: TcpStream,
        t: &Target,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, TlsFailure> {
        let name = ServerName::try_from(t.server_name.clone()).map_err(|_| {
            TlsFailure::Other(format!("`{}` is not a valid server name", t.server_name))
        })?;
        let connector = TlsConnector::from(self.config.clone());
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Err(_) => Err(TlsFailure::Timeout),
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(classify(&e, self.presented())),
        }
    }

    /// Subject, issuer and names of the certificate the server presented.
    pub fn presented(&self) -> Option<Presented> {
        let der = self.seen.lock().ok()?.clone()?;
        let (_, c) = X509Certificate::from_der(&der).ok()?;
        let info = super::files::cert_info(&c);
        Some(Presented {
            subject: info.subject,
            issuer: c.issuer().to_string(),
            names: info.dns,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Presented {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
}

impl Presented {
    pub fn describe(&self) -> String {
        let subject = if self.subject.is_empty() {
            "a certificate"
        } else {
            self.subject.as_str()
        };
        format!("{subject} issued by {}", self.issuer)
    }
}

#[derive(Debug)]
pub enum TlsFailure {
    UnknownAuthority(Option<Presented>),
    WrongName {
        presented: Vec<String>,
    },
    Expired(String),
    Timeout,
    /// The peer hung up or spoke something else than TLS.
    NotTls(String),
    Other(String),
}

fn classify(e: &std::io::Error, presented: Option<Presented>) -> TlsFailure {
    let Some(re) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                TlsFailure::NotTls(format!(
                    "the server closed the connection during the handshake ({e})"
                ))
            }
            _ => TlsFailure::Other(e.to_string()),
        };
    };
    match re {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsFailure::UnknownAuthority(presented)
            }
            CertificateError::NotValidForName => TlsFailure::WrongName {
                presented: presented.map(|p| p.names).unwrap_or_default(),
            },
            CertificateError::NotValidForNameContext { presented, .. } => TlsFailure::WrongName {
                presented: presented.clone(),
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsFailure::Expired(ce_text(ce))
            }
            other => TlsFailure::Other(format!("server certificate: {}", ce_text(other))),
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InappropriateMessage { .. } => {
            TlsFailure::NotTls(format!("the server does not speak TLS here ({re})"))
        }
        rustls::Error::NoApplicationProtocol => TlsFailure::Other(
            "the server does not offer HTTP/2 (ALPN h2), so it is not a gRPC server".into(),
        ),
        other => TlsFailure::Other(other.to_string()),
    }
}

fn ce_text(ce: &CertificateError) -> String {
    rustls::Error::InvalidCertificate(ce.clone()).to_string()
}

/// The check for a failed handshake; the unknown-authority and wrong-name
/// cases carry different hints because their fixes differ.
pub fn tls_failure(id: &str, t: &Target, f: &TlsFailure, timeout: Duration) -> Check {
    match f {
        TlsFailure::UnknownAuthority(p) => {
            let who = p
                .as_ref()
                .map(|p| format!(" (it presents {})", p.describe()))
                .unwrap_or_default();
            fail(
                id,
                format!(
                    "{}'s certificate is not signed by root-cert.pem{who}",
                    t.addr()
                ),
                "x509: certificate signed by unknown authority: root-cert.pem does not match the mesh CA \
                 (stale bundle, or istiod uses a plug-in/external CA such as istio-csr whose root is different), \
                 or something other than istiod answers on this address: regenerate the bundle from the cluster \
                 the VM should join",
            )
        }
        TlsFailure::WrongName { presented } => fail(
            id,
            format!(
                "{}'s certificate is not valid for {} (it names {})",
                t.addr(),
                t.server_name,
                if presented.is_empty() {
                    "nothing usable".to_string()
                } else {
                    presented.join(", ")
                }
            ),
            format!(
                "the agent verifies istiod as {}: use the name istiod's certificate carries \
                 (istiod.istio-system.svc, or istiod-<rev>.istio-system.svc) in discoveryAddress/CA_ADDR \
                 with the gateway IP in /etc/hosts, or set ISTIOD_SAN in cluster.env to one of the names above",
                t.server_name
            ),
        ),
        TlsFailure::Expired(e) => fail(
            id,
            format!("{}: {e}", t.addr()),
            "istiod's serving certificate has expired, or this VM's clock is wrong: check time sync first",
        ),
        TlsFailure::Timeout => fail(
            id,
            format!("no TLS handshake with {} within {}", t.addr(), ms(timeout)),
            "the port accepts connections but nothing answers TLS: a proxy or load balancer in the way holds the connection",
        ),
        TlsFailure::NotTls(e) => fail(
            id,
            format!("{}: {e}", t.addr()),
            format!(
                "the gateway routes port {} by SNI ({}) and has no route for it, or this is not istiod's TLS port: \
                 apply samples/multicluster/expose-istiod.yaml and use port 15012",
                t.port, t.server_name
            ),
        ),
        TlsFailure::Other(e) => fail(
            id,
            format!("{}: {e}", t.addr()),
            "see the error; check that this is istiod's port 15012",
        ),
    }
}

pub async fn tls(
    inputs: &Inputs,
    t: &Target,
    addr: SocketAddr,
    timeout: Duration,
) -> (Check, bool) {
    let id = "tls.handshake";
    let Some(pem) = &inputs.root_cert_pem else {
        return (
            fail(
                id,
                "no root-cert.pem to verify istiod with",
                "place the bundle (see files.root_cert)",
            ),
            false,
        );
    };
    let tls = match Tls::new(pem, None) {
        Ok(t) => t,
        Err(e) => return (fail(id, e, "see files.root_cert"), false),
    };
    let tcp = match tcp_connect(&[addr], timeout, inputs.owner).await {
        Ok(s) => s,
        Err(e) => return (tcp_failure(id, t, &e, timeout), false),
    };
    match tls.handshake(tcp, t, timeout).await {
        Ok(s) => {
            let (_, conn) = s.get_ref();
            let alpn = conn
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned());
            let who = tls.presented().map(|p| p.describe()).unwrap_or_default();
            let c = match alpn.as_deref() {
                Some("h2") | None => pass(
                    id,
                    format!(
                        "{} presents a certificate for {} chained to root-cert.pem ({who})",
                        t.addr(),
                        t.server_name
                    ),
                ),
                Some(other) => warn(
                    id,
                    format!("{} negotiated ALPN {other}, not h2", t.addr()),
                    "a TLS-terminating proxy sits in front of istiod; the east-west gateway must pass 15012 through (TLS PASSTHROUGH)",
                ),
            };
            (c, true)
        }
        Err(f) => (tls_failure(id, t, &f, timeout), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_allocated_ranges() {
        assert!(mesh_allocated(&"240.240.0.1".parse().unwrap()));
        assert!(!mesh_allocated(&"240.241.0.1".parse().unwrap()));
        assert!(mesh_allocated(&"2001:2::5".parse().unwrap()));
        assert!(!mesh_allocated(&"10.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn join_keeps_order() {
        let v = join_ordered([1u64, 0, 2].map(|n| async move {
            tokio::time::sleep(Duration::from_millis(n * 5)).await;
            n
        }))
        .await;
        assert_eq!(v, vec![1, 0, 2]);
    }

    #[test]
    fn sockets_made_as_the_owner_go_back_to_root() {
        // Needs root (as the suite does): setfsuid succeeds, and this
        // thread's fsuid is 0 again afterwards.
        let before = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(u32::MAX));
        let seen = Owner(Some((4242, 4243)))
            .run(|| nix::unistd::setfsuid(nix::unistd::Uid::from_raw(u32::MAX)));
        assert_eq!(seen.as_raw(), 4242, "fsuid inside");
        let after = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(u32::MAX));
        assert_eq!(after, before, "fsuid restored");
    }
}
