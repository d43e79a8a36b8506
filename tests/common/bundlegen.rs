//! Generates bundles like `istioctl x workload entry configure` writes them,
//! with a real (throw-away) CA from rcgen and a JWT with chosen claims, so
//! tests can produce every finding on purpose.
//!
//! ```ignore
//! mod common;
//! use common::bundlegen::BundleSpec;
//! let dir = tempfile::tempdir().unwrap();
//! BundleSpec::valid().token_exp_in(-60).write(dir.path());
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use time::OffsetDateTime;

pub const CLUSTER_ENV: &str = "cluster.env";
pub const MESH: &str = "mesh.yaml";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const TOKEN: &str = "istio-token";
pub const HOSTS: &str = "hosts";

/// Everything a bundle is made of; change a field or use the builder methods.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// Reference time for the cert and token validity (default: now).
    pub now: i64,
    /// cluster.env variables, written sorted with Istio's quoting.
    pub env: BTreeMap<String, String>,
    /// mesh.yaml `defaultConfig.discoveryAddress` (`None`: left out).
    pub discovery_address: Option<String>,
    pub mesh_id: Option<String>,
    /// mesh.yaml `proxyMetadata` (default: the same as cluster.env's metadata).
    pub proxy_metadata: BTreeMap<String, String>,
    pub hosts: String,
    /// mesh.yaml `defaultConfig.readinessProbe` (the WorkloadGroup's probe).
    pub readiness_probe: Value,
    /// CA validity, seconds relative to `now`.
    pub ca_not_before: i64,
    pub ca_not_after: i64,
    pub ca_is_ca: bool,
    /// JWT payload.
    pub claims: Value,
    /// Files replaced verbatim (Some) or left out (None), applied last.
    pub overrides: BTreeMap<String, Option<Vec<u8>>>,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Keys istioctl copies from proxyMetadata into cluster.env.
const METADATA_KEYS: &[&str] = &[
    "CANONICAL_REVISION",
    "CANONICAL_SERVICE",
    "ISTIO_META_AUTO_REGISTER_GROUP",
    "ISTIO_META_CLUSTER_ID",
    "ISTIO_META_DNS_CAPTURE",
    "ISTIO_META_MESH_ID",
    "ISTIO_META_NETWORK",
    "ISTIO_META_POD_PORTS",
    "ISTIO_META_WORKLOAD_NAME",
    "ISTIO_METAJSON_LABELS",
    "POD_NAMESPACE",
    "SERVICE_ACCOUNT",
    "TRUST_DOMAIN",
];

impl BundleSpec {
    /// A current (HEAD) bundle that validates with no finding: reference/istio-vm.md
    /// §1.5 (`ratings-vm` in `vm-apps`), CA valid from a day ago for a year,
    /// token valid for an hour.
    pub fn valid() -> Self {
        let env = strings(&[
            ("CANONICAL_REVISION", "v1"),
            ("CANONICAL_SERVICE", "ratings"),
            ("ISTIO_INBOUND_PORTS", "9080"),
            ("ISTIO_LOCAL_EXCLUDE_PORTS", "22,15090,15021,15020"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"ratings","service.istio.io/canonical-name":"ratings","service.istio.io/canonical-revision":"v1","version":"v1"}"#,
            ),
            ("ISTIO_META_AUTO_REGISTER_GROUP", "ratings-vm"),
            ("ISTIO_META_CLUSTER_ID", "cluster1"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_META_MESH_ID", "mesh1"),
            ("ISTIO_META_NETWORK", "vm-network"),
            (
                "ISTIO_META_POD_PORTS",
                r#"[{"name":"http","containerPort":9080,"protocol":""}]"#,
            ),
            ("ISTIO_META_WORKLOAD_NAME", "ratings-vm"),
            ("ISTIO_NAMESPACE", "vm-apps"),
            ("ISTIO_SERVICE", "ratings-vm.vm-apps"),
            ("ISTIO_SERVICE_CIDR", "*"),
            ("ISTIO_SVC_IP", "198.51.100.10"),
            ("POD_NAMESPACE", "vm-apps"),
            ("SERVICE_ACCOUNT", "ratings-sa"),
            ("TRUST_DOMAIN", "cluster.local"),
        ]);
        Self::from_env(env, "vm-apps", "ratings-sa")
            .discovery("istiod.istio-system.svc:15012")
            .mesh_id(Some("mesh1"))
            .hosts("203.0.113.10 istiod.istio-system.svc\n")
    }

