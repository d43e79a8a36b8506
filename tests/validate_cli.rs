//! `istio-vm validate` as a user runs it: exit codes, text and JSON output,
//! the seed's Istio 1.10 bundle, the shipped example, and 40+ malformed inputs
//! that must each give a clean finding and never a panic.

mod common;

use std::path::Path;

use common::bundlegen::{
    BundleSpec, CLUSTER_ENV, HOSTS, MESH, ROOT_CERT, RawEntry, TOKEN, gzip, jwt, raw_tar,
    raw_tar_gz,
};
use common::{example_bundle, istio_vm};
use serde_json::{Value, json};

/// Run `validate --output json`; returns (exit code, JSON, stderr).
fn validate_json(src: &Path, extra: &[&str]) -> (i32, Value, String) {
    let out = istio_vm()
        .args(["--output", "json", "validate", "--bundle"])
        .arg(src)
        .args(extra)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}); stderr: {stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

fn codes(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn example_bundle_is_clean() {
    let (code, v, _) = validate_json(example_bundle(), &[]);
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["command"], "validate");
    assert_eq!(v["findings"], json!([]));
    istio_vm()
        .args(["validate", "--strict", "--bundle"])
        .arg(example_bundle())
        .assert()
        .code(0)
        .stdout("validate: ok\n");
}

#[test]
fn seed_istio_1_10_bundle_validates_with_warnings_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = BundleSpec::istio_1_10_seed().write(&tmp.path().join("vm"));
    let (code, v, _) = validate_json(&dir, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    let mut got = codes(&v);
    got.sort();
    assert_eq!(
        got,
        [
            // 1.10 left 15020 out and istio-iptables of that time kept 22 out itself.
            "env.agent_port_captured",
            "env.legacy_label",
            "env.ssh_captured",
            // The seed adds `class: vm` to the labels in cluster.env only.
            "mesh.mismatch",
        ]
    );
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] == "warning")
    );
    // --strict turns warnings into a failure.
    let (code, v, _) = validate_json(&dir, &["--strict"]);
    assert_eq!((code, &v["ok"]), (1, &json!(false)));
    // Also as the seed ships it: a .tar.gz with the files under one folder.
    let tgz = BundleSpec::istio_1_10_seed().write_tar_gz(&tmp.path().join("vm.tgz"), Some("vm"));
    assert_eq!(validate_json(&tgz, &[]).0, 0);
}

#[test]
fn errors_exit_1_and_token_never_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = BundleSpec::valid().token_exp_in(-60);
    let token = spec.token_text();
    let dir = spec.write(tmp.path());
    for output in ["text", "json"] {
        let out = istio_vm()
            .args(["--output", output, "-vvv", "validate", "--bundle"])
            .arg(&dir)
            .assert()
            .code(1)
            .get_output()
            .clone();
        let all = [out.stdout, out.stderr].concat();
        let all = String::from_utf8_lossy(&all);
        assert!(all.contains("token.expired"), "{all}");
        for part in token.split('.') {
            assert!(!all.contains(part), "token part leaked in {output} output");
        }
    }
}

#[test]
fn text_is_one_line_per_finding_plus_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = BundleSpec::valid()
        .env("ISTIO_INBOUND_PORT", "9080")
        .hosts("")
        .write(tmp.path());
    let out = istio_vm()
        .args(["--output", "text", "validate", "--bundle"])
        .arg(&dir)
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let findings: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(findings.len(), 3, "{text}");
    assert!(findings[0].starts_with("warning[env.unknown_key]: cluster.env: line "));
    assert!(findings[1].starts_with("error[hosts.empty]: hosts: "));
    assert_eq!(findings[2], "validate: not ok, 1 error(s), 1 warning(s)");
}

#[test]
fn usage_errors_exit_2() {
    istio_vm().args(["validate"]).assert().code(2);
    istio_vm()
        .args(["validate", "--bundle", "x", "--bogus"])
        .assert()
        .code(2);
    istio_vm()
        .args(["validate", "--bundle", "https://127.0.0.1:9/x.tgz"])
        .assert()
        .code(2)
        .stdout(predicates::str::contains("--sha256 is required"));
}

