//! A fake istiod for tests (never shipped): a TLS gRPC server on loopback
//! serving Istio's CA service and Envoy's ADS under their real names, with a
//! certificate chained to a test root (rcgen), and switches to misbehave.
//!
//! What it checks mirrors istiod (reference §5), reduced to what a test can
//! know without a Kubernetes API server:
//! - CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`): the
//!   `clusterid` header picks the cluster whose API server reviews the token
//!   (empty: the local cluster; unknown: refused), as
//!   security/pkg/server/ca/authenticate/kubeauth/kube_jwt.go does. The
//!   review is stood in for by the claims (decoded, not verified: no API
//!   server): `iss` must be that cluster's issuer, audience `istio-ca`, `exp`
//!   in the future, `nbf` and `iat` not in the future, subject
//!   `system:serviceaccount:<ns>:<sa>`. Every failure is Unauthenticated
//!   `request authenticate failure`, istiod's one answer
//!   (security/pkg/server/ca/server.go). The CSR is signed for the *caller's*
//!   identity `spiffe://<td>/ns/<ns>/sa/<sa>`, whatever the CSR asks for.
//! - ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//!   StreamAggregatedResources`): the client certificate's SPIFFE identity
//!   must match the node's NAMESPACE/SERVICE_ACCOUNT metadata, else
//!   PermissionDenied with istiod's wording (pilot/pkg/xds/auth.go); the
//!   first request is answered with a CDS response.
//!
//! Self-contained (no `crate::` paths) so a test binary or an example can
//! include it with `#[path]`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine;
use prost::Message;
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

pub const CA_PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
pub const ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// The issuer of a default cluster's service account tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The SANs istiod's serving certificate carries by default
/// (pilot/pkg/bootstrap/server.go `getDNSNames`).
pub const ISTIOD_SANS: &[&str] = &[
    "istiod.istio-system.svc",
    "istiod-remote.istio-system.svc",
    "istio-pilot.istio-system.svc",
];

// ---- wire messages (same field numbers as src/verify/proto.rs; kept
// separate so the fake does not trust the code under test)

#[derive(Clone, PartialEq, prost::Message)]
pub struct CertRequest {
    #[prost(string, tag = "1")]
    pub csr: String,
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CertResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbStruct {
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<String, PbValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<PbValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbValue {
    #[prost(oneof = "PbKind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<PbKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PbKind {
    #[prost(int32, tag = "1")]
    Null(i32),
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    Str(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(PbStruct),
    #[prost(message, tag = "6")]
    List(PbList),
}

fn to_json(v: &PbValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(PbKind::Null(_)) => J::Null,
        Some(PbKind::Number(n)) => serde_json::json!(n),
        Some(PbKind::Str(s)) => J::String(s.clone()),
        Some(PbKind::Bool(b)) => J::Bool(*b),
        Some(PbKind::Struct(s)) => struct_json(s),
        Some(PbKind::List(l)) => J::Array(l.values.iter().map(to_json).collect()),
    }
}

fn struct_json(s: &PbStruct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbNode {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub cluster: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<PbStruct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscReq {
    #[prost(message, optional, tag = "2")]
    pub node: Option<PbNode>,
    #[prost(string, tag = "4")]
    pub type_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscResp {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<PbAny>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

// ---- certificates

/// A CA made with rcgen: its PEM and what signs with it.
pub struct TestCa {
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(org: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(3650);
        let cert = p.self_signed(&key).expect("CA cert");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn leaf_params(sans: Vec<rcgen::SanType>, hours: i64) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = sans;
        p.is_ca = rcgen::IsCa::NoCa;
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::hours(hours);
        p
    }

    /// A serving certificate for `names` (DNS names or IPs): (cert PEM, key PEM).
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*n).try_into().expect("DNS name")),
            })
            .collect();
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = Self::leaf_params(sans, 24)
            .signed_by(&key, &self.issuer)
            .expect("server cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A workload certificate for `spiffe` with `key`'s public key.
    pub fn workload_cert(
        &self,
        spiffe: &str,
        key: &impl rcgen::PublicKeyData,
        hours: i64,
    ) -> String {
        let san = rcgen::SanType::URI(spiffe.try_into().expect("URI"));
        Self::leaf_params(vec![san], hours)
            .signed_by(key, &self.issuer)
            .expect("workload cert")
            .pem()
    }

    fn sign_csr(&self, csr_pem: &str, spiffe: &str, secs: i64) -> Result<String, String> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("bad CSR: {e}"))?;
        let hours = (secs.max(3600) + 3599) / 3600;
        let san = rcgen::SanType::URI(spiffe.try_into().map_err(|e| format!("{e}"))?);
        Self::leaf_params(vec![san], hours)
            .signed_by(&csr.public_key, &self.issuer)
            .map(|c| c.pem())
            .map_err(|e| format!("signing: {e}"))
    }
}

// ---- behaviour

/// How the fake behaves; `Default` is a healthy istiod.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Names in the serving certificate.
    pub sans: Vec<String>,
    /// Serve a certificate from an unrelated CA (root-cert.pem will not match).
    pub other_ca: bool,
    /// No CA service at all (gRPC Unimplemented, like an external CA).
    pub ca_unimplemented: bool,
    /// Answer every CA call with Unauthenticated.
    pub reject_token: bool,
    /// End the ADS stream right after the first request, without a response.
    pub ads_close: bool,
    pub trust_domain: String,
    /// istiod's own cluster and its API server's token issuer.
    pub cluster_id: String,
    pub issuer: String,
    /// Remote clusters istiod has a kubeconfig for: (cluster ID, issuer).
    pub remote_clusters: Vec<(String, String)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            sans: ISTIOD_SANS.iter().map(|s| s.to_string()).collect(),
            other_ca: false,
            ca_unimplemented: false,
            reject_token: false,
            ads_close: false,
            trust_domain: "cluster.local".into(),
            cluster_id: "cluster1".into(),
            issuer: ISSUER.into(),
            remote_clusters: Vec::new(),
        }
    }
}

