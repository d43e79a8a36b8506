//! Signed package repositories for the tests: a throwaway OpenPGP key,
//! scripts/build-repo.sh run with it, and a static file server (HTTP, or
//! HTTPS with a test CA) inside a network namespace of the test's LAN.
//!
//! Use it as `#[path = "common/repo.rs"] mod repo;` beside `fleet`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::e2e;

/// A GnuPG home of its own with one fresh signing key (no passphrase, one
/// day of validity), removed on drop.
pub struct SigningKey {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
}

impl SigningKey {
    pub fn new(name: &str) -> SigningKey {
        for (tool, pkg) in [("gpg", "gnupg"), ("gpgv", "gpgv")] {
            assert!(
                Command::new(tool)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok(),
                "`{tool}` is missing (apt-get install -y {pkg}; scripts/install-test-deps.sh)"
            );
        }
        // gpg-agent's socket path must stay short: /tmp, not the target dir.
        let home = tempfile::Builder::new()
            .prefix("ivm-gpg-")
            .tempdir_in("/tmp")
            .expect("GnuPG home");
        use std::os::unix::fs::PermissionsExt;
        // gpg warns about a home others can read.
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        gpg_in(
            home.path(),
            &[
                "--passphrase",
                "",
                "--quick-gen-key",
                &format!("{name} <{name}@example.invalid>"),
                "rsa3072",
                "sign",
                "1d",
            ],
        );
        let listed = String::from_utf8_lossy(
            &gpg_in(home.path(), &["--with-colons", "--list-secret-keys"]).stdout,
        )
        .into_owned();
        let fingerprint = listed
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').nth(8))
            .unwrap_or_else(|| panic!("no fingerprint in:\n{listed}"))
            .to_string();
        SigningKey { home, fingerprint }
    }

    #[track_caller]
    pub fn gpg(&self, args: &[&str]) -> Output {
        gpg_in(self.home.path(), args)
    }

    /// scripts/build-repo.sh DIST OUT signed with this key; panics unless it
    /// succeeds; returns its messages (stderr).
    #[track_caller]
    pub fn build_repo(&self, dist: &Path, out: &Path) -> String {
        let started = Instant::now();
        let o = self.try_build_repo(dist, out);
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            o.status.success(),
            "scripts/build-repo.sh failed ({}):\n{log}",
            o.status
        );
        eprintln!("build-repo: {} in {:.1?}", out.display(), started.elapsed());
        log
    }

    pub fn try_build_repo(&self, dist: &Path, out: &Path) -> Output {
        Command::new(e2e::repo().join("scripts/build-repo.sh"))
            .arg(dist)
            .arg(out)
            .env("GNUPGHOME", self.home.path())
            .env_remove("ISTIO_VM_SIGNING_KEY")
            .stdin(Stdio::null())
            .output()
            .expect("running scripts/build-repo.sh")
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        // The agent gpg started for this home ends with it.
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.home.path())
            .status();
    }
}

#[track_caller]
fn gpg_in(home: &Path, args: &[&str]) -> Output {
    let out = Command::new("gpg")
        .args(["--batch", "--no-tty", "--pinentry-mode", "loopback"])
        .args(args)
        .env("GNUPGHOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("running gpg");
    assert!(
        out.status.success(),
        "gpg {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A static file server (Python's http.server) for `dir`, in network
/// namespace `netns`, at `addr:port`; over TLS when `tls` names a PEM file
/// with the certificate chain and key. Killed (by pid) on drop.
pub struct StaticServer {
    child: Child,
    pub base: String,
}

const SERVER: &str = r#"
import functools, http.server, ssl, sys
addr, port, root, cert = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer((addr, port), handler)
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

impl StaticServer {
    pub fn start(netns: &str, addr: &str, port: u16, dir: &Path, tls: Option<&Path>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        // `ip netns exec` execs the program: the child's pid is the server's.
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "/usr/bin/python3", "-c", SERVER])
            .arg(addr)
            .arg(port.to_string())
            .arg(dir)
            .arg(tls.map(|p| p.as_os_str()).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the static file server");
        let mut server = StaticServer {
            child,
            base: format!("{scheme}://{addr}:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let up = Command::new("ip")
                .args(["netns", "exec", netns, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if up {
                break;
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("the static file server exited ({st})");
            }
            assert!(
                Instant::now() < deadline,
                "the static file server is not listening on {addr}:{port} after 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate for `ip` signed by it: (CA PEM,
/// server chain + key PEM).
pub fn test_ca(ip: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![ip.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (
        ca_cert.pem(),
        format!("{}{}", leaf.pem(), leaf_key.serialize_pem()),
    )
}

/// Flips one byte in the middle of `path` (same size, other digest).
pub fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Every file under `dir` (relative path, sorted).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                v.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    v.sort();
    v
}