#[test]
fn help_fits_80_columns() {
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["install", "--help"],
        vec!["verify", "--help"],
        vec!["capture", "--help"],
        vec!["uninstall", "--help"],
        vec!["-h"],
    ] {
        let out = istio_vm()
            .env("COLUMNS", "200")
            .args(&args)
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Usage:"), "{args:?}");
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{args:?}: {line:?} is {} wide",
                line.len()
            );
        }
    }
}

/// What a malformed bundle looks like on disk.
enum Bad {
    File(&'static str, Vec<u8>),
    Spec(BundleSpec),
    Tar(Vec<u8>),
    Setup(fn(&Path)),
}

fn deep_yaml() -> Vec<u8> {
    let mut s = String::new();
    for i in 0..200 {
        s.push_str(&" ".repeat(i));
        s.push_str("a:\n");
    }
    s.into_bytes()
}

fn yaml_bomb() -> Vec<u8> {
    let mut s = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, next) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let refs = vec![format!("*{prev}"); 9].join(",");
        s.push_str(&format!("{next}: &{next} [{refs}]\n"));
    }
    s.into_bytes()
}

fn malformed() -> Vec<(&'static str, Bad, &'static str)> {
    let cert = BundleSpec::valid().root_cert_pem();
    let truncated_pem = cert.as_bytes()[..cert.len() / 2].to_vec();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let ten_mib = vec![b'A'; 10 * 1024 * 1024];
    let token_payload = |p: Value| jwt(&p).into_bytes();
    vec![
        ("truncated PEM", Bad::File(ROOT_CERT, truncated_pem), "cert.parse"),
        ("cert binary garbage", Bad::File(ROOT_CERT, garbage.clone()), "cert.parse"),
        ("cert empty", Bad::File(ROOT_CERT, vec![]), "cert.parse"),
        (
            "private key instead of cert",
            Bad::File(
                ROOT_CERT,
                b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n".to_vec(),
            ),
            "cert.parse",
        ),
        (
            "cert not base64",
            Bad::File(ROOT_CERT, b"-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n".to_vec()),
            "cert.parse",
        ),
        ("10 MiB cert", Bad::File(ROOT_CERT, ten_mib.clone()), "bundle.too_large"),
        ("token with 2 segments", Bad::File(TOKEN, b"eyJhbGciOiJSUzI1NiJ9.e30".to_vec()), "token.format"),
        ("token with 4 segments", Bad::File(TOKEN, b"a.b.c.d".to_vec()), "token.format"),
        ("token binary garbage", Bad::File(TOKEN, garbage.clone()), "token.format"),
        ("token empty", Bad::File(TOKEN, vec![]), "token.format"),
        ("token payload not JSON", Bad::File(TOKEN, b"eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".to_vec()), "token.format"),
        ("token payload an array", Bad::File(TOKEN, token_payload(json!([1, 2]))), "token.format"),
        ("token exp a string", Bad::File(TOKEN, token_payload(json!({"exp": "tomorrow"}))), "token.format"),
        ("10 MiB token", Bad::File(TOKEN, ten_mib.clone()), "bundle.too_large"),
        ("non-UTF-8 cluster.env", Bad::File(CLUSTER_ENV, b"ISTIO_NAMESPACE='caf\xe9'\n".to_vec()), "env.syntax"),
        ("cluster.env unterminated quote", Bad::File(CLUSTER_ENV, b"A='x\n".to_vec()), "env.syntax"),
        ("cluster.env command substitution", Bad::File(CLUSTER_ENV, b"A=$(id)\n".to_vec()), "env.syntax"),
        ("cluster.env CRLF", Bad::File(CLUSTER_ENV, b"A='1'\r\nB='2'\r\n".to_vec()), "env.syntax"),
        ("cluster.env binary garbage", Bad::File(CLUSTER_ENV, garbage.clone()), "env.syntax"),
        ("cluster.env runs a command", Bad::File(CLUSTER_ENV, b"A=1 rm -rf /\n".to_vec()), "env.syntax"),
        ("cluster.env empty", Bad::File(CLUSTER_ENV, vec![]), "env.missing_key"),
        ("10 MiB cluster.env", Bad::File(CLUSTER_ENV, ten_mib.clone()), "bundle.too_large"),
        ("YAML bomb", Bad::File(MESH, yaml_bomb()), "mesh.parse"),
        ("YAML deep nesting (block)", Bad::File(MESH, deep_yaml()), "mesh.parse"),
        (
            "YAML deep nesting (flow)",
            Bad::File(MESH, ("[".repeat(100_000) + &"]".repeat(100_000)).into_bytes()),
            "mesh.parse",
        ),
        ("mesh binary garbage", Bad::File(MESH, garbage.clone()), "mesh.parse"),
        ("mesh a list", Bad::File(MESH, b"- defaultConfig\n".to_vec()), "mesh.parse"),
        ("mesh tab indent", Bad::File(MESH, b"defaultConfig:\n\tmeshId: x\n".to_vec()), "mesh.parse"),
        ("mesh empty", Bad::File(MESH, vec![]), "mesh.parse"),
        ("mesh 300 KiB", Bad::File(MESH, "# pad\n".repeat(50_000).into_bytes()), "mesh.parse"),
        ("10 MiB mesh", Bad::File(MESH, ten_mib.clone()), "bundle.too_large"),
        ("hosts non-UTF-8", Bad::File(HOSTS, b"203.0.113.10 istiod\xff\n".to_vec()), "hosts.syntax"),
        ("hosts with a DNS name", Bad::File(HOSTS, b"lb.example.com istiod.istio-system.svc\n".to_vec()), "hosts.syntax"),
        ("hosts IP only", Bad::File(HOSTS, b"203.0.113.10\n".to_vec()), "hosts.syntax"),
        ("hosts binary garbage", Bad::File(HOSTS, garbage.clone()), "hosts.syntax"),
        ("hosts empty", Bad::File(HOSTS, vec![]), "hosts.empty"),
        ("labels not JSON", Bad::Spec(BundleSpec::valid().env("ISTIO_METAJSON_LABELS", "{").metadata("ISTIO_METAJSON_LABELS", "{")), "env.invalid_value"),
        ("ports not numbers", Bad::Spec(BundleSpec::valid().env("ISTIO_LOCAL_EXCLUDE_PORTS", "ssh")), "env.invalid_value"),
        ("discovery address no port", Bad::Spec(BundleSpec::valid().discovery("istiod.istio-system.svc")), "mesh.discovery_address"),
        ("tar with ../x", Bad::Tar(raw_tar_gz(&[RawEntry::file(b"../x", b"x")])), "bundle.unsafe_path"),
        (
            "tar with a symlink",
            Bad::Tar(raw_tar_gz(&[RawEntry::link(b"out/istio-token", tar::EntryType::Symlink, b"/etc/shadow")])),
            "bundle.unsafe_path",
        ),
        ("tar with an absolute path", Bad::Tar(raw_tar_gz(&[RawEntry::file(b"/tmp/hosts", b"x")])), "bundle.unsafe_path"),
        ("tar with a device", Bad::Tar(raw_tar_gz(&[RawEntry::special(b"hosts", tar::EntryType::Char)])), "bundle.unsafe_path"),
        ("tar.gz truncated", Bad::Tar(BundleSpec::valid().tar_gz(None)[..300].to_vec()), "bundle.archive"),
        ("garbage as tar.gz", Bad::Tar(garbage.clone()), "bundle.archive"),
        ("gzip of garbage", Bad::Tar(gzip(&garbage)), "bundle.archive"),
        (
            "tar entry lies about its size",
            Bad::Tar(gzip(&raw_tar(&[RawEntry { size: Some(1 << 40), ..RawEntry::file(b"hosts", b"x") }]))),
            "bundle.too_large",
        ),
        ("empty directory", Bad::Setup(|_| {}), "bundle.missing_file"),
        (
            "cluster.env is a FIFO",
            Bad::Setup(|d| {
                BundleSpec::valid().without(CLUSTER_ENV).write(d);
                nix::unistd::mkfifo(&d.join(CLUSTER_ENV), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            }),
            "bundle.unsafe_path",
        ),
        (
            "token is a symlink in a directory",
            Bad::Setup(|d| {
                BundleSpec::valid().without(TOKEN).write(d);
                std::os::unix::fs::symlink("/etc/hostname", d.join(TOKEN)).unwrap();
            }),
            "bundle.unsafe_path",
        ),
        (
            "hosts is a directory",
            Bad::Setup(|d| {
                BundleSpec::valid().without(HOSTS).write(d);
                std::fs::create_dir(d.join(HOSTS)).unwrap();
            }),
            "bundle.unsafe_path",
        ),
    ]
}

#[test]
fn malformed_inputs_give_clean_findings() {
    let cases = malformed();
    assert!(cases.len() >= 30);
    for (name, bad, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let src = match bad {
            Bad::File(file, bytes) => BundleSpec::valid()
                .file(file, bytes)
                .write(&tmp.path().join("b")),
            Bad::Spec(spec) => spec.write(&tmp.path().join("b")),
            Bad::Tar(bytes) => {
                let p = tmp.path().join("b.tar.gz");
                std::fs::write(&p, bytes).unwrap();
                p
            }
            Bad::Setup(f) => {
                let d = tmp.path().join("b");
                std::fs::create_dir(&d).unwrap();
                f(&d);
                d
            }
        };
        let (code, v, stderr) = validate_json(&src, &[]);
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert_eq!(code, 1, "{name}: {v:#}");
        assert_eq!(v["ok"], false, "{name}");
        let got = codes(&v);
        assert!(
            got.iter().any(|c| c == want),
            "{name}: want {want}, got {got:?}"
        );
        for f in v["findings"].as_array().unwrap() {
            assert!(!f["hint"].as_str().unwrap().is_empty(), "{name}: {f}");
        }
    }
}

#[test]
fn snapshot_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    // Time-independent findings only, so the snapshot is stable.
    let dir = BundleSpec::valid()
        .long_lived()
        .env("ISTIO_INBOUND_PORTS", "*")
        .env("ISTIO_LOCAL_EXCLUDE_PORTS", "15090,15021")
        .env("ISTIO_SERVICE_CIDR", "10.0.0.0/8,bogus")
        .env("SERVICE_ACOUNT", "ratings-sa")
        .hosts("203.0.113.10 istiod-canary.istio-system.svc\n")
        .write(tmp.path());
    let run = |fmt: &str| {
        let out = istio_vm()
            .args(["--output", fmt, "validate", "--bundle"])
            .arg(&dir)
            .assert()
            .code(1)
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap()
    };
    insta::assert_snapshot!("validate_text", run("text"));
    insta::assert_snapshot!("validate_json", run("json"));
}

#[test]
fn validate_and_install_agree_on_ssh_capture() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = BundleSpec::valid()
        .env("ISTIO_INBOUND_PORTS", "22,9080")
        .write(&tmp.path().join("b"));
    let error_finding = |v: &serde_json::Value| {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "env.ssh_captured" && f["severity"] == "error")
    };
    let (code, v, _) = validate_json(&dir, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert!(error_finding(&v), "{v:#}");
    let root = tempfile::tempdir().unwrap();
    let out = istio_vm()
        .args(["--output", "json", "--root"])
        .arg(root.path())
        .args(["install", "--no-start", "--bundle"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(error_finding(&v), "install: {v:#}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    // Allowed by the config: a warning for both.
    let cfg = tmp.path().join("config.toml");
    std::fs::write(&cfg, "allow_ssh_capture = true\n").unwrap();
    let out = istio_vm()
        .args(["--output", "json", "--config"])
        .arg(&cfg)
        .args(["validate", "--bundle"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["severity"], "warning", "{v:#}");
}