/// What the fake saw, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Subjects of the tokens of CA calls (never the tokens themselves).
    pub ca_subjects: Vec<String>,
    /// Node id and metadata of each ADS stream's first request.
    pub nodes: Vec<(String, serde_json::Value)>,
    /// Client identities presented on ADS streams.
    pub xds_identities: Vec<String>,
    /// The `clusterid` header of each token-authenticated CA call ("" if none).
    pub ca_cluster_ids: Vec<String>,
}

struct State {
    ca: Arc<TestCa>,
    b: Behaviour,
    seen: Mutex<Seen>,
}

pub struct FakeIstiod {
    pub addr: SocketAddr,
    pub ca: Arc<TestCa>,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeIstiod {
    /// Serves on `bind` (port 0 for an ephemeral one) with a CA of its own.
    pub async fn start(bind: SocketAddr, b: Behaviour) -> FakeIstiod {
        Self::start_with_ca(bind, b, Arc::new(TestCa::new("cluster.local"))).await
    }

    pub async fn start_with_ca(bind: SocketAddr, b: Behaviour, ca: Arc<TestCa>) -> FakeIstiod {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind fake istiod");
        Self::serve(listener, b, ca)
    }

    /// Serves on a socket that is already listening (a test that let
    /// something else answer first hands it over: no window where the port
    /// is closed or taken). Call from within a runtime.
    pub fn start_on(listener: std::net::TcpListener, b: Behaviour, ca: Arc<TestCa>) -> FakeIstiod {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        Self::serve(listener, b, ca)
    }

    fn serve(listener: tokio::net::TcpListener, b: Behaviour, ca: Arc<TestCa>) -> FakeIstiod {
        let names: Vec<&str> = b.sans.iter().map(String::as_str).collect();
        let (cert, key) = if b.other_ca {
            TestCa::new("some other CA").server_cert(&names)
        } else {
            ca.server_cert(&names)
        };
        // istiod verifies client certificates if given (VerifyClientCertIfGiven).
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca.cert_pem.clone()))
            .client_auth_optional(true);
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            ca: ca.clone(),
            b,
            seen: Mutex::new(Seen::default()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = Svc(state.clone());
        // grpc-go (istiod) sets TCP_NODELAY on every connection; without it
        // delayed ACKs add ~40 ms per round trip.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |s| {
                if let Ok(s) = &s {
                    let _ = s.set_nodelay(true);
                }
                s
            },
        );
        let server = Server::builder().tls_config(tls).expect("tls config");
        tokio::spawn(async move {
            let _ = server
                .serve_with_incoming_shutdown(svc, incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        FakeIstiod {
            addr,
            ca,
            state,
            shutdown: Some(tx),
        }
    }

    pub fn root_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    pub fn seen(&self) -> Seen {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeIstiod {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// ---- the gRPC service (hand-written: no protoc, no router)

#[derive(Clone)]
struct Svc(Arc<State>);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Svc {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let st = self.0.clone();
        let path = req.uri().path().to_string();
        Box::pin(async move {
            if path == CA_PATH && !st.b.ca_unimplemented {
                let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                    CertResponse,
                    CertRequest,
                >::default());
                return Ok(g.unary(Ca(st), req).await);
            }
            if path == ADS_PATH {
                let mut g = tonic::server::Grpc::new(
                    tonic_prost::ProstCodec::<DiscResp, DiscReq>::default(),
                );
                return Ok(g.streaming(Ads(st), req).await);
            }
            let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
            Ok(Status::unimplemented(format!("unknown service {service}")).into_http())
        })
    }
}

impl tonic::server::NamedService for Svc {
    const NAME: &'static str = "fake.istiod";
}

fn claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

struct Ca(Arc<State>);

impl tower::Service<Request<CertRequest>> for Ca {
    type Response = Response<CertResponse>;
    type Error = Status;
    type Future = BoxFut<Result<Response<CertResponse>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<CertRequest>) -> Self::Future {
        let st = self.0.clone();
        Box::pin(async move {
            // istiod's one answer for any authenticator failure
            // (security/pkg/server/ca/server.go@1.10.0 L77, master L82).
            let denied = || Status::unauthenticated("request authenticate failure");
            if st.b.reject_token {
                return Err(denied());
            }
            // ClientCertAuthenticator first: a verified workload certificate
            // is the caller's identity (how a VM renews after its token expired).
            let cert_id = req.peer_certs().and_then(|c| {
                let (_, x) = x509_parser::parse_x509_certificate(c.first()?).ok()?;
                let san = x.subject_alternative_name().ok()??;
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
            });
            if let Some(spiffe) = cert_id {
                st.seen.lock().unwrap().ca_subjects.push(spiffe.clone());
                let r = req.into_inner();
                let leaf = st
                    .ca
                    .sign_csr(&r.csr, &spiffe, r.validity_duration)
                    .map_err(Status::invalid_argument)?;
                return Ok(Response::new(CertResponse {
                    cert_chain: vec![leaf, st.ca.cert_pem.clone()],
                }));
            }
            let token = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(denied)?
                .to_string();
            // kube_jwt.go getKubeClient: the header names the cluster whose
            // API server reviews the token; none means the local one.
            let cluster = req
                .metadata()
                .get("clusterid")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let issuer = if cluster.is_empty() || cluster == st.b.cluster_id {
                Some(st.b.issuer.clone())
            } else {
                st.b.remote_clusters
                    .iter()
                    .find(|(id, _)| *id == cluster)
                    .map(|(_, iss)| iss.clone())
            };
            st.seen.lock().unwrap().ca_cluster_ids.push(cluster);
            let issuer = issuer.ok_or_else(denied)?;
            let c = claims(&token).ok_or_else(denied)?;
            if c["iss"].as_str() != Some(issuer.as_str()) {
                return Err(denied());
            }
            let aud_ok = match &c["aud"] {
                serde_json::Value::String(s) => s == "istio-ca",
                serde_json::Value::Array(a) => a.iter().any(|x| x == "istio-ca"),
                _ => false,
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let exp_ok = c["exp"].as_i64().is_some_and(|e| e > now);
            // The API server refuses a token not valid yet.
            let not_future = |k: &str| c[k].as_i64().is_none_or(|t| t <= now);
            if !not_future("nbf") || !not_future("iat") {
                return Err(denied());
            }
            let sub = c["sub"].as_str().unwrap_or_default().to_string();
            let parts: Vec<&str> = sub.split(':').collect();
            if !aud_ok || !exp_ok || parts.len() != 4 || parts[..2] != ["system", "serviceaccount"]
            {
                return Err(denied());
            }
            st.seen.lock().unwrap().ca_subjects.push(sub.clone());
            let spiffe = format!(
                "spiffe://{}/ns/{}/sa/{}",
                st.b.trust_domain, parts[2], parts[3]
            );
            let r = req.into_inner();
            let leaf = st
                .ca
                .sign_csr(&r.csr, &spiffe, r.validity_duration)
                .map_err(Status::invalid_argument)?;
            Ok(Response::new(CertResponse {
                cert_chain: vec![leaf, st.ca.cert_pem.clone()],
            }))
        })
    }
}

struct Ads(Arc<State>);

type RespStream = Pin<Box<dyn Stream<Item = Result<DiscResp, Status>> + Send>>;

fn peer_identity(req: &Request<Streaming<DiscReq>>) -> Option<String> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    let (_, c) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let san = c.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    })
}

