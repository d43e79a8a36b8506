//! The protobuf messages and gRPC clients verify speaks, generated at build
//! time from the vendored upstream protos (proto/, see proto/README.md):
//!
//! - `istio.v1.auth.IstioCertificateService`: istio/api `security/v1alpha1/ca.proto`;
//! - `envoy.service.discovery.v3.AggregatedDiscoveryService`: envoy
//!   `api/envoy/service/discovery/v3/{ads,discovery}.proto` and
//!   `envoy/config/core/v3/base.proto` for `Node`;
//! - `google.protobuf.*`: `prost-types`.

#[allow(dead_code, clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}

pub use generated::envoy::config::core::v3::{Node, node::UserAgentVersionType};
pub use generated::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
pub use generated::istio::v1::auth::{
    IstioCertificateRequest, IstioCertificateResponse,
    istio_certificate_service_client::IstioCertificateServiceClient,
};
pub use prost_types::{ListValue, Struct, Value, value::Kind};

/// CDS, the first thing Envoy asks istiod for.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// A string `google.protobuf.Value`.
pub fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

pub fn from_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

pub fn struct_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn struct_round_trips_through_the_wire() {
        let json = serde_json::json!({
            "NAMESPACE": "vm-apps",
            "LABELS": {"app": "ratings", "version": "v1"},
            "INSTANCE_IPS": "198.51.100.10",
            "N": 3.0,
            "B": true,
            "L": ["a", null],
        });
        let Some(Kind::StructValue(s)) = from_json(&json).kind else {
            panic!("an object becomes a Struct")
        };
        let bytes = s.encode_to_vec();
        let back = Struct::decode(bytes.as_slice()).unwrap();
        assert_eq!(struct_json(&back), json);
    }

    #[test]
    fn field_numbers_match_the_upstream_protos() {
        // Pinned bytes, so a wrong vendored file or generator shows here:
        // csr = 1 (string), validity_duration = 3 (varint): tags 0x0a and 0x18.
        let req = IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 5,
            metadata: None,
        };
        assert_eq!(req.encode_to_vec(), vec![0x0a, 1, b'x', 0x18, 5]);
        // node = 2 (message), type_url = 4 (string): tags 0x12 and 0x22;
        // Node.user_agent_version = 7.
        let dr = DiscoveryRequest {
            node: Some(Node {
                id: "n".into(),
                user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion("v".into())),
                ..Default::default()
            }),
            type_url: "t".into(),
            ..Default::default()
        };
        assert_eq!(
            dr.encode_to_vec(),
            vec![0x12, 6, 0x0a, 1, b'n', 0x3a, 1, b'v', 0x22, 1, b't']
        );
    }
}
