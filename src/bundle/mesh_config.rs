//! mesh.yaml: `{"defaultConfig": <ProxyConfig>}` as istioctl writes it
//! (istioctl/pkg/workload/workload.go `createMeshConfig`). The agent reads it
//! with `--meshConfig ./etc/istio/config/mesh`.
//!
//! The file is untrusted input, so parsing is bounded before and while it
//! happens: a size limit, then a deserializer that counts every node it builds
//! (alias expansions included, which defeats "billion laughs") and the nesting
//! depth. Go's YAML marshaller never writes anchors, so nothing real comes near
//! the limits.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Larger than any real mesh.yaml by two orders of magnitude.
pub const MAX_BYTES: usize = 256 * 1024;
/// Nodes (scalars, maps, sequences), counted after alias expansion.
pub const MAX_NODES: usize = 100_000;
/// Nesting of maps and sequences.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// `defaultConfig.discoveryAddress`, `host:port`.
    pub discovery_address: Option<String>,
    /// `defaultConfig.proxyMetadata`; scalar values as their text.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `defaultConfig.meshId`.
    pub mesh_id: Option<String>,
    /// `defaultConfig.readinessProbe` (the WorkloadGroup's probe), if any.
    pub readiness_probe: Option<Value>,
    /// The whole document.
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshError {
    pub message: String,
}

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MeshError {}

fn err(message: impl Into<String>) -> MeshError {
    MeshError {
        message: message.into(),
    }
}

/// Deepest `[`/`{` nesting outside quotes and comments. A cheap pass before
/// the YAML parser, which tokenizes the whole document first and is slow on
/// pathological nesting; conservative on purpose (real mesh.yaml has 0-1).
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut prev = '\n';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                // A quote opens a scalar only where a token starts (`a'b` is plain).
                '"' | '\'' if prev.is_whitespace() || "[{,:".contains(prev) => quote = Some(c),
                '#' if prev.is_whitespace() => {
                    while chars.peek().is_some_and(|&n| n != '\n') {
                        chars.next();
                    }
                }
                '[' | '{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        // A quote never spans a line in what istioctl writes; resetting keeps
        // an apostrophe in a plain scalar from hiding the rest of the file.
        if c == '\n' {
            quote = None;
        }
        prev = c;
    }
    max
}

/// Builds a JSON value from YAML while enforcing the node and depth limits.
#[derive(Clone, Copy)]
struct Bounded<'a> {
    nodes: &'a Cell<usize>,
    depth: usize,
}

const LIMIT_NODES: &str = "too many nodes (aliases expanding without bound?)";
const LIMIT_DEPTH: &str = "nested too deeply";

impl<'a> Bounded<'a> {
    fn count<E: serde::de::Error>(&self) -> Result<(), E> {
        let n = self.nodes.get() + 1;
        self.nodes.set(n);
        if n > MAX_NODES {
            return Err(E::custom(LIMIT_NODES));
        }
        Ok(())
    }

    fn deeper<E: serde::de::Error>(&self) -> Result<Bounded<'a>, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(LIMIT_DEPTH));
        }
        Ok(Bounded {
            nodes: self.nodes,
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.count()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.count()?;
        Ok(Value::String(v.to_string()))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.count()?;
        let inner = self.deeper()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.count()?;
        let inner = self.deeper()?;
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key_seed(inner)? {
            let key = match k {
                Value::String(s) => s,
                Value::Null => "null".to_string(),
                Value::Bool(_) | Value::Number(_) => k.to_string(),
                _ => return Err(serde::de::Error::custom("a map key is not a scalar")),
            };
            let v = map.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Text of a scalar as the agent's env would see it.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

impl MeshConfig {
    pub fn parse(bytes: &[u8]) -> Result<MeshConfig, MeshError> {
        if bytes.len() > MAX_BYTES {
            return Err(err(format!(
                "{} bytes, more than the {MAX_BYTES} a mesh config can reasonably have",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| err("not UTF-8 text"))?;
        if text.trim().is_empty() {
            return Err(err("empty file"));
        }
        if flow_depth(text) > 2 * MAX_DEPTH {
            return Err(err(format!(
                "nested too deeply (more than {} levels of [ or {{)",
                2 * MAX_DEPTH
            )));
        }
        let nodes = Cell::new(0);
        let mut docs = serde_yaml_ng::Deserializer::from_str(text);
        let first = docs.next().ok_or_else(|| err("no YAML document"))?;
        let raw = Bounded {
            nodes: &nodes,
            depth: 0,
        }
        .deserialize(first)
        .map_err(|e| err(format!("not valid YAML: {e}")))?;
        if docs.next().is_some() {
            return Err(err("more than one YAML document (`---`)"));
        }
        let Value::Object(top) = &raw else {
            return Err(err("the top level is not a map with `defaultConfig`"));
        };
        let dc = match top.get("defaultConfig") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(err("`defaultConfig` is not a map")),
        };
        let string_field = |name: &str| -> Result<Option<String>, MeshError> {
            match dc.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(format!("`defaultConfig.{name}` is not a string"))),
            }
        };
        let mut proxy_metadata = BTreeMap::new();
        match dc.get("proxyMetadata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let text = scalar_text(v).ok_or_else(|| {
                        err(format!(
                            "`defaultConfig.proxyMetadata.{k}` is not a string (it becomes an \
                             environment variable)"
                        ))
                    })?;
                    proxy_metadata.insert(k.clone(), text);
                }
            }
            Some(_) => return Err(err("`defaultConfig.proxyMetadata` is not a map")),
        }
        Ok(MeshConfig {
            discovery_address: string_field("discoveryAddress")?,
            mesh_id: string_field("meshId")?,
            readiness_probe: dc.get("readinessProbe").filter(|v| !v.is_null()).cloned(),
            proxy_metadata,
            raw,
        })
    }
}

