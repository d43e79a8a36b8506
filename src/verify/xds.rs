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
use super::version;
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
    let ns = version::agent_namespace(&inputs.env);
    let mut md: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in &inputs.env {
        if let Some(key) = k.strip_prefix("ISTIO_META_")
            && !NEVER_SENT.contains(&key)
        {
            md.insert(key.to_string(), proto::string(v));
        }
        if let Some(key) = k.strip_prefix("ISTIO_METAJSON_")
            && !NEVER_SENT.contains(&key)
            && let Ok(j) = serde_json::from_str::<serde_json::Value>(v)
        {
            md.insert(key.to_string(), proto::from_json(&j));
        }
    }
    md.insert("NAMESPACE".into(), proto::string(&ns));
    md.insert("NAME".into(), proto::string(pod));
    md.insert("INSTANCE_IPS".into(), proto::string(ip));
    md.insert("INTERCEPTION_MODE".into(), proto::string("REDIRECT"));
    if let Some(sa) = inputs.env.get("SERVICE_ACCOUNT") {
        md.insert("SERVICE_ACCOUNT".into(), proto::string(sa));
    }
    // istio-start.sh@1.10.0 exports ISTIO_META_ISTIO_VERSION (later the
    // agent sends its build version, pkg/bootstrap/config.go): istiod
    // generates config for that Envoy (pkg/model/proxy.go IstioVersion).
    if let Some(v) = version::node_version(inputs.sidecar.as_ref()) {
        md.insert("ISTIO_VERSION".into(), proto::string(v));
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
        metadata: Some(Struct {
            fields: md.into_iter().collect(),
        }),
        user_agent_name: "istio-vm".into(),
        user_agent_version_type: Some(proto::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
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
    match tokio::time::timeout(
        timeout,
        stream(pem, t, addrs, issued, node, timeout, inputs.owner),
    )
    .await
    {
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
    owner: net::Owner,
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
    let channel = super::grpc::connect(id, &tls, addrs, t, timeout, owner).await?;
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
    // The generated client of envoy/service/discovery/v3/ads.proto.
    let resp = proto::AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tonic::Request::new(requests))
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
            // istiod ends a stream without a status only when it stops the
            // connection itself (pkg/xds/server.go `Stream`: `<-con.stop`,
            // e.g. shutting down) or when the stream is gone underneath it;
            // authorisation and WorkloadGroup failures come back as a status
            // (pilot/pkg/xds/ads.go, pilot/pkg/autoregistration/controller.go).
            "the stream ended cleanly before any configuration: istiod is shutting down or restarting (retry, `--wait`), \
             or a proxy between the VM and istiod (the east-west gateway, a load balancer) ends HTTP/2 streams it should pass through: \
             the gateway must pass 15012 through by SNI (TLS PASSTHROUGH)",
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
            // istio-start.sh passes POD_NAMESPACE=${ISTIO_NAMESPACE:-default}
            // on pilot-agent's command line: cluster.env's POD_NAMESPACE loses.
            ("POD_NAMESPACE", "ignored"),
            ("ISTIO_NAMESPACE", "vm-apps"),
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
        let md = proto::struct_json(n.metadata.as_ref().unwrap());
        assert_eq!(md["CLUSTER_ID"], "cluster1");
        assert_eq!(md["NAMESPACE"], "vm-apps");
        assert_eq!(md["SERVICE_ACCOUNT"], "ratings-sa");
        assert_eq!(md["LABELS"]["app"], "ratings");
        assert!(md.get("AUTO_REGISTER_GROUP").is_none());
        assert!(md.get("ISTIO_VERSION").is_none(), "no sidecar installed");
        i.sidecar = Some(version::Installed {
            version: version::Version::new(1, 10, 6),
            source: "test".into(),
        });
        let md = proto::struct_json(node(&i, "198.51.100.10", "vm1").metadata.as_ref().unwrap());
        assert_eq!(md["ISTIO_VERSION"], "1.10.6");
        assert!(md.get("WORKLOAD_ENTRY").is_none());
    }
}