    /// What the seed (Istio 1.10, seeds/000_d091313a5671bd9d.txt) generated:
    /// `istioctl x workload entry configure -f workloadgroup.yaml --clusterID
    /// Kubernetes --ingressIP 192.168.0.59 --autoregister` for WorkloadGroup `nginx`
    /// in `istio-demo` (service account `vm`, no ports, probe on port 80), then
    /// `class: vm` added to the labels in cluster.env only, as the seed does.
    /// 1.10's gaps are in it: no 22/15020 in the exclude list, `canonical-version`.
    pub fn istio_1_10_seed() -> Self {
        let labels_mesh = r#"{"app":"nginx","service.istio.io/canonical-name":"nginx","service.istio.io/canonical-version":"latest"}"#;
        let labels_env = r#"{"app":"nginx","class":"vm","service.istio.io/canonical-name":"nginx","service.istio.io/canonical-version":"latest"}"#;
        let env = strings(&[
            ("CANONICAL_REVISION", "latest"),
            ("CANONICAL_SERVICE", "nginx"),
            ("ISTIO_INBOUND_PORTS", "*"),
            ("ISTIO_LOCAL_EXCLUDE_PORTS", "15090,15021"),
            ("ISTIO_METAJSON_LABELS", labels_mesh),
            ("ISTIO_META_AUTO_REGISTER_GROUP", "nginx"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_META_MESH_ID", ""),
            ("ISTIO_META_NETWORK", ""),
            ("ISTIO_META_WORKLOAD_NAME", "nginx"),
            ("ISTIO_NAMESPACE", "istio-demo"),
            ("ISTIO_SERVICE", "nginx.istio-demo"),
            ("ISTIO_SERVICE_CIDR", "*"),
            ("POD_NAMESPACE", "istio-demo"),
            ("SERVICE_ACCOUNT", "vm"),
            ("TRUST_DOMAIN", "cluster.local"),
        ]);
        let mut spec = Self::from_env(env, "istio-demo", "vm")
            .discovery("istiod.istio-system.svc:15012")
            .mesh_id(None)
            .hosts("192.168.0.59 istiod.istio-system.svc\n");
        spec.env
            .insert("ISTIO_METAJSON_LABELS".into(), labels_env.into());
        spec.readiness_probe = json!({"httpGet": {"port": 80}});
        spec
    }

    fn from_env(env: BTreeMap<String, String>, ns: &str, sa: &str) -> Self {
        let proxy_metadata = env
            .iter()
            .filter(|(k, _)| METADATA_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let now = now();
        BundleSpec {
            now,
            env,
            discovery_address: None,
            mesh_id: None,
            proxy_metadata,
            hosts: String::new(),
            readiness_probe: json!({"httpGet": {"path": "/ready", "port": 9080}, "periodSeconds": 5}),
            ca_not_before: -86_400,
            ca_not_after: 365 * 86_400,
            ca_is_ca: true,
            claims: json!({
                "aud": ["istio-ca"],
                "exp": now + 3600,
                "iat": now,
                "nbf": now,
                "iss": "https://kubernetes.default.svc.cluster.local",
                "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "0b9d3f1e-7c2a-4c1e-9a55-3a1d2f4b6c7d"}},
                "sub": format!("system:serviceaccount:{ns}:{sa}"),
            }),
            overrides: BTreeMap::new(),
        }
    }

    /// Validity of cert and token is computed from this time (unix seconds).
    pub fn at(mut self, now: i64) -> Self {
        let shift = now - self.now;
        self.now = now;
        for k in ["exp", "iat", "nbf"] {
            if let Some(v) = self.claims.get(k).and_then(Value::as_i64) {
                self.claims[k] = json!(v + shift);
            }
        }
        self
    }

    /// A bundle that stays valid for a century: stable output for snapshots.
    pub fn long_lived(mut self) -> Self {
        self.ca_not_after = 100 * 365 * 86_400;
        self.token_exp_in(100 * 365 * 86_400)
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn remove_env(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.proxy_metadata.insert(key.into(), value.into());
        self
    }

    pub fn discovery(mut self, addr: &str) -> Self {
        self.discovery_address = Some(addr.into());
        self
    }

    pub fn no_discovery(mut self) -> Self {
        self.discovery_address = None;
        self
    }

    pub fn mesh_id(mut self, id: Option<&str>) -> Self {
        self.mesh_id = id.map(str::to_string);
        self
    }

    pub fn hosts(mut self, text: &str) -> Self {
        self.hosts = text.into();
        self
    }

    /// CA validity in seconds relative to `now` (negative: in the past).
    pub fn ca_validity(mut self, not_before: i64, not_after: i64) -> Self {
        self.ca_not_before = not_before;
        self.ca_not_after = not_after;
        self
    }

    /// The root cert without `basicConstraints cA:TRUE`.
    pub fn ca_not_ca(mut self) -> Self {
        self.ca_is_ca = false;
        self
    }

    /// Token `exp` at `now + secs`.
    pub fn token_exp_in(mut self, secs: i64) -> Self {
        self.claims["exp"] = json!(self.now + secs);
        self
    }

    /// Token `nbf` at `now + secs`.
    pub fn token_nbf_in(mut self, secs: i64) -> Self {
        self.claims["nbf"] = json!(self.now + secs);
        self
    }

    /// Set (or with `Value::Null`, remove) one token claim.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        let obj = self.claims.as_object_mut().expect("claims are an object");
        if value.is_null() {
            obj.remove(name);
        } else {
            obj.insert(name.into(), value);
        }
        self
    }

    /// Replace a file with these exact bytes.
    pub fn file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.overrides.insert(name.into(), Some(bytes.into()));
        self
    }

    /// Leave a file out.
    pub fn without(mut self, name: &str) -> Self {
        self.overrides.insert(name.into(), None);
        self
    }

    pub fn cluster_env_text(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.env {
            out.push_str(&format!("{k}={}\n", quote(v)));
        }
        out
    }

    pub fn mesh_text(&self) -> String {
        let mut dc = serde_json::Map::new();
        if let Some(a) = &self.discovery_address {
            dc.insert("discoveryAddress".into(), json!(a));
        }
        if let Some(m) = &self.mesh_id {
            dc.insert("meshId".into(), json!(m));
        }
        dc.insert("proxyMetadata".into(), json!(self.proxy_metadata));
        if !self.readiness_probe.is_null() {
            dc.insert("readinessProbe".into(), self.readiness_probe.clone());
        }
        serde_yaml_ng::to_string(&json!({ "defaultConfig": dc })).expect("yaml")
    }

    pub fn root_cert_pem(&self) -> String {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "cluster.local");
        p.distinguished_name = dn;
        p.is_ca = if self.ca_is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.not_before = OffsetDateTime::from_unix_timestamp(self.now + self.ca_not_before)
            .expect("time in range");
        p.not_after = OffsetDateTime::from_unix_timestamp(self.now + self.ca_not_after)
            .expect("time in range");
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("self-signed").pem()
    }