/// Split `host:port` (`[v6]:port` too). `None` if there is no valid port.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        addr.rsplit_once(':')?
    };
    if host.is_empty() || host.contains(':') && !addr.starts_with('[') {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port != 0).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOLDEN: &str = "defaultConfig:\n  discoveryAddress: istiod-rev-1.istio-system.svc:15012\n  \
        meshId: mesh1\n  proxyMetadata:\n    CANONICAL_REVISION: latest\n    \
        ISTIO_META_DNS_CAPTURE: \"true\"\n    ISTIO_META_MESH_ID: \"\"\n  \
        readinessProbe:\n    httpGet:\n      port: 8080\n";

    #[test]
    fn golden() {
        let m = MeshConfig::parse(GOLDEN.as_bytes()).unwrap();
        assert_eq!(
            m.discovery_address.as_deref(),
            Some("istiod-rev-1.istio-system.svc:15012")
        );
        assert_eq!(m.mesh_id.as_deref(), Some("mesh1"));
        assert_eq!(m.proxy_metadata["ISTIO_META_DNS_CAPTURE"], "true");
        assert_eq!(m.proxy_metadata["ISTIO_META_MESH_ID"], "");
        assert_eq!(m.readiness_probe.unwrap()["httpGet"]["port"], 8080);
    }

    #[test]
    fn unquoted_scalars_become_text() {
        let m = MeshConfig::parse(b"defaultConfig:\n  proxyMetadata:\n    A: true\n    B: 5\n")
            .unwrap();
        assert_eq!(m.proxy_metadata["A"], "true");
        assert_eq!(m.proxy_metadata["B"], "5");
    }

    #[test]
    fn refused() {
        for text in [
            "",
            "- a\n",
            "defaultConfig: 3\n",
            "defaultConfig:\n  proxyMetadata: [1]\n",
            "defaultConfig:\n  proxyMetadata:\n    A: {b: c}\n",
            "defaultConfig:\n  discoveryAddress: [x]\n",
            "a: b\n---\nc: d\n",
            "a: [\n",
            "\t- x: y\n",
        ] {
            assert!(MeshConfig::parse(text.as_bytes()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn bombs_are_bounded() {
        let mut bomb =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for i in 0..9u8 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!(
                "{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        let e = MeshConfig::parse(bomb.as_bytes()).unwrap_err();
        assert!(e.message.contains("too many nodes") || e.message.contains("repetition"));
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let e = MeshConfig::parse(deep.as_bytes()).unwrap_err();
        assert!(
            e.message.contains("deep") || e.message.contains("recursion"),
            "{e}"
        );
        let big = "a: b\n".repeat(MAX_BYTES / 4);
        assert!(MeshConfig::parse(big.as_bytes()).is_err());
    }

    #[test]
    fn flow_depth_ignores_quotes_and_comments() {
        assert_eq!(flow_depth("a: [1, {b: [2]}]\n"), 3);
        assert_eq!(flow_depth("a: '[[[['\nb: \"{{\\\"{{\"\n# [[[[\n"), 0);
        assert_eq!(flow_depth("a: it's [x]\nb: [y]\n"), 1);
        assert_eq!(flow_depth("[a'b, [[c]]]\n"), 3);
        // Only a backslash escapes inside double quotes: the quote closes
        // before the bracket.
        assert_eq!(flow_depth("a: \"xy\"[1]\n"), 1);
        // `#` starts a comment only after whitespace.
        assert_eq!(flow_depth("a: b#[1]\n"), 1);
    }

    #[test]
    fn size_limit_is_exact() {
        // A comment pads the document to exactly MAX_BYTES: still accepted.
        let head = "defaultConfig:\n  meshId: m\n#";
        let text = |len: usize| format!("{head}{}\n", "x".repeat(len - head.len() - 1));
        let m = MeshConfig::parse(text(MAX_BYTES).as_bytes()).unwrap();
        assert_eq!(m.mesh_id.as_deref(), Some("m"));
        let e = MeshConfig::parse(text(MAX_BYTES + 1).as_bytes()).unwrap_err();
        assert!(e.message.contains(&MAX_BYTES.to_string()), "{e}");
    }

    #[test]
    fn flow_depth_limit_is_twice_max_depth() {
        // `[` inside a block plain scalar is text, not nesting, so only the
        // conservative pre-check sees it: 2 * MAX_DEPTH of them still parse.
        let scalar = |n: usize| format!("defaultConfig:\n  meshId: x{}\n", "[".repeat(n));
        let m = MeshConfig::parse(scalar(2 * MAX_DEPTH).as_bytes()).unwrap();
        assert_eq!(m.mesh_id, Some(format!("x{}", "[".repeat(2 * MAX_DEPTH))));
        assert!(MeshConfig::parse(scalar(2 * MAX_DEPTH + 1).as_bytes()).is_err());
    }

    #[test]
    fn null_metadata_value_is_empty_text() {
        let m = MeshConfig::parse(b"defaultConfig:\n  proxyMetadata:\n    A:\n    B: ~\n").unwrap();
        assert_eq!(m.proxy_metadata["A"], "");
        assert_eq!(m.proxy_metadata["B"], "");
    }

    #[test]
    fn node_limit_is_exact_and_counts_nulls() {
        // The top map, the key `x` and the list are three nodes.
        let list = |n: usize, item: &str| format!("x: [{}]\n", vec![item; n].join(","));
        assert!(MeshConfig::parse(list(MAX_NODES - 3, "0").as_bytes()).is_ok());
        let e = MeshConfig::parse(list(MAX_NODES - 2, "~").as_bytes()).unwrap_err();
        assert!(e.message.contains(LIMIT_NODES), "{e}");
    }

    #[test]
    fn block_nesting_is_bounded() {
        // Indentation, not brackets: only the depth limit sees it.
        let nest = |n: usize| {
            let mut s = String::new();
            for i in 0..n {
                s.push_str(&format!("{}a:\n", "  ".repeat(i)));
            }
            s + &"  ".repeat(n) + "1\n"
        };
        assert!(MeshConfig::parse(nest(MAX_DEPTH).as_bytes()).is_ok());
        let e = MeshConfig::parse(nest(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(e.message.contains(LIMIT_DEPTH), "{e}");
    }

    #[test]
    fn numbers_keep_their_value() {
        let m = MeshConfig::parse(b"a: -1\nb: 1.5\nc: 7\nd: ~\n").unwrap();
        assert_eq!(m.raw["a"], serde_json::json!(-1));
        assert_eq!(m.raw["b"], serde_json::json!(1.5));
        assert_eq!(m.raw["c"], serde_json::json!(7));
        assert!(m.raw["d"].is_null());
        // Scalar keys become text as YAML prints them.
        let m = MeshConfig::parse(b"~: a\n1: b\ntrue: c\n").unwrap();
        assert_eq!(m.raw["null"], "a");
        assert_eq!(m.raw["1"], "b");
        assert_eq!(m.raw["true"], "c");
    }

    #[test]
    fn error_text_is_the_message() {
        let e = MeshConfig::parse(b"\xff").unwrap_err();
        assert_eq!(e.to_string(), e.message);
        assert!(!e.message.is_empty());
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("istiod.istio-system.svc:15012"),
            Some(("istiod.istio-system.svc", 15012))
        );
        assert_eq!(split_host_port("[fd00::1]:15012"), Some(("fd00::1", 15012)));
        assert_eq!(split_host_port("istiod.svc.cluster.local"), None);
        assert_eq!(split_host_port("x:0"), None);
        assert_eq!(split_host_port(":15012"), None);
        assert_eq!(split_host_port("fd00::1:15012"), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,120}") {
            let _ = MeshConfig::parse(s.as_bytes());
        }
    }
}
