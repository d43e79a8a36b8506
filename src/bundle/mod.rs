//! Reading istioctl's output: where it comes from (directory, .tar.gz, URL)
//! and what each file says. Pure parsing; `source` is the only reader.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub mod cluster_env;
pub mod hosts;
pub mod mesh_config;
pub mod root_cert;
pub mod source;
pub mod token;

pub use cluster_env::ClusterEnv;
pub use mesh_config::MeshConfig;
pub use source::load;
pub use token::Claims;

pub const CLUSTER_ENV: &str = "cluster.env";
pub const MESH: &str = "mesh.yaml";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const TOKEN: &str = "istio-token";
pub const HOSTS: &str = "hosts";

/// The five files `istioctl x workload entry configure` writes.
pub const FILES: [&str; 5] = [CLUSTER_ENV, MESH, ROOT_CERT, TOKEN, HOSTS];

/// Raw bytes of each bundle file that was found, keyed by file name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Names and sizes only: the token is a credential and must not reach a log
/// or a panic message through `{:?}`.
impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (name, bytes) in &self.files {
            m.entry(name, &format_args!("{} bytes", bytes.len()));
        }
        m.finish()
    }
}

impl Bundle {
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// Stable digest of the bundle's content (names and bytes), recorded in
    /// state.json so a re-run can tell the bundle changed.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (name, bytes) in &self.files {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        format!("{:x}", h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_contents() {
        let mut b = Bundle::default();
        b.files.insert(TOKEN.into(), b"eyJsecret".to_vec());
        let d = format!("{b:?}");
        assert_eq!(d, r#"{"istio-token": 9 bytes}"#);
    }

    #[test]
    fn file_returns_the_named_files_bytes() {
        let mut b = Bundle::default();
        b.files.insert(HOSTS.into(), b"10.0.0.1 istiod\n".to_vec());
        assert_eq!(b.file(HOSTS), Some(&b"10.0.0.1 istiod\n"[..]));
        assert_eq!(b.file(TOKEN), None);
    }

    #[test]
    fn digest_depends_on_names_and_bytes() {
        let mut a = Bundle::default();
        a.files.insert("ab".into(), b"c".to_vec());
        let mut b = Bundle::default();
        b.files.insert("a".into(), b"bc".to_vec());
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.clone().digest());
        assert_eq!(a.digest().len(), 64);
    }
}