    pub fn token_text(&self) -> String {
        jwt(&self.claims)
    }

    /// File name -> bytes, as they would be written.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        files.insert(
            CLUSTER_ENV.to_string(),
            self.cluster_env_text().into_bytes(),
        );
        files.insert(MESH.to_string(), self.mesh_text().into_bytes());
        files.insert(ROOT_CERT.to_string(), self.root_cert_pem().into_bytes());
        files.insert(TOKEN.to_string(), self.token_text().into_bytes());
        files.insert(HOSTS.to_string(), self.hosts.clone().into_bytes());
        for (name, v) in &self.overrides {
            match v {
                Some(bytes) => files.insert(name.clone(), bytes.clone()),
                None => files.remove(name),
            };
        }
        files
    }

    /// Write the bundle into `dir` (created if needed); returns `dir`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("bundle dir");
        for (name, bytes) in self.files() {
            std::fs::write(dir.join(name), bytes).expect("bundle file");
        }
        dir.to_path_buf()
    }

    /// The bundle as a `.tar.gz`, its files under `top/` or at the top level.
    pub fn tar_gz(&self, top: Option<&str>) -> Vec<u8> {
        let entries: Vec<RawEntry> = self
            .files()
            .into_iter()
            .map(|(name, data)| {
                let path = match top {
                    Some(t) => format!("{t}/{name}"),
                    None => name,
                };
                RawEntry::file(path.as_bytes(), &data)
            })
            .collect();
        let mut all = Vec::new();
        if let Some(t) = top {
            all.push(RawEntry::dir(format!("{t}/").as_bytes()));
        }
        all.extend(entries);
        raw_tar_gz(&all)
    }

    /// Write `tar_gz(top)` to `path`; returns `path`.
    pub fn write_tar_gz(&self, path: &Path, top: Option<&str>) -> PathBuf {
        std::fs::write(path, self.tar_gz(top)).expect("tar.gz");
        path.to_path_buf()
    }
}

