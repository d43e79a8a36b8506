//! Bundle sources: directory, .tar.gz (flat or one folder), https:// URL with
//! --sha256, and the archives a careful reader must refuse.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::bundlegen::{BundleSpec, RawEntry, TOKEN, raw_tar_gz, sha256_hex};
use common::istio_vm;
use istio_vm::bundle::{self, FILES};
use tar::EntryType;

fn codes(r: Result<bundle::Bundle, Vec<istio_vm::report::Finding>>) -> Vec<String> {
    r.expect_err("should be refused")
        .into_iter()
        .map(|f| f.code)
        .collect()
}

#[test]
fn directory_and_both_tar_layouts_read_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = BundleSpec::valid();
    let dir = spec.write(&tmp.path().join("out"));
    let from_dir = bundle::load(dir.to_str().unwrap(), None).unwrap();
    assert_eq!(from_dir.files.len(), 5);
    for top in [None, Some("out"), Some(".")] {
        let tgz = tmp.path().join("b.tar.gz");
        // Same files, same bytes: only the cert is random per build, so reuse them.
        let entries: Vec<RawEntry> = from_dir
            .files
            .iter()
            .map(|(n, d)| {
                let p = top.map_or(n.clone(), |t| format!("{t}/{n}"));
                RawEntry::file(p.as_bytes(), d)
            })
            .collect();
        std::fs::write(&tgz, raw_tar_gz(&entries)).unwrap();
        let from_tar = bundle::load(tgz.to_str().unwrap(), None).unwrap();
        assert_eq!(from_tar, from_dir, "layout {top:?}");
    }
}

#[test]
fn tar_built_by_generator_and_extra_files_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = BundleSpec::valid();
    let p = spec.write_tar_gz(&tmp.path().join("b.tgz"), Some("vm"));
    let b = bundle::load(p.to_str().unwrap(), None).unwrap();
    assert_eq!(b.files.keys().cloned().collect::<Vec<_>>(), {
        let mut v: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    });
    let extra = raw_tar_gz(&[
        RawEntry::file(b"README", b"x"),
        RawEntry::file(b"cluster.env", b"A=1\n"),
        RawEntry::file(b"deep/er/istio-token", b"ignored"),
    ]);
    std::fs::write(&p, extra).unwrap();
    let b = bundle::load(p.to_str().unwrap(), None).unwrap();
    assert_eq!(b.files.len(), 1);
    assert_eq!(b.file("cluster.env"), Some(&b"A=1\n"[..]));
}

#[test]
fn unsafe_archives_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<RawEntry>)> = vec![
        ("dotdot", vec![RawEntry::file(b"../x", b"evil")]),
        (
            "dotdot-inner",
            vec![RawEntry::file(b"out/../../cluster.env", b"A=1")],
        ),
        (
            "absolute",
            vec![RawEntry::file(b"/etc/cluster.env", b"A=1")],
        ),
        (
            "symlink",
            vec![RawEntry::link(
                b"istio-token",
                EntryType::Symlink,
                b"/etc/shadow",
            )],
        ),
        (
            "hardlink",
            vec![RawEntry::link(
                b"istio-token",
                EntryType::Link,
                b"/etc/shadow",
            )],
        ),
        (
            "chardev",
            vec![RawEntry::special(b"hosts", EntryType::Char)],
        ),
        (
            "blockdev",
            vec![RawEntry::special(b"hosts", EntryType::Block)],
        ),
        ("fifo", vec![RawEntry::special(b"hosts", EntryType::Fifo)]),
    ];
    for (name, entries) in cases {
        let p = tmp.path().join(format!("{name}.tar.gz"));
        std::fs::write(&p, raw_tar_gz(&entries)).unwrap();
        assert_eq!(
            codes(bundle::load(p.to_str().unwrap(), None)),
            ["bundle.unsafe_path"],
            "{name}"
        );
        // Nothing was written next to the archive.
        assert!(!tmp.path().join("x").exists());
    }
}

#[test]
fn size_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![b'a'; 1024 * 1024 + 1];
    let p = tmp.path().join("one.tar.gz");
    std::fs::write(&p, raw_tar_gz(&[RawEntry::file(b"istio-token", &big)])).unwrap();
    assert_eq!(
        codes(bundle::load(p.to_str().unwrap(), None)),
        ["bundle.too_large"]
    );

    // 17 files of 1 MiB: each allowed, together over 16 MiB.
    let mib = vec![b'b'; 1024 * 1024];
    let entries: Vec<RawEntry> = (0..17)
        .map(|i| RawEntry::file(format!("junk{i}").as_bytes(), &mib))
        .collect();
    std::fs::write(&p, raw_tar_gz(&entries)).unwrap();
    assert_eq!(
        codes(bundle::load(p.to_str().unwrap(), None)),
        ["bundle.too_large"]
    );

    // A directory holding a 10 MiB token.
    let dir = BundleSpec::valid()
        .file(TOKEN, vec![b'c'; 10 * 1024 * 1024])
        .write(&tmp.path().join("d"));
    let f = bundle::load(dir.to_str().unwrap(), None).unwrap_err();
    assert_eq!(f[0].code, "bundle.too_large");
    assert_eq!(f[0].file.as_deref(), Some(TOKEN));
}

