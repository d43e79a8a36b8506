//! Every finding code, each produced by a generated bundle, with exactly the
//! findings expected and nothing else.

mod common;

use std::collections::BTreeSet;

use common::bundlegen::{
    BundleSpec, CLUSTER_ENV, HOSTS, MESH, ROOT_CERT, RawEntry, TOKEN, raw_tar_gz,
};
use istio_vm::bundle;
use istio_vm::report::{Finding, Severity};
use istio_vm::validate::validate;
use serde_json::json;
use time::OffsetDateTime;

const DAY: i64 = 86_400;

/// Every code `validate`/`load` can produce, with its severity.
const ALL_CODES: &[(&str, Severity)] = &[
    ("bundle.missing_file", Severity::Error),
    ("bundle.unsafe_path", Severity::Error),
    ("bundle.too_large", Severity::Error),
    ("bundle.checksum", Severity::Error),
    ("bundle.archive", Severity::Error),
    ("cert.parse", Severity::Error),
    ("cert.expired", Severity::Error),
    ("cert.not_yet_valid", Severity::Error),
    ("cert.not_ca", Severity::Error),
    ("cert.expires_soon", Severity::Warning),
    ("token.format", Severity::Error),
    ("token.expired", Severity::Error),
    ("token.not_yet_valid", Severity::Error),
    ("token.audience", Severity::Error),
    ("token.subject_mismatch", Severity::Error),
    ("token.expires_soon", Severity::Warning),
    ("env.syntax", Severity::Error),
    ("env.missing_key", Severity::Error),
    ("env.unknown_key", Severity::Warning),
    ("env.invalid_value", Severity::Error),
    ("env.ssh_captured", Severity::Warning),
    // ISTIO_INBOUND_PORTS listing 22: install's capture refuses it too.
    ("env.ssh_captured", Severity::Error),
    ("env.shell_unsafe", Severity::Error),
    ("env.unsafe_key", Severity::Error),
    ("env.exec_user", Severity::Error),
    ("token.unsigned", Severity::Error),
    ("cert.no_cert_sign", Severity::Error),
    ("hosts.marker", Severity::Error),
    ("env.agent_port_captured", Severity::Warning),
    ("env.legacy_label", Severity::Warning),
    ("mesh.parse", Severity::Error),
    ("mesh.discovery_address", Severity::Error),
    ("mesh.mismatch", Severity::Warning),
    ("hosts.empty", Severity::Error),
    ("hosts.syntax", Severity::Error),
    ("hosts.discovery_unresolved", Severity::Warning),
    // bundle.fetch (a URL that cannot be fetched) is produced in bundle_source.rs.
];

