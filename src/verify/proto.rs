//! The few protobuf messages verify speaks, written by hand with
//! `prost::Message` so no `protoc` is needed at build time. Field numbers
//! follow the upstream protos:
//!
//! - `istio.v1.auth.IstioCertificateRequest/Response`: istio/api
//!   `security/v1alpha1/ca.proto`;
//! - `envoy.service.discovery.v3.DiscoveryRequest/Response`: envoy
//!   `api/envoy/service/discovery/v3/discovery.proto`;
//! - `envoy.config.core.v3.Node`: envoy `api/envoy/config/core/v3/base.proto`;
//! - `google.protobuf.{Struct,Value,ListValue,Any}`: protobuf's well-known types.
//!
//! Only the fields verify reads or writes are declared; prost skips unknown
//! fields when decoding, as protobuf requires.

use std::collections::BTreeMap;

/// gRPC paths (`/package.Service/Method`).
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
pub const STREAM_AGGREGATED_RESOURCES: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub const CA_SERVICE: &str = "istio.v1.auth.IstioCertificateService";
pub const ADS_SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
/// CDS, the first thing Envoy asks istiod for.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity, in seconds.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates, leaf first.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Node {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub cluster: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<Struct>,
    #[prost(string, tag = "6")]
    pub user_agent_name: String,
    #[prost(string, tag = "7")]
    pub user_agent_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, optional, tag = "2")]
    pub node: Option<Node>,
    #[prost(string, repeated, tag = "3")]
    pub resource_names: Vec<String>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Any>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// `google.protobuf.NullValue`, always 0.
    #[prost(int32, tag = "1")]
    Null(i32),
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(Struct),
    #[prost(message, tag = "6")]
    List(ListValue),
}

impl Value {
    pub fn string(s: impl Into<String>) -> Self {
        Value {
            kind: Some(Kind::String(s.into())),
        }
    }
}

impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        let kind = match v {
            J::Null => Kind::Null(0),
            J::Bool(b) => Kind::Bool(*b),
            J::Number(n) => Kind::Number(n.as_f64().unwrap_or_default()),
            J::String(s) => Kind::String(s.clone()),
            J::Array(a) => Kind::List(ListValue {
                values: a.iter().map(Value::from).collect(),
            }),
            J::Object(o) => Kind::Struct(Struct {
                fields: o.iter().map(|(k, v)| (k.clone(), Value::from(v))).collect(),
            }),
        };
        Value { kind: Some(kind) }
    }
}

impl From<&Value> for serde_json::Value {
    fn from(v: &Value) -> Self {
        use serde_json::Value as J;
        match &v.kind {
            None | Some(Kind::Null(_)) => J::Null,
            Some(Kind::Bool(b)) => J::Bool(*b),
            Some(Kind::Number(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
            Some(Kind::String(s)) => J::String(s.clone()),
            Some(Kind::List(l)) => J::Array(l.values.iter().map(J::from).collect()),
            Some(Kind::Struct(s)) => J::from(s),
        }
    }
}

impl From<&Struct> for serde_json::Value {
    fn from(s: &Struct) -> Self {
        serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v)))
                .collect(),
        )
    }
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
        let Kind::Struct(s) = Value::from(&json).kind.unwrap() else {
            panic!("an object becomes a Struct")
        };
        let bytes = s.encode_to_vec();
        let back = Struct::decode(bytes.as_slice()).unwrap();
        assert_eq!(serde_json::Value::from(&back), json);
    }

    #[test]
    fn field_numbers_match_the_upstream_protos() {
        // csr = 1 (string), validity_duration = 3 (varint): tags 0x0a and 0x18.
        let req = IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 5,
            metadata: None,
        };
        assert_eq!(req.encode_to_vec(), vec![0x0a, 1, b'x', 0x18, 5]);
        // node = 2 (message), type_url = 4 (string): tags 0x12 and 0x22.
        let dr = DiscoveryRequest {
            node: Some(Node {
                id: "n".into(),
                ..Default::default()
            }),
            type_url: "t".into(),
            ..Default::default()
        };
        assert_eq!(
            dr.encode_to_vec(),
            vec![0x12, 3, 0x0a, 1, b'n', 0x22, 1, b't']
        );
    }
}