/// `shellescape.Quote` as istioctl writes cluster.env (independent of the
/// product's own implementation on purpose).
pub fn quote(v: &str) -> String {
    if v.is_empty() {
        return "''".into();
    }
    if v.chars().all(|c| "w@%+=:,./-".contains(c)) {
        return v.into();
    }
    format!("'{}'", v.replace('\'', r#"'"'"'"#))
}

/// A compact JWS with these claims and a filler signature.
pub fn jwt(claims: &Value) -> String {
    let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!(
        "{}.{}.{}",
        e(br#"{"alg":"RS256","kid":"bundlegen"}"#),
        e(claims.to_string().as_bytes()),
        e(&[0x5a; 64])
    )
}

/// One tar entry, written byte for byte (names are not sanitised), so tests
/// can build the archives a careful reader must refuse.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// Size to claim in the header (defaults to the data length).
    pub size: Option<u64>,
}

impl RawEntry {
    pub fn file(path: &[u8], data: &[u8]) -> Self {
        RawEntry {
            path: path.to_vec(),
            kind: tar::EntryType::Regular,
            data: data.to_vec(),
            link: None,
            size: None,
        }
    }
    pub fn dir(path: &[u8]) -> Self {
        RawEntry {
            kind: tar::EntryType::Directory,
            ..Self::file(path, b"")
        }
    }
    pub fn link(path: &[u8], kind: tar::EntryType, target: &[u8]) -> Self {
        RawEntry {
            kind,
            link: Some(target.to_vec()),
            ..Self::file(path, b"")
        }
    }
    pub fn special(path: &[u8], kind: tar::EntryType) -> Self {
        RawEntry {
            kind,
            ..Self::file(path, b"")
        }
    }
}

/// An uncompressed tar of these entries (ustar headers; names up to 100 bytes).
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        {
            let name = &mut h.as_old_mut().name;
            assert!(e.path.len() <= name.len(), "name too long for raw_tar");
            name[..e.path.len()].copy_from_slice(&e.path);
        }
        if let Some(l) = &e.link {
            let ln = &mut h.as_old_mut().linkname;
            ln[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(e.kind);
        h.set_mode(if e.kind.is_dir() { 0o755 } else { 0o644 });
        h.set_size(e.size.unwrap_or(e.data.len() as u64));
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

pub fn raw_tar_gz(entries: &[RawEntry]) -> Vec<u8> {
    gzip(&raw_tar(entries))
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