impl tower::Service<Request<Streaming<DiscReq>>> for Ads {
    type Response = Response<RespStream>;
    type Error = Status;
    type Future = BoxFut<Result<Response<RespStream>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<DiscReq>>) -> Self::Future {
        let st = self.0.clone();
        Box::pin(async move {
            // pilot/pkg/xds/auth.go: no verified client certificate.
            let identity = peer_identity(&req)
                .ok_or_else(|| Status::unauthenticated("authentication failure"))?;
            st.seen
                .lock()
                .unwrap()
                .xds_identities
                .push(identity.clone());
            let mut inbound = req.into_inner();
            let first = inbound
                .message()
                .await?
                .ok_or_else(|| Status::cancelled("no request"))?;
            let node = first.node.clone().unwrap_or_default();
            let md = node.metadata.as_ref().map(struct_json).unwrap_or_default();
            st.seen
                .lock()
                .unwrap()
                .nodes
                .push((node.id.clone(), md.clone()));
            let ns = md["NAMESPACE"].as_str().unwrap_or_default();
            let sa = md["SERVICE_ACCOUNT"].as_str().unwrap_or_default();
            let want = format!("spiffe://{}/ns/{ns}/sa/{sa}", st.b.trust_domain);
            if identity != want {
                return Err(Status::permission_denied(format!(
                    "authorization failed: no identities ([{identity}]) matched {ns}/{sa}"
                )));
            }
            if st.b.ads_close {
                let empty: RespStream = Box::pin(tokio_stream::empty());
                return Ok(Response::new(empty));
            }
            let cluster = |name: &str| PbAny {
                type_url: CLUSTER_TYPE.into(),
                // Just the Cluster's name field (1): enough to be a resource.
                value: {
                    let mut v = vec![0x0a, name.len() as u8];
                    v.extend_from_slice(name.as_bytes());
                    v
                },
            };
            let resp = DiscResp {
                version_info: "2026-11-27T00:00:00Z/1".into(),
                resources: vec![
                    cluster("outbound|80||nginx.jd.com"),
                    cluster("BlackHoleCluster"),
                ],
                type_url: first.type_url,
                nonce: "fake-nonce-1".into(),
            };
            let out: RespStream = Box::pin(tokio_stream::iter(vec![Ok(resp)]));
            Ok(Response::new(out))
        })
    }
}

// ---- tokens

/// A JWT shaped like a Kubernetes TokenRequest's (signature is filler).
pub fn token(sub: &str, aud: &[&str], exp: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    token_with(sub, aud, exp, ISSUER, now - 60)
}

/// As `token`, with the issuer and the `nbf`/`iat` time.
pub fn token_with(sub: &str, aud: &[&str], exp: i64, iss: &str, issued: i64) -> String {
    let e = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let header = serde_json::json!({"alg": "RS256", "kid": "fake"});
    let parts: Vec<&str> = sub.split(':').collect();
    let payload = serde_json::json!({
        "aud": aud, "exp": exp, "iat": issued, "nbf": issued,
        "iss": iss,
        "kubernetes.io": {"namespace": parts.get(2), "serviceaccount": {"name": parts.get(3)}},
        "sub": sub,
    });
    format!(
        "{}.{}.{}",
        e(&header),
        e(&payload),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"not-a-real-signature")
    )
}

/// Encodes a message, for tests that need raw bytes.
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}