#[test]
fn checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = BundleSpec::valid();
    let bytes = spec.tar_gz(None);
    let p = tmp.path().join("b.tar.gz");
    std::fs::write(&p, &bytes).unwrap();
    let good = sha256_hex(&bytes);
    assert!(bundle::load(p.to_str().unwrap(), Some(&good)).is_ok());
    assert!(bundle::load(p.to_str().unwrap(), Some(&good.to_uppercase())).is_ok());
    let bad = sha256_hex(b"other");
    assert_eq!(
        codes(bundle::load(p.to_str().unwrap(), Some(&bad))),
        ["bundle.checksum"]
    );

    // For a directory, --sha256 is the bundle digest.
    let dir = spec.write(&tmp.path().join("d"));
    let digest = bundle::load(dir.to_str().unwrap(), None).unwrap().digest();
    assert!(bundle::load(dir.to_str().unwrap(), Some(&digest)).is_ok());
    let f = bundle::load(dir.to_str().unwrap(), Some(&bad)).unwrap_err();
    assert_eq!(f[0].code, "bundle.checksum");
    assert!(f[0].message.contains(&digest), "{}", f[0].message);
}

#[test]
fn not_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("garbage.tar.gz");
    std::fs::write(&p, b"\x00\x01binary garbage").unwrap();
    assert_eq!(
        codes(bundle::load(p.to_str().unwrap(), None)),
        ["bundle.archive"]
    );
    std::fs::write(&p, common::bundlegen::gzip(b"not a tar at all, just text")).unwrap();
    assert_eq!(
        codes(bundle::load(p.to_str().unwrap(), None)),
        ["bundle.archive"]
    );
    let missing = tmp.path().join("nope");
    assert_eq!(
        codes(bundle::load(missing.to_str().unwrap(), None)),
        ["bundle.missing_file"]
    );
}

/// A one-shot HTTPS server on 127.0.0.1 with a certificate from a fresh CA.
/// Returns (url base, CA PEM, join handle). Serves `conns` connections.
fn https_server(
    body: Vec<u8>,
    status: &'static str,
    conns: usize,
) -> (String, String, std::thread::JoinHandle<()>) {
    let (config, ca_pem) = common::tls::loopback_server_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for _ in 0..conns {
            let Ok((tcp, _)) = listener.accept() else {
                return;
            };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => req.push(byte[0]),
                    _ => break,
                }
            }
            if !req.ends_with(b"\r\n\r\n") {
                continue; // handshake refused by the client
            }
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(head.as_bytes());
            let _ = tls.write_all(&body);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ca_pem, handle)
}

#[test]
fn https_url_with_injected_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = BundleSpec::valid().long_lived().tar_gz(Some("out"));
    let sha = sha256_hex(&bytes);
    let (url, ca_pem, server) = https_server(bytes, "200 OK", 3);
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let src = format!("{url}/bundle.tar.gz?sig=secret");

    // Trusted through SSL_CERT_FILE, right digest: valid.
    istio_vm()
        .env("SSL_CERT_FILE", &ca)
        .args(["validate", "--bundle", &src, "--sha256", &sha])
        .assert()
        .code(0);
    // Wrong digest: bundle.checksum, exit 1.
    let out = istio_vm()
        .env("SSL_CERT_FILE", &ca)
        .args([
            "--output",
            "json",
            "validate",
            "--bundle",
            &src,
            "--sha256",
            &"0".repeat(64),
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["findings"][0]["code"], "bundle.checksum");
    assert!(!String::from_utf8_lossy(&out).contains("secret"));
    // Without the CA the server is not trusted.
    let out = istio_vm()
        .env_remove("SSL_CERT_FILE")
        .args([
            "--output", "json", "validate", "--bundle", &src, "--sha256", &sha,
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["findings"][0]["code"], "bundle.fetch");
    server.join().unwrap();
}

#[test]
fn url_usage_errors() {
    // A URL without --sha256, or over plain http, is a usage error: exit 2.
    istio_vm()
        .args(["validate", "--bundle", "https://127.0.0.1:9/b.tar.gz"])
        .assert()
        .code(2);
    istio_vm()
        .args([
            "validate",
            "--bundle",
            "http://127.0.0.1:9/b.tar.gz",
            "--sha256",
            &"a".repeat(64),
        ])
        .assert()
        .code(2);
    istio_vm()
        .args(["validate", "--bundle", ".", "--sha256", "xyz"])
        .assert()
        .code(2);
}

#[test]
fn url_http_error_status() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, ca_pem, server) = https_server(b"nope".to_vec(), "404 Not Found", 1);
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let out = istio_vm()
        .env("SSL_CERT_FILE", &ca)
        .args([
            "--output",
            "json",
            "validate",
            "--bundle",
            &format!("{url}/x.tgz"),
            "--sha256",
            &"a".repeat(64),
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["findings"][0]["code"], "bundle.fetch");
    assert!(
        v["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("404")
    );
    server.join().unwrap();
}

#[test]
fn oversized_archive_and_download() {
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![0u8; 17 * 1024 * 1024];
    let p = tmp.path().join("big.tar.gz");
    std::fs::write(&p, &big).unwrap();
    assert_eq!(
        codes(bundle::load(p.to_str().unwrap(), None)),
        ["bundle.too_large"]
    );

    let (url, ca_pem, server) = https_server(big, "200 OK", 1);
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let out = istio_vm()
        .env("SSL_CERT_FILE", &ca)
        .args([
            "--output",
            "json",
            "validate",
            "--bundle",
            &format!("{url}/big.tgz"),
            "--sha256",
            &"a".repeat(64),
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["findings"][0]["code"], "bundle.too_large");
    server.join().unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// A valid archive with bytes flipped or cut: a finding or a bundle, no panic.
    #[test]
    fn corrupted_archives_never_panic(
        flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
        cut in proptest::option::of(0usize..4096),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = BundleSpec::valid().tar_gz(Some("out"));
        for (at, b) in flips {
            let n = bytes.len();
            bytes[at % n] ^= b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(bytes.len()));
        }
        let p = tmp.path().join("b.tar.gz");
        std::fs::write(&p, &bytes).unwrap();
        let _ = bundle::load(p.to_str().unwrap(), None);
        // Corruption never escapes the temporary directory.
        proptest::prop_assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
