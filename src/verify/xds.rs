//! `xds.stream`: an ADS stream over mTLS with the certificate `ca.token` got,
//! asking for clusters like Envoy does first. The node carries Istio's
//! metadata minus auto-registration, so istiod never creates a WorkloadEntry
//! for verify (pilot/pkg/autoregistration/controller.go keys on
//! AUTO_REGISTER_GROUP).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::ca::Issued;
use super::inputs::{Inputs, Target};
use super::net::{self, Tls};
use super::proto::{self, Struct, Value};
use super::{fail, pass};
use crate::report::Check;

/// Metadata keys that would make istiod create or adopt a WorkloadEntry.
const NEVER_SENT: &[&str] = &["AUTO_REGISTER_GROUP", "WORKLOAD_ENTRY"];

/// The VM's address as the agent picks it: ISTIO_SVC_IP, else the first
/// non-loopback address (istio-start.sh uses `hostname -I`).
pub fn instance_ip(inputs: &Inputs) -> String {
    if let Some(ip) = inputs.env.get("ISTIO_SVC_IP").filter(|s| !s.is_empty()) {
        return ip.clone();
    }
    nix::ifaddrs::getifaddrs()
        .ok()
        .and_then(|mut it| {
            it.find_map(|i| {
                let a = i.address?;
                let ip: IpAddr = a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip()))?;
                (!ip.is_loopback()).then_some(ip)
            })
        })
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// `hostname -s`, the agent's POD_NAME on a VM.
pub fn pod_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Node id and metadata in the format pilot-agent sends
/// (pkg/bootstrap/config.go `GetNodeMetaData`, pkg/model/proxy.go `NodeMetadata`).
pub fn node(inputs: &Inputs, ip: &str, pod: &str) -> proto::Node {
    let ns = inputs
        .env
        .get("POD_NAMESPACE")
        .or_else(|| inputs.env.get("ISTIO_NAMESPACE"))
        .cloned()
        .unwrap_or_default();
    let mut md: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in &inputs.env {
        if let Some(key) = k.strip_prefix("ISTIO_META_")
            && !NEVER_SENT.contains(&key)
        {
            md.insert(key.to_string(), Value::string(v));
        }
        if let Some(key) = k.strip_prefix("ISTIO_METAJSON_")
            && !NEVER_SENT.contains(&key)
            && let Ok(j) = serde_json::from_str::<serde_json::Value>(v)
        {
            md.insert(key.to_string(), Value::from(&j));
        }
    }
    md.insert("NAMESPACE".into(), Value::string(&ns));
    md.insert("NAME".into(), Value::string(pod));
    md.insert("INSTANCE_IPS".into(), Value::string(ip));
    md.insert("INTERCEPTION_MODE".into(), Value::string("REDIRECT"));
    if let Some(sa) = inputs.env.get("SERVICE_ACCOUNT") {
        md.insert("SERVICE_ACCOUNT".into(), Value::string(sa));
    }
    let cluster = match inputs
        .env
        .get("CANONICAL_SERVICE")
        .filter(|s| !s.is_empty())
    {
        Some(svc) => format!("{svc}.{ns}"),
        None => "istio-proxy".into(),
    };
    proto::Node {
        id: format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
        cluster,
        metadata: Some(Struct { fields: md }),
        user_agent_name: "istio-vm".into(),
        user_agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

pub async fn check(
    inputs: &Inputs,
    t: &Target,
    addrs: &[SocketAddr],
    issued: &Issued,
    timeout: Duration,
) -> Check {
    let id = "xds.stream";
    let Some(pem) = inputs.root_cert_pem.as_deref() else {
        return fail(id, "no root-cert.pem", "see files.root_cert");
    };
    let node = node(inputs, &instance_ip(inputs), &pod_name());
    let node_id = node.id.clone();
    match tokio::time::timeout(timeout, stream(pem, t, addrs, issued, node, timeout)).await {
        Err(_) => fail(
            id,
            format!(
                "no XDS response from {} within {}",
                t.addr(),
                net::ms(timeout)
            ),
            "istiod accepted the stream but sent no clusters: it may still be computing the push or be overloaded; look for this node in `istioctl proxy-status` and istiod's log",
        ),
        Ok(Err(c)) => c,
        Ok(Ok(resp)) => pass(
            id,
            format!(
                "{} answered the ADS stream for {node_id}: {} cluster(s), version {}",
                t.addr(),
                resp.resources.len(),
                if resp.version_info.is_empty() {
                    "-"
                } else {
                    &resp.version_info
                }
            ),
        ),
    }
}

async fn stream(
    root_pem: &[u8],
    t: &Target,
    addrs: &[SocketAddr],
    issued: &Issued,
    node: proto::Node,
    timeout: Duration,
) -> Result<proto::DiscoveryResponse, Check> {
    let id = "xds.stream";
    let tls =
        Tls::new(root_pem, Some((issued.chain.clone(), issued.key_clone()))).map_err(|e| {
            fail(
                id,
                e,
                "the issued certificate cannot be used as a client certificate",
            )
        })?;
    let tcp = net::tcp_connect(addrs, timeout)
        .await
        .map_err(|e| net::tcp_failure(id, t, &e, timeout))?;
    let s = tls
        .handshake(tcp, t, timeout)
        .await
        .map_err(|f| net::tls_failure(id, t, &f, timeout))?;
    let channel = super::grpc::channel(s, &t.addr())
        .await
        .map_err(|e| fail(id, e, "istiod did not accept an HTTP/2 (gRPC) connection"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| {
        fail(
            id,
            format!("gRPC channel not ready: {e}"),
            "istiod closed the connection",
        )
    })?;
    let first = proto::DiscoveryRequest {
        node: Some(node),
        type_url: proto::CLUSTER_TYPE.into(),
        ..Default::default()
    };
    // Keep the sending half open until the answer: a half-closed stream is a
    // proxy going away, and istiod may end it before responding.
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::DiscoveryRequest>(1);
    tx.send(first)
        .await
        .map_err(|_| fail(id, "could not queue the request", "internal error"))?;
    let requests = tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx);
    let path = http::uri::PathAndQuery::from_static(proto::STREAM_AGGREGATED_RESOURCES);
    let codec =
        tonic_prost::ProstCodec::<proto::DiscoveryRequest, proto::DiscoveryResponse>::default();
    let resp = grpc
        .streaming(tonic::Request::new(requests), path, codec)
        .await
        .map_err(|s| status_check(id, &s))?;
    let mut inbound = resp.into_inner();
    let r = inbound.message().await;
    drop(tx);
    match r {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(fail(
            id,
            "istiod closed the XDS stream without sending anything",
            "istiod ended the stream right after the first request: look for this node in istiod's log \
             (`Unauthorized XDS`, `cannot find WorkloadGroup`, cluster ID mismatch `proxy is in cluster X, but controller is for cluster Y`, istio#27234)",
        )),
        Err(s) => Err(status_check(id, &s)),
    }
}

fn status_check(id: &str, s: &tonic::Status) -> Check {
    let detail = super::grpc::status_text(s);
    let hint = match s.code() {
        tonic::Code::PermissionDenied => "`authorization failed: no identities matched`: the certificate's identity (from the token) \
             differs from POD_NAMESPACE/SERVICE_ACCOUNT in cluster.env (istio#35249): make them agree"
            .to_string(),
        tonic::Code::Unauthenticated => "istiod did not accept the certificate its own CA just issued: XDS and CA are served by different \
             control planes (CA_ADDR and discoveryAddress disagree) or the mesh root changed"
            .to_string(),
        tonic::Code::Unimplemented => "the server has no AggregatedDiscoveryService: discoveryAddress points at something that is not istiod".to_string(),
        tonic::Code::Unavailable => "the stream broke: a proxy or gateway idle timeout between the VM and istiod, or istiod restarting".to_string(),
        _ => "see the error; istiod's log names the reason for this node".to_string(),
    };
    fail(id, detail, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_metadata_is_istio_shaped_without_autoregistration() {
        let mut i = Inputs::default();
        for (k, v) in [
            ("POD_NAMESPACE", "vm-apps"),
            ("SERVICE_ACCOUNT", "ratings-sa"),
            ("CANONICAL_SERVICE", "ratings"),
            ("ISTIO_META_AUTO_REGISTER_GROUP", "ratings-vm"),
            ("ISTIO_META_CLUSTER_ID", "cluster1"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"ratings"}"#),
        ] {
            i.env.insert(k.into(), v.into());
        }
        let n = node(&i, "198.51.100.10", "vm1");
        assert_eq!(
            n.id,
            "sidecar~198.51.100.10~vm1.vm-apps~vm-apps.svc.cluster.local"
        );
        assert_eq!(n.cluster, "ratings.vm-apps");
        let md = serde_json::Value::from(n.metadata.as_ref().unwrap());
        assert_eq!(md["CLUSTER_ID"], "cluster1");
        assert_eq!(md["NAMESPACE"], "vm-apps");
        assert_eq!(md["SERVICE_ACCOUNT"], "ratings-sa");
        assert_eq!(md["LABELS"]["app"], "ratings");
        assert!(md.get("AUTO_REGISTER_GROUP").is_none());
        assert!(md.get("WORKLOAD_ENTRY").is_none());
    }
}
