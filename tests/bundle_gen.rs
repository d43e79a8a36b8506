//! The test bundle generator produces what the parsers read back.

mod common;

use common::bundlegen::{BundleSpec, HOSTS, MESH, ROOT_CERT, TOKEN};
use istio_vm::bundle::{ClusterEnv, hosts, mesh_config::MeshConfig, root_cert, token::Claims};

#[test]
fn generated_bundle_parses() {
    let dir = tempfile::tempdir().unwrap();
    let spec = BundleSpec::valid();
    spec.write(dir.path());
    let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
    let env = ClusterEnv::parse(&read("cluster.env")).unwrap();
    assert_eq!(env.to_map(), spec.env);
    let mesh = MeshConfig::parse(&read(MESH)).unwrap();
    assert_eq!(mesh.proxy_metadata["POD_NAMESPACE"], "vm-apps");
    assert_eq!(
        mesh.discovery_address.as_deref(),
        Some("istiod.istio-system.svc:15012")
    );
    let certs = root_cert::parse(&read(ROOT_CERT)).unwrap();
    assert!(certs[0].is_ca);
    assert_eq!(certs[0].not_after - certs[0].not_before, 366 * 86_400);
    let claims = Claims::decode(&read(TOKEN)).unwrap();
    assert_eq!(claims.service_account(), Some(("vm-apps", "ratings-sa")));
    assert_eq!(claims.exp, Some(spec.now + 3600));
    let h = hosts::parse(std::str::from_utf8(&read(HOSTS)).unwrap()).unwrap();
    assert_eq!(h[0].names, ["istiod.istio-system.svc"]);
}

#[test]
fn builder_knobs() {
    let spec = BundleSpec::valid()
        .at(1_000_000_000)
        .token_exp_in(-5)
        .ca_not_ca()
        .without(HOSTS)
        .env("EXTRA", "it's");
    let files = spec.files();
    assert!(!files.contains_key(HOSTS));
    let claims = Claims::decode(&files[TOKEN]).unwrap();
    assert_eq!(claims.exp, Some(999_999_995));
    assert!(!root_cert::parse(&files[ROOT_CERT]).unwrap()[0].is_ca);
    let env = ClusterEnv::parse(&files["cluster.env"]).unwrap();
    assert_eq!(env.get("EXTRA"), Some("it's"));
    // The generator's quoting and the product's agree.
    assert_eq!(env.render().as_bytes(), &files["cluster.env"][..]);
}

#[test]
fn seed_spec_matches_the_seed() {
    // seeds/000_d091313a5671bd9d.txt: WorkloadGroup nginx in istio-demo, service
    // account vm, --ingressIP 192.168.0.59, --clusterID Kubernetes, probe port 80,
    // `class: vm` added to the cluster.env labels only.
    let files = BundleSpec::istio_1_10_seed().files();
    let env = ClusterEnv::parse(&files["cluster.env"]).unwrap();
    assert_eq!(env.get("ISTIO_META_CLUSTER_ID"), Some("Kubernetes"));
    assert_eq!(env.get("ISTIO_META_AUTO_REGISTER_GROUP"), Some("nginx"));
    assert_eq!(env.get("ISTIO_LOCAL_EXCLUDE_PORTS"), Some("15090,15021"));
    assert!(
        env.get("ISTIO_METAJSON_LABELS")
            .unwrap()
            .contains(r#""class":"vm""#)
    );
    let mesh = MeshConfig::parse(&files[MESH]).unwrap();
    assert!(!mesh.proxy_metadata["ISTIO_METAJSON_LABELS"].contains("class"));
    assert_eq!(mesh.readiness_probe.unwrap()["httpGet"]["port"], 80);
    let claims = Claims::decode(&files[TOKEN]).unwrap();
    assert_eq!(claims.service_account(), Some(("istio-demo", "vm")));
    assert_eq!(files[HOSTS], b"192.168.0.59 istiod.istio-system.svc\n");
}