/// The valid bundle's claims under an `alg: none` header (with a filler
/// signature, so that only the algorithm is wrong).
fn alg_none_token(spec: &BundleSpec) -> String {
    use base64::Engine;
    let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!(
        "{}.{}.{}",
        e(br#"{"alg":"none"}"#),
        e(spec.claims.to_string().as_bytes()),
        e(b"filler")
    )
}

/// A CA certificate whose keyUsage allows only digital signatures.
fn ca_without_cert_sign() -> String {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cluster.local");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + time::Duration::days(365);
    p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
}

enum Src {
    Spec(BundleSpec),
    Tar(Vec<u8>),
    Checksum(BundleSpec),
}

fn findings(src: Src) -> Vec<Finding> {
    let tmp = tempfile::tempdir().unwrap();
    let (path, sha) = match src {
        Src::Spec(s) => (s.write(&tmp.path().join("b")), None),
        Src::Tar(bytes) => {
            let p = tmp.path().join("b.tar.gz");
            std::fs::write(&p, bytes).unwrap();
            (p, None)
        }
        Src::Checksum(s) => (s.write(&tmp.path().join("b")), Some("0".repeat(64))),
    };
    match bundle::load(path.to_str().unwrap(), sha.as_deref()) {
        Ok(b) => validate(&b, OffsetDateTime::now_utc()).findings,
        Err(f) => f,
    }
}

/// Kept together because it is a table: one row per finding, read and
/// extended as a list.
fn cases() -> Vec<(&'static str, Src, Vec<&'static str>)> {
    let v = BundleSpec::valid;
    vec![
        ("valid", Src::Spec(v()), vec![]),
        (
            "missing token",
            Src::Spec(v().without(TOKEN)),
            vec!["bundle.missing_file"],
        ),
        (
            "tar with ..",
            Src::Tar(raw_tar_gz(&[RawEntry::file(b"../cluster.env", b"A=1")])),
            vec!["bundle.unsafe_path"],
        ),
        (
            "tar with a 2 MiB file",
            Src::Tar(raw_tar_gz(&[RawEntry::file(
                b"hosts",
                &vec![b' '; 2 << 20],
            )])),
            vec!["bundle.too_large"],
        ),
        ("wrong digest", Src::Checksum(v()), vec!["bundle.checksum"]),
        (
            "not an archive",
            Src::Tar(b"PK\x03\x04zip?".to_vec()),
            vec!["bundle.archive"],
        ),
        (
            "cert garbage",
            Src::Spec(v().file(ROOT_CERT, "garbage")),
            vec!["cert.parse"],
        ),
        (
            "cert expired",
            Src::Spec(v().ca_validity(-2 * DAY, -DAY)),
            vec!["cert.expired"],
        ),
        (
            "cert from the future",
            Src::Spec(v().ca_validity(DAY, 365 * DAY)),
            vec!["cert.not_yet_valid"],
        ),
        (
            "cert not CA",
            Src::Spec(v().ca_not_ca()),
            vec!["cert.not_ca"],
        ),
        (
            "cert ends in 10 days",
            Src::Spec(v().ca_validity(-DAY, 10 * DAY)),
            vec!["cert.expires_soon"],
        ),
        (
            "token two parts",
            Src::Spec(v().file(TOKEN, "e30.e30")),
            vec!["token.format"],
        ),
        (
            "token expired",
            Src::Spec(v().token_exp_in(-60)),
            vec!["token.expired"],
        ),
        (
            "token from the future",
            Src::Spec(v().token_nbf_in(3600).token_exp_in(7200)),
            vec!["token.not_yet_valid"],
        ),
        (
            "token for the API server",
            Src::Spec(v().claim("aud", json!(["https://kubernetes.default.svc"]))),
            vec!["token.audience"],
        ),
        (
            "legacy secret token",
            Src::Spec(v().claim("aud", json!(null)).claim("exp", json!(null))),
            vec!["token.audience"],
        ),
        (
            "token of another service account",
            Src::Spec(v().claim("sub", json!("system:serviceaccount:vm-apps:default"))),
            vec!["token.subject_mismatch"],
        ),
        (
            "token ends in 5 minutes",
            Src::Spec(v().token_exp_in(300)),
            vec!["token.expires_soon"],
        ),
        (
            "env expands a variable",
            Src::Spec(v().file(CLUSTER_ENV, "ISTIO_NAMESPACE=$NS\n")),
            vec!["env.syntax"],
        ),
        (
            "env without ISTIO_SERVICE_CIDR",
            Src::Spec(v().remove_env("ISTIO_SERVICE_CIDR")),
            vec!["env.missing_key"],
        ),
        (
            "env typo",
            Src::Spec(v().env("ISTIO_INBOUND_PORT", "9080")),
            vec!["env.unknown_key"],
        ),
        (
            "env bad port",
            Src::Spec(v().env("ISTIO_INBOUND_PORTS", "9080,http")),
            vec!["env.invalid_value"],
        ),
        (
            "env bad CIDR",
            Src::Spec(v().env("ISTIO_SERVICE_CIDR", "10.0.0.0/40")),
            vec!["env.invalid_value"],
        ),
        (
            "env labels not JSON",
            Src::Spec(
                v().env("ISTIO_METAJSON_LABELS", "{app: ratings}")
                    .metadata("ISTIO_METAJSON_LABELS", "{app: ratings}"),
            ),
            vec!["env.invalid_value"],
        ),
        (
            "env POD_NAMESPACE differs",
            Src::Spec(
                v().env("POD_NAMESPACE", "other")
                    .metadata("POD_NAMESPACE", "other")
                    .claim("sub", json!("system:serviceaccount:other:ratings-sa")),
            ),
            vec!["env.invalid_value"],
        ),
        (
            "env CLEANUP_ONLY",
            Src::Spec(v().env("CLEANUP_ONLY", "true")),
            vec!["env.invalid_value"],
        ),
        (
            "inbound * without 22",
            Src::Spec(
                v().env("ISTIO_INBOUND_PORTS", "*")
                    .env("ISTIO_LOCAL_EXCLUDE_PORTS", "15090,15021,15020"),
            ),
            vec!["env.ssh_captured"],
        ),
        (
            "inbound lists 22",
            Src::Spec(v().env("ISTIO_INBOUND_PORTS", "9080,22")),
            vec!["env.ssh_captured"],
        ),
        (
            "POD_NAME runs a command",
            Src::Spec(v().env("POD_NAME", "vm1;touch /tmp/x;")),
            vec!["env.shell_unsafe"],
        ),
        (
            "ISTIO_AGENT_FLAGS substitutes a command",
            Src::Spec(v().env("ISTIO_AGENT_FLAGS", "--x=$(id)")),
            vec!["env.shell_unsafe"],
        ),
        (
            "ISTIO_SERVICE adds a proxy config key",
            Src::Spec(v().env("ISTIO_SERVICE", "ratings\ndiscoveryAddress: evil:15012")),
            vec!["env.invalid_value"],
        ),
        (
            "LD_PRELOAD",
            Src::Spec(v().env("LD_PRELOAD", "/tmp/evil.so")),
            vec!["env.unsafe_key"],
        ),
        (
            "EXEC_USER root",
            Src::Spec(v().env("EXEC_USER", "root")),
            vec!["env.exec_user"],
        ),
        (
            "token alg none",
            Src::Spec(v().file(TOKEN, alg_none_token(&v()))),
            vec!["token.unsigned"],
        ),
        (
            "CA without keyCertSign",
            Src::Spec(v().file(ROOT_CERT, ca_without_cert_sign())),
            vec!["cert.no_cert_sign"],
        ),
        (
            "hosts with our END marker",
            Src::Spec(v().hosts(
                "203.0.113.10 istiod.istio-system.svc
# END istio-vm
",
            )),
            vec!["hosts.marker"],
        ),
        (
            "hosts with a BEGIN marker in another case",
            Src::Spec(v().hosts(
                "#  begin  ISTIO-VM
203.0.113.10 istiod.istio-system.svc
",
            )),
            vec!["hosts.marker"],
        ),
        (
            "inbound * without 15020 (1.10)",
            Src::Spec(
                v().env("ISTIO_INBOUND_PORTS", "*")
                    .env("ISTIO_LOCAL_EXCLUDE_PORTS", "22,15090,15021"),
            ),
            vec!["env.agent_port_captured"],
        ),
        (
            "canonical-version label (1.10)",
            Src::Spec(
                v().env(
                    "ISTIO_METAJSON_LABELS",
                    r#"{"service.istio.io/canonical-version":"v1"}"#,
                )
                .metadata(
                    "ISTIO_METAJSON_LABELS",
                    r#"{"service.istio.io/canonical-version":"v1"}"#,
                ),
            ),
            vec!["env.legacy_label"],
        ),
        (
            "mesh broken",
            Src::Spec(v().file(MESH, "defaultConfig: [\n")),
            vec!["mesh.parse"],
        ),
        (
            "mesh address without port",
            Src::Spec(v().discovery("istiod-rev-1.istio-system.svc.cluster.local")),
            vec!["mesh.discovery_address", "hosts.discovery_unresolved"],
        ),
        (
            "cluster.env edited, mesh.yaml not",
            Src::Spec(v().env("CANONICAL_REVISION", "v2")),
            vec!["mesh.mismatch"],
        ),
        (
            "CA_ADDR elsewhere",
            Src::Spec(
                v().env("CA_ADDR", "istiod-rev-1.istio-system.svc:15012")
                    .hosts("203.0.113.10 istiod.istio-system.svc istiod-rev-1.istio-system.svc\n"),
            ),
            vec!["mesh.mismatch"],
        ),
        ("hosts empty", Src::Spec(v().hosts("")), vec!["hosts.empty"]),
        (
            "hosts with an ELB name (1.10)",
            Src::Spec(v().hosts("a1b2.elb.amazonaws.com istiod.istio-system.svc\n")),
            vec!["hosts.syntax"],
        ),
        (
            "hosts for another istiod",
            Src::Spec(v().hosts("203.0.113.10 istiod-canary.istio-system.svc\n")),
            vec!["hosts.discovery_unresolved"],
        ),
        (
            "discovery by IP needs no hosts entry",
            Src::Spec(
                v().discovery("203.0.113.10:15012")
                    .hosts("# nothing to map\n203.0.113.10 x\n"),
            ),
            vec![],
        ),
    ]
}

#[test]
fn each_case_gives_exactly_its_findings() {
    let mut produced = BTreeSet::new();
    for (name, src, want) in cases() {
        let got = findings(src);
        let codes: Vec<&str> = got.iter().map(|f| f.code.as_str()).collect();
        let mut uniq: Vec<&str> = codes.clone();
        uniq.dedup();
        assert_eq!(uniq, want, "{name}: {got:#?}");
        for f in &got {
            assert!(
                ALL_CODES.iter().any(|(c, _)| *c == f.code),
                "{name}: undocumented code {}",
                f.code
            );
            assert!(
                ALL_CODES
                    .iter()
                    .any(|(c, sev)| *c == f.code && *sev == f.severity),
                "{name}: severity {:?} of {}",
                f.severity,
                f.code
            );
            assert!(!f.hint.is_empty() && !f.message.is_empty(), "{name}: {f:?}");
            produced.insert((f.code.clone(), f.severity));
        }
    }
    for (code, sev) in ALL_CODES {
        assert!(
            produced.contains(&(code.to_string(), *sev)),
            "no test produces {code} as {sev:?}"
        );
    }
}

#[test]
fn findings_name_the_file() {
    for (name, src, want) in cases() {
        for f in findings(src) {
            let prefix = f.code.split('.').next().unwrap();
            let expected = match prefix {
                "cert" => Some(ROOT_CERT),
                "token" => Some(TOKEN),
                "env" => Some(CLUSTER_ENV),
                "hosts" => Some(HOSTS),
                "mesh" => Some(MESH),
                _ => continue,
            };
            assert_eq!(f.file.as_deref(), expected, "{name} {want:?}");
        }
    }
}

#[test]
fn hints_say_what_to_do() {
    let f = findings(Src::Spec(BundleSpec::valid().token_exp_in(-60)));
    assert!(f[0].hint.contains("--tokenDuration"), "{}", f[0].hint);
    assert!(
        f[0].message.starts_with("token expired at 20"),
        "{}",
        f[0].message
    );
    let f = findings(Src::Spec(BundleSpec::valid().env("SERVICE_ACOUNT", "x")));
    assert!(
        f[0].hint.contains("did you mean SERVICE_ACCOUNT?"),
        "{}",
        f[0].hint
    );
    assert!(f[0].message.contains("line "), "{}", f[0].message);
    let f = findings(Src::Spec(
        BundleSpec::valid().env("ISTIO_INBOUND_EXCLUDE_PORTS", "22"),
    ));
    assert!(
        f[0].hint.contains("ISTIO_LOCAL_EXCLUDE_PORTS"),
        "{}",
        f[0].hint
    );
    let f = findings(Src::Spec(
        BundleSpec::valid().file(CLUSTER_ENV, "A=1\nB='x\n"),
    ));
    assert_eq!(f[0].message, "line 2: single quote is never closed");
}

#[test]
fn extreme_token_times() {
    for (exp, want) in [
        (json!(i64::MIN), vec!["token.expired"]),
        (json!(i64::MAX), vec![]),
        (json!(-1e300), vec!["token.expired"]),
        (json!(1e300), vec![]),
    ] {
        let f = findings(Src::Spec(
            BundleSpec::valid()
                .claim("exp", exp.clone())
                .claim("nbf", exp.clone()),
        ));
        let mut codes: Vec<&str> = f.iter().map(|f| f.code.as_str()).collect();
        codes.retain(|c| *c != "token.not_yet_valid");
        assert_eq!(codes, want, "exp {exp}");
    }
}

#[test]
fn free_form_and_mesh_keys_are_not_unknown() {
    let spec = BundleSpec::valid()
        .env("ISTIO_META_MY_THING", "x")
        .env("ISTIO_METAJSON_EXTRA", "{}")
        .env("CA_HEADER_X_TENANT", "a")
        .env("XDS_HEADER_X_TENANT", "a")
        // Custom proxyMetadata istioctl copied from the mesh config.
        .env("CLUSTER_MESH_CONFIG_VALUE", "foo")
        .metadata("CLUSTER_MESH_CONFIG_VALUE", "foo");
    assert_eq!(findings(Src::Spec(spec)), vec![]);
}

#[test]
fn validate_is_pure_in_time() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = BundleSpec::valid();
    let b = bundle::load(spec.write(tmp.path()).to_str().unwrap(), None).unwrap();
    let at = |t: i64| {
        validate(&b, OffsetDateTime::from_unix_timestamp(t).unwrap())
            .findings
            .into_iter()
            .map(|f| f.code)
            .collect::<Vec<_>>()
    };
    assert_eq!(at(spec.now), Vec::<String>::new());
    // A minute of clock skew is tolerated: the token was just issued.
    assert_eq!(at(spec.now - 60), Vec::<String>::new());
    assert_eq!(at(spec.now - 61), ["token.not_yet_valid"]);
    assert_eq!(at(spec.now + 3600 - 60), ["token.expires_soon"]);
    assert_eq!(at(spec.now + 3600), ["token.expired"]);
    assert_eq!(
        at(spec.now - 2 * DAY),
        ["cert.not_yet_valid", "token.not_yet_valid"]
    );
    assert_eq!(at(spec.now + 400 * DAY), ["cert.expired", "token.expired"]);
    let v = validate(&b, OffsetDateTime::from_unix_timestamp(spec.now).unwrap());
    let p = v.parsed.expect("all files parse");
    assert_eq!(p.cluster_env.get("SERVICE_ACCOUNT"), Some("ratings-sa"));
    assert_eq!(p.hosts.len(), 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever bytes each file holds, validation returns findings, never panics.
    #[test]
    fn arbitrary_files_never_panic(
        files in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), 5),
        keep in proptest::collection::vec(proptest::bool::ANY, 5),
    ) {
        let mut b = bundle::Bundle::default();
        let mut missing = Vec::new();
        for ((name, bytes), keep) in bundle::FILES.iter().zip(files).zip(keep) {
            if keep {
                b.files.insert(name.to_string(), bytes);
            } else {
                missing.push(*name);
            }
        }
        let v = validate(&b, OffsetDateTime::now_utc());
        // Files that did not parse always come with an error finding.
        proptest::prop_assert!(v.parsed.is_some() || v.has_errors());
        for name in missing {
            proptest::prop_assert!(v
                .findings
                .iter()
                .any(|f| f.code == "bundle.missing_file" && f.file.as_deref() == Some(name)));
        }
    }

    /// Valid files with one line of cluster.env replaced by arbitrary text.
    #[test]
    fn arbitrary_env_lines_never_panic(line in "\\PC{0,60}") {
        let spec = BundleSpec::valid();
        let mut b = bundle::Bundle { files: spec.files() };
        let mut env = b.files[CLUSTER_ENV].clone();
        env.extend_from_slice(line.as_bytes());
        b.files.insert(CLUSTER_ENV.to_string(), env);
        let v = validate(&b, OffsetDateTime::now_utc());
        proptest::prop_assert!(
            v.parsed.is_some() || v.findings.iter().any(|f| f.code == "env.syntax")
        );
    }
}
