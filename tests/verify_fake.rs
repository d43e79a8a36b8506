//! `istio-vm verify` against a fake istiod and the stand-in agent, each test
//! in its own network namespace: every failure mode is detected by the right
//! check with the right hint, and a healthy setup passes.
//!
//! Kept together (over 700 lines) because every scenario runs on the same
//! wire (fake istiod behind a veth, capture rules on the VM side) and
//! is read as one catalogue of verify's failure modes.

#[path = "common/fake_istiod.rs"]
mod fake_istiod;
#[path = "common/tls.rs"]
#[allow(dead_code)]
mod tls;
#[path = "common/verify_harness.rs"]
mod verify_harness;

use fake_istiod::{Behaviour, FakeIstiod, Seen};
use verify_harness::{
    ISTIOD_IP, Run, VmRoot, VmSpec, Wire, apply_capture, files_only, in_netns,
    owner_return_packets, start_agent, verify, verify_env, with_istiod,
};

/// What one scenario left behind.
struct Outcome {
    run: Run,
    seen: Seen,
    /// Packets Istio's owner rules let through uncaptured during the run.
    owner_packets: u64,
}

/// Fake istiod with `b` in a namespace of its own (203.0.113.20), joined to
/// the VM's by a veth pair; in the VM's namespace Istio's capture rules for
/// the root (ISTIO_SERVICE_CIDR='*': everything outbound is captured) and
/// nothing on 15001, the stand-in agent with `agent` flags (None: no agent),
/// then `verify ARGS`. `127.0.0.1` in the spec's hosts lines and discovery
/// address stands for istiod's address.
fn scenario_full(
    spec: VmSpec,
    b: Behaviour,
    agent: Option<&'static [&'static str]>,
    args: &'static [&'static str],
) -> Outcome {
    let ((run, owner_packets), seen) = with_istiod(spec, b, move |root| {
        let _agent = agent.map(|a| start_agent(root, a));
        let run = verify(root, args);
        (run, owner_return_packets())
    });
    Outcome {
        run,
        seen,
        owner_packets,
    }
}

fn scenario(
    spec: VmSpec,
    b: Behaviour,
    agent: Option<&'static [&'static str]>,
    args: &'static [&'static str],
) -> (Run, Seen) {
    let o = scenario_full(spec, b, agent, args);
    (o.run, o.seen)
}

/// `verify ARGS` in the VM's namespace, behind Istio's capture rules.
fn verify_behind_rules(wire: &Wire, root: VmRoot, args: &'static [&'static str]) -> Run {
    wire.on_vm(root, move |root| verify(root, args))
}

const T: &[&str] = &["--timeout", "2s"];

#[test]
fn healthy_mesh_passes_everything() {
    // Capture rules in place and no listener on 15001, the moment a person
    // runs verify: verify's own connections are the agent's, exempt by owner.
    let o = scenario_full(VmSpec::default(), Behaviour::default(), Some(&[]), T);
    let (run, seen) = (o.run, o.seen);
    assert!(
        run.detail("tcp.discovery")
            .contains("as istio-proxy (uid 4242"),
        "{}",
        run.detail("tcp.discovery")
    );
    // tcp, tls, ca and xds connections: each went past the owner RETURN rule.
    assert!(
        o.owner_packets >= 4,
        "owner rules saw {} packets",
        o.owner_packets
    );
    assert_eq!(run.failing(), Vec::<String>::new(), "{}", run.json);
    assert_eq!(run.code, 0);
    assert_eq!(run.json["ok"], true);
    for id in [
        "files.root_cert",
        "files.token",
        "files.token_persistent",
        "files.cluster_env",
        "files.mesh_config",
        "files.dirs",
        "files.hosts",
        "dns.discovery",
        "tcp.discovery",
        "tls.handshake",
        "ca.token",
        "xds.stream",
        "agent.ready",
        "agent.xds",
        "agent.live",
        "agent.dns",
    ] {
        assert_eq!(run.status(id), "pass", "{id}: {}", run.check(id));
    }
    // Under --root nothing live is looked at.
    assert_eq!(run.status("agent.service"), "skip");
    assert!(
        run.detail("ca.token")
            .contains("spiffe://cluster.local/ns/vm-apps/sa/ratings-sa")
    );
    assert!(
        run.detail("xds.stream").contains("2 cluster(s)"),
        "{}",
        run.detail("xds.stream")
    );
    assert!(
        run.detail("dns.discovery")
            .contains("203.0.113.20 (as /etc/hosts says)"),
        "{}",
        run.detail("dns.discovery")
    );
    // No sidecar in the root's dpkg database: current semantics, said so.
    run.expect("files.sidecar", "skip", "current Istio");
    // No capture record (as after `install --no-capture`): skipped, saying why.
    run.expect("capture.rules", "skip", "--no-capture");
    // The CA saw the token's subject; XDS saw the issued identity and a node
    // in Istio's format, without auto-registration.
    assert_eq!(
        seen.ca_subjects,
        vec!["system:serviceaccount:vm-apps:ratings-sa"]
    );
    assert_eq!(
        seen.xds_identities,
        vec!["spiffe://cluster.local/ns/vm-apps/sa/ratings-sa"]
    );
    let (id, md) = &seen.nodes[0];
    assert!(
        id.starts_with("sidecar~198.51.100.10~")
            && id.ends_with(".vm-apps~vm-apps.svc.cluster.local"),
        "{id}"
    );
    assert_eq!(md["NAMESPACE"], "vm-apps");
    assert_eq!(md["CLUSTER_ID"], "cluster1");
    assert_eq!(md["LABELS"]["app"], "ratings");
    assert!(
        md.get("AUTO_REGISTER_GROUP").is_none(),
        "verify must never trigger auto-registration: {md}"
    );
    // Every check has its timing; no secret leaks into the report.
    let text = run.json.to_string();
    assert!(
        !text.contains("bm90LWEtcmVhbC1zaWduYXR1cmU"),
        "the token's signature leaked"
    );
    for c in run.json["checks"].as_array().unwrap() {
        assert!(c["elapsed_ms"].is_u64());
        if c["status"] != "pass" {
            assert!(c["hint"].as_str().is_some_and(|h| !h.is_empty()), "{c}");
        }
    }
}

#[test]
fn dns_lookups_are_the_agents() {
    // No hosts entry: istiod's name comes from the VM's DNS server, on the
    // far side of the wire. With DNS capture on, Istio's rules send port 53
    // to the agent's DNS proxy (15053, nothing there yet) for everyone but
    // istio-proxy's uid: verify's lookup must go out as the agent's does.
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::rr::{Name, RData, Record};
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let fake = Wire::start_istiod(&rt, 15012, Behaviour::default(), ca.clone());
    let sock = rt
        .block_on(async { tokio::spawn(tokio::net::UdpSocket::bind((ISTIOD_IP, 53))).await })
        .unwrap()
        .unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = asked.clone();
    rt.spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = sock.recv_from(&mut buf).await {
            let Ok(mut m) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            m.set_message_type(MessageType::Response);
            let a = m
                .queries()
                .first()
                .is_some_and(|q| q.query_type() == hickory_proto::rr::RecordType::A);
            if a {
                m.add_answer(Record::from_rdata(
                    Name::from_ascii("istiod.istio-system.svc.").unwrap(),
                    30,
                    RData::A(ISTIOD_IP.parse::<std::net::Ipv4Addr>().unwrap().into()),
                ));
            }
            let _ = sock.send_to(&m.to_vec().unwrap(), peer).await;
        }
    });
    let spec = VmSpec {
        hosts_block: vec![],
        ..Default::default()
    };
    let root = VmRoot::new(&spec, fake.root_pem());
    std::fs::write(
        root.file("/etc/resolv.conf"),
        format!("nameserver {ISTIOD_IP}\n"),
    )
    .unwrap();
    let run = verify_behind_rules(&wire, root, &["--timeout", "2s", "--skip-agent"]);
    run.expect("dns.discovery", "pass", "203.0.113.20");
    run.expect("xds.stream", "pass", "");
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn no_hosts_entry() {
    let spec = VmSpec {
        hosts_block: vec![],
        ..Default::default()
    };
    let (run, _) = scenario(spec, Behaviour::default(), Some(&[]), T);
    run.expect("dns.discovery", "fail", "--ingressIP");
    run.expect(
        "files.hosts",
        "warn",
        "no entry for istiod.istio-system.svc",
    );
    run.expect("tcp.discovery", "skip", "dns.discovery");
    assert_eq!(run.code, 1);
}

#[test]
fn stale_hosts_line_is_reported() {
    // A line outside the block shadows the bundle's address.
    let spec = VmSpec {
        hosts_extra: vec!["127.0.0.9 istiod.istio-system.svc".into()],
        ..Default::default()
    };
    let (run, _) = scenario(spec, Behaviour::default(), Some(&[]), T);
    run.expect("dns.discovery", "warn", "also resolves to 127.0.0.9");
    run.expect("xds.stream", "pass", "");
    assert_eq!(run.code, 0, "a warning is not a failure");
}

#[test]
fn port_closed() {
    // istiod's machine is up and answers, but nothing listens on 15012.
    files_only(VmSpec::default(), |root| {
        let run = verify(root, &["--timeout", "2s", "--skip-agent"]);
        run.expect("tcp.discovery", "fail", "expose-istiod.yaml");
        assert!(run.detail("tcp.discovery").contains("refused"));
        run.expect("tls.handshake", "skip", "tcp.discovery");
        run.expect("xds.stream", "skip", "");
        run.expect("agent.ready", "skip", "--skip-agent");
        assert_eq!(run.code, 1);
    });
}

#[test]
fn server_certificate_from_another_ca() {
    let b = Behaviour {
        other_ca: true,
        ..Default::default()
    };
    let (run, _) = scenario(VmSpec::default(), b, Some(&[]), T);
    run.expect("tls.handshake", "fail", "unknown authority");
    assert!(
        run.detail("tls.handshake").contains("some other CA"),
        "{}",
        run.detail("tls.handshake")
    );
    run.expect("ca.token", "skip", "tls.handshake");
}

#[test]
fn wrong_san() {
    let b = Behaviour {
        sans: vec!["istiod.example.com".into()],
        ..Default::default()
    };
    let (run, _) = scenario(VmSpec::default(), b, Some(&[]), T);
    run.expect("tls.handshake", "fail", "ISTIOD_SAN");
    assert!(run.detail("tls.handshake").contains("istiod.example.com"));
    assert!(!run.hint("tls.handshake").contains("unknown authority"));
}

#[test]
fn istiod_san_overrides_the_verified_name() {
    // An IP discovery address works once ISTIOD_SAN names istiod's
    // certificate; ISTIOD_SAN is for XDS only, and the CA goes to
    // istio-start.sh's CA_ADDR default (tools/packaging/common/istio-start.sh@1.12.0).
    let spec = VmSpec {
        discovery_address: "127.0.0.1:15012".into(),
        env_extra: vec!["ISTIOD_SAN='istiod.istio-system.svc'".into()],
        ..Default::default()
    };
    let (run, _) = scenario(
        spec,
        Behaviour::default(),
        None,
        &["--timeout", "2s", "--skip-agent"],
    );
    for id in ["dns.discovery", "tls.handshake", "ca.token", "xds.stream"] {
        assert_eq!(run.status(id), "pass", "{id}: {}", run.check(id));
    }
    assert!(run.detail("tls.handshake").contains("203.0.113.20:15012"));
    assert!(
        run.detail("ca.token")
            .contains("istiod.istio-system.svc:15012"),
        "{}",
        run.detail("ca.token")
    );
}

#[test]
fn expired_token() {
    let spec = VmSpec {
        token_exp_in: -120,
        ..Default::default()
    };
    let (run, seen) = scenario(spec, Behaviour::default(), Some(&[]), T);
    run.expect("files.token", "fail", "new token");
    run.expect("ca.token", "fail", "expired");
    assert!(run.detail("ca.token").contains("Unauthenticated"));
    run.expect("xds.stream", "skip", "ca.token");
    assert!(seen.ca_subjects.is_empty());
}

#[test]
fn expired_token_with_a_valid_workload_cert_can_still_renew() {
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let fake = Wire::start_istiod(&rt, 15012, Behaviour::default(), ca.clone());
    let spec = VmSpec {
        token_exp_in: -120,
        hosts_block: vec![format!("{ISTIOD_IP} istiod.istio-system.svc")],
        ..Default::default()
    };
    let root = VmRoot::new(&spec, fake.root_pem());
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = ca.workload_cert("spiffe://cluster.local/ns/vm-apps/sa/ratings-sa", &key, 24);
    std::fs::write(root.file("/etc/certs/cert-chain.pem"), pem).unwrap();
    std::fs::write(root.file("/etc/certs/key.pem"), key.serialize_pem()).unwrap();
    let run = verify_behind_rules(&wire, root, &["--timeout", "2s", "--skip-agent"]);
    run.expect(
        "files.token",
        "warn",
        "renews with its workload certificate",
    );
    run.expect("files.workload_cert", "pass", "");
    // The CA accepts the certificate where the token no longer works,
    // exactly the agent's renewal path.
    run.expect(
        "ca.token",
        "pass",
        "authenticated with the workload certificate",
    );
    run.expect("xds.stream", "pass", "");
    assert_eq!(
        fake.seen().ca_subjects,
        vec!["spiffe://cluster.local/ns/vm-apps/sa/ratings-sa"]
    );
    assert_eq!(run.code, 0, "{}", run.json);
}

#[test]
fn token_with_wrong_audience() {
    let spec = VmSpec {
        token_aud: vec!["https://kubernetes.default.svc".into()],
        ..Default::default()
    };
    let (run, _) = scenario(spec, Behaviour::default(), Some(&[]), T);
    run.expect("ca.token", "fail", "istio-ca");
    assert!(
        run.hint("ca.token").contains("audience"),
        "{}",
        run.hint("ca.token")
    );
    run.expect("files.token", "fail", "audience");
}

#[test]
fn namespace_service_account_mismatch() {
    let spec = VmSpec {
        token_sub: Some("system:serviceaccount:other-ns:other-sa".into()),
        ..Default::default()
    };
    let (run, seen) = scenario(spec, Behaviour::default(), Some(&[]), T);
    run.expect("ca.token", "fail", "35249");
    assert!(
        run.detail("ca.token")
            .contains("spiffe://cluster.local/ns/other-ns/sa/other-sa")
    );
    // XDS runs with the certificate anyway, and istiod refuses it.
    run.expect("xds.stream", "fail", "no identities");
    assert!(run.detail("xds.stream").contains("PermissionDenied"));
    assert_eq!(
        seen.xds_identities,
        vec!["spiffe://cluster.local/ns/other-ns/sa/other-sa"]
    );
}

#[test]
fn ca_answers_unimplemented() {
    let b = Behaviour {
        ca_unimplemented: true,
        ..Default::default()
    };
    let (run, _) = scenario(VmSpec::default(), b, Some(&[]), T);
    run.expect("ca.token", "fail", "57664");
    assert!(run.detail("ca.token").contains("Unimplemented"));
    assert!(
        run.detail("ca.token")
            .contains("unknown service istio.v1.auth.IstioCertificateService")
    );
}

#[test]
fn ca_rejects_the_token() {
    let b = Behaviour {
        reject_token: true,
        ..Default::default()
    };
    let (run, _) = scenario(VmSpec::default(), b, Some(&[]), T);
    run.expect("ca.token", "fail", "TokenReview");
}

#[test]
fn ads_closes_the_stream() {
    let b = Behaviour {
        ads_close: true,
        ..Default::default()
    };
    let (run, seen) = scenario(VmSpec::default(), b, Some(&[]), T);
    run.expect("ca.token", "pass", "");
    run.expect("xds.stream", "fail", "closed the XDS stream");
    assert_eq!(seen.nodes.len(), 1);
}

#[test]
fn agent_not_running() {
    let (run, _) = scenario(VmSpec::default(), Behaviour::default(), None, T);
    run.expect("xds.stream", "pass", "");
    run.expect("agent.ready", "fail", "systemctl start istio");
    assert!(run.detail("agent.ready").contains("nothing listens"));
    run.expect("agent.xds", "fail", "not running");
    run.expect("agent.dns", "fail", "DNS proxy is not running");
    assert_eq!(run.code, 1);
}

#[test]
fn agent_up_but_not_connected() {
    let (run, _) = scenario(
        VmSpec::default(),
        Behaviour::default(),
        Some(&["--disconnected"]),
        T,
    );
    run.expect("agent.xds", "fail", "not connected");
    assert!(run.detail("agent.xds").contains("connected_state is 0"));
    // A bare 503: the reason is in the agent's log, not the response.
    run.expect("agent.ready", "fail", "Envoy proxy is NOT ready");
    assert_eq!(run.detail("agent.ready"), ":15021/healthz/ready is 503");
    run.expect("agent.live", "pass", "");
    // Without istiod's name table the DNS proxy answers SERVFAIL.
    run.expect("agent.dns", "fail", "SERVFAIL");
    assert!(run.hint("agent.dns").contains("no name table"));
}

#[test]
fn dns_proxy_silent() {
    let (run, _) = scenario(
        VmSpec::default(),
        Behaviour::default(),
        Some(&["--dns-silent"]),
        &["--timeout", "2s"],
    );
    run.expect("agent.dns", "fail", "silent");
    run.expect("agent.ready", "pass", "");
}

#[test]
fn dns_proxy_not_checked_without_capture() {
    let spec = VmSpec {
        dns_capture: false,
        ..Default::default()
    };
    let (run, _) = scenario(spec, Behaviour::default(), Some(&["--no-dns"]), T);
    run.expect("agent.dns", "skip", "ISTIO_META_DNS_CAPTURE");
    assert_eq!(run.code, 0, "{}", run.json);
}

#[test]
fn known_log_lines_are_explained() {
    // log.errors reads files only; the network checks end at once.
    files_only(VmSpec::default(), |root| {
        root.append_log("/var/log/istio/istio.log", &[
            "2026-11-27T05:00:00.000000Z\tinfo\txdsproxy\tconnected to upstream XDS server: istiod.istio-system.svc:15012",
            "2026-11-27T05:01:00.000000Z\twarn\txdsproxy\tupstream terminated with unexpected error rpc error: code = PermissionDenied desc = authorization failed: no identities ([spiffe://cluster.local/ns/a/sa/x]) matched vm-apps/ratings-sa",
        ]);
        // Envoy's own line in istio.err.log (it writes to stderr).
        root.append_log(
            "/var/log/istio/istio.err.log",
            &["2026-11-27T05:02:00.000000Z\twarning\tenvoy config\tStreamAggregatedResources gRPC config stream closed: 14, connection error: desc = \"transport: Error while dialing dial tcp 203.0.113.20:15012: i/o timeout\""],
        );
        let run = verify(root, &["--timeout", "2s", "--skip-agent"]);
        run.expect("log.errors", "fail", "35249");
        assert!(
            run.hint("log.errors").contains("drops port 15012"),
            "{}",
            run.hint("log.errors")
        );
        // `connected to upstream XDS server` is logged before istiod checked
        // anything: it does not make the later error history.
        assert!(
            !run.detail("log.errors").contains("older"),
            "{}",
            run.detail("log.errors")
        );
        assert!(run.detail("log.errors").contains("xds.permission_denied"));
        // Only history: an error followed by a successful connection.
        std::fs::remove_file(root.file("/var/log/istio/istio.err.log")).unwrap();
        std::fs::write(root.file("/var/log/istio/istio.log"), "").unwrap();
        root.append_log("/var/log/istio/istio.log", &[
            "2026-11-27T05:00:00.000000Z\twarn\txdsproxy\tfailed to connect to upstream istiod.istio-system.svc:15012: i/o timeout",
            "2026-11-27T05:00:05.000000Z\tinfo\tEnvoy proxy is ready",
        ]);
        let run = verify(root, &["--timeout", "2s", "--skip-agent"]);
        run.expect("log.errors", "pass", "1 older");
    });
}

/// A one-request-at-a-time HTTP server on `bind` answering with `headers`,
/// bound on a worker of `rt` (so in that runtime's namespace).
fn http_server(rt: &tokio::runtime::Runtime, bind: &'static str, headers: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = rt
        .block_on(async { tokio::spawn(tokio::net::TcpListener::bind(bind)).await })
        .unwrap()
        .unwrap();
    rt.spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let body = "hello\n";
            let resp = format!(
                "HTTP/1.1 200 OK\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
}

/// Packets the nat table sent to Envoy's outbound port (ISTIO_REDIRECT).
fn redirected_packets() -> u64 {
    let out = std::process::Command::new("iptables")
        .args(["-t", "nat", "-L", "ISTIO_REDIRECT", "-v", "-x", "-n"])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("REDIRECT"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn probes() {
    // `--probe` is an application's traffic: captured. The services live on
    // the far side of the wire; in the VM's namespace the capture rules send
    // the probe's DNS to the stand-in's DNS proxy (15053) and its
    // connections to the stand-in's outbound listener (15001), which routes
    // them as Envoy would.
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let _fake = Wire::start_istiod(&rt, 15012, Behaviour::default(), ca.clone());
    // nginx.jd.com's pods (plain nginx); a service Envoy carries as TCP;
    // and a workload whose own inbound sidecar answers.
    http_server(&rt, "203.0.113.20:80", "server: nginx\r\n");
    http_server(&rt, "203.0.113.20:8080", "server: nginx\r\n");
    http_server(
        &rt,
        "203.0.113.20:9080",
        "server: istio-envoy\r\nx-envoy-upstream-service-time: 2\r\n",
    );
    // A VM has a default route; mesh-allocated addresses (240.240/16) need
    // one to be dialled at all before capture redirects them.
    Wire::run_in(&wire.vm, || {
        let st = std::process::Command::new("ip")
            .args(["route", "add", "default", "via", ISTIOD_IP])
            .status()
            .unwrap();
        assert!(st.success());
    });
    let spec = VmSpec {
        hosts_extra: vec![
            format!("{ISTIOD_IP} direct.example.com"),
            format!("{ISTIOD_IP} ratings.example.com"),
        ],
        ..Default::default()
    }
    .on_wire();
    let root = VmRoot::new(&spec, &ca.cert_pem);
    // istiod's name table: nginx.jd.com at an address the mesh allocated.
    let names = root.path().join(".name-table");
    std::fs::write(&names, "240.240.0.7 nginx.jd.com\n").unwrap();
    let (run, redirected) = wire.on_vm(root, move |root| {
        let before = redirected_packets();
        let _agent = start_agent(
            root,
            &[
                "--hosts",
                names.to_str().unwrap(),
                "--outbound",
                "0.0.0.0:15001",
                "--http-route",
                "240.240.0.7:80=203.0.113.20:80",
            ],
        );
        verify_harness::wait_port("127.0.0.1:15001");
        let run = verify(
            root,
            &[
                "--timeout",
                "2s",
                "--skip-agent",
                "--probe",
                "http://nginx.jd.com/",
                "--probe",
                "http://direct.example.com:8080/",
                "--probe",
                "http://ratings.example.com:9080/",
                "--probe",
                "http://nosuch.vm-apps.svc.cluster.local/",
            ],
        );
        (run, redirected_packets() - before)
    });
    // Envoy's outbound HTTP route: `server: envoy` and the upstream time.
    run.expect("probe.nginx.jd.com", "pass", "through the sidecar");
    assert!(run.detail("probe.nginx.jd.com").contains("auto-allocated"));
    assert!(run.detail("probe.nginx.jd.com").contains("HTTP 200"));
    assert!(run.detail("probe.nginx.jd.com").contains("server: envoy"));
    // Carried as TCP: no Envoy headers; the response cannot tell, so it is
    // a warning, never "did not pass through".
    run.expect("probe.direct.example.com", "warn", "cannot tell");
    assert!(!run.json.to_string().contains("did not pass through"));
    // `istio-envoy` is the far side's inbound sidecar: the VM's outbound
    // Envoy, had it routed HTTP, would have overwritten it with `envoy`.
    run.expect("probe.ratings.example.com", "warn", "inbound sidecar");
    run.expect(
        "probe.nosuch.vm-apps.svc.cluster.local",
        "fail",
        "DNS proxy",
    );
    assert!(
        run.detail("probe.nosuch.vm-apps.svc.cluster.local")
            .contains("does not resolve")
    );
    // Every probe connection (SYN at least) was redirected to 15001.
    assert!(redirected >= 3, "{redirected} packets redirected");
}

/// An https server on `bind` presenting `config`, answering every request
/// with `headers`; counts the TLS handshakes it completed.
fn https_server(
    rt: &tokio::runtime::Runtime,
    bind: &'static str,
    config: std::sync::Arc<rustls::ServerConfig>,
    headers: &'static str,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l = rt
        .block_on(async { tokio::spawn(tokio::net::TcpListener::bind(bind)).await })
        .unwrap()
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let count = handshakes.clone();
    rt.spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                // A client that distrusts the certificate aborts here.
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let body = "hello\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    handshakes
}

#[test]
fn https_probe_passes_tls_through() {
    // An https service the mesh knows (auto-allocated 240.240.0.8, a TLS
    // port): capture sends the probe's connection to Envoy's 15001, which
    // carries the TLS bytes untouched to the endpoint (tcp_proxy). Nothing
    // on the way adds a header, so the response cannot say whether this
    // VM's sidecar carried it. The endpoint is reachable only through that
    // route: 240.240.0.8 is no machine's address.
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let _fake = Wire::start_istiod(&rt, 15012, Behaviour::default(), ca.clone());
    // A private CA, as a company's internal services use. The far side names
    // itself `envoy` (its own proxy, inside the TLS): still not this VM's.
    let (config, ca_pem) = tls::server_config(&["secure.jd.com"]);
    let handshakes = https_server(&rt, "203.0.113.20:8443", config, "server: envoy\r\n");
    Wire::run_in(&wire.vm, || {
        let st = std::process::Command::new("ip")
            .args(["route", "add", "default", "via", ISTIOD_IP])
            .status()
            .unwrap();
        assert!(st.success());
    });
    let root = VmRoot::new(&VmSpec::default().on_wire(), &ca.cert_pem);
    let names = root.path().join(".name-table");
    std::fs::write(&names, "240.240.0.8 secure.jd.com\n").unwrap();
    let ca_file = root.path().join(".private-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let missing = root.path().join(".no-such-ca.pem");
    let hs = handshakes.clone();
    let (trusted, redirected, served, untrusted, unreadable) = wire.on_vm(root, move |root| {
        let _agent = start_agent(
            root,
            &[
                "--hosts",
                names.to_str().unwrap(),
                "--outbound",
                "0.0.0.0:15001",
                "--tcp-route",
                "240.240.0.8:443=203.0.113.20:8443",
            ],
        );
        verify_harness::wait_port("127.0.0.1:15001");
        let args = [
            "--timeout",
            "2s",
            "--skip-agent",
            "--probe",
            "https://secure.jd.com/",
        ];
        let before = redirected_packets();
        let trusted = verify_env(root, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())], &args);
        let redirected = redirected_packets() - before;
        let served = hs.load(std::sync::atomic::Ordering::SeqCst);
        // Without the private CA the probe cannot trust the service.
        let untrusted = verify(root, &args);
        let unreadable = verify_env(root, &[("SSL_CERT_FILE", missing.to_str().unwrap())], &args);
        (trusted, redirected, served, untrusted, unreadable)
    });
    let id = "probe.secure.jd.com";
    trusted.expect(id, "pass", "cannot be told from the response");
    assert!(
        trusted.detail(id).contains("auto-allocated"),
        "{}",
        trusted.check(id)
    );
    assert!(
        trusted.detail(id).contains("HTTP 200"),
        "{}",
        trusted.check(id)
    );
    // `server: envoy` inside TLS is the far side's, never this VM's.
    assert!(
        !trusted.detail(id).contains("through the sidecar"),
        "{}",
        trusted.check(id)
    );
    for run in [&trusted, &untrusted, &unreadable] {
        assert!(!run.json.to_string().contains("did not pass through"));
    }
    // The connection went to 15001 and on to the endpoint, in TLS.
    assert!(redirected >= 1, "{redirected} packets redirected");
    assert_eq!(served, 1, "TLS handshakes the endpoint completed");
    untrusted.expect(id, "fail", "SSL_CERT_FILE");
    assert!(
        untrusted.detail(id).contains("not trusted"),
        "{}",
        untrusted.check(id)
    );
    unreadable.expect(id, "fail", "cannot read SSL_CERT_FILE=");
    assert!(unreadable.detail(id).contains("no such file or directory"));
}

#[test]
fn unreachable_istiod_costs_one_timeout() {
    // Packets to istiod's 15012 vanish (its machine's firewall drops them),
    // and the DNS proxy is silent: two waits that must overlap, not add up.
    let wire = Wire::new();
    Wire::run_in(&wire.istiod, || {
        let st = std::process::Command::new("iptables")
            .args(["-A", "INPUT", "-p", "tcp", "--dport", "15012", "-j", "DROP"])
            .status()
            .unwrap();
        assert!(st.success());
    });
    let spec = VmSpec::default().on_wire();
    let root = VmRoot::new(&spec, &fake_istiod::TestCa::new("x").cert_pem);
    wire.on_vm(root, |root| {
        let _agent = start_agent(root, &["--dns-silent"]);
        let run = verify(root, &["--timeout", "2s"]);
        run.expect("tcp.discovery", "fail", "firewall");
        run.expect("agent.dns", "fail", "silent");
        // How long this takes is measured by scripts/bench/verify.sh
        // (tests/verify_bench.rs bench_unreachable), not asserted here.
    });
}

#[test]
fn wait_retries_until_istiod_answers() {
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    // Something on istiod's machine that accepts and hangs up, until verify
    // has tried once.
    let l = Wire::run_in(&wire.istiod, || {
        std::net::TcpListener::bind((ISTIOD_IP, 15012)).unwrap()
    });
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let root = VmRoot::new(&VmSpec::default().on_wire(), &ca.cert_pem);
    let vm = wire.vm.clone();
    let h = std::thread::spawn(move || {
        Wire::run_in(&vm, move || {
            apply_capture(&root);
            verify(&root, &["--timeout", "2s", "--skip-agent", "--wait", "20s"])
        })
    });
    {
        // The first attempt's tcp.discovery and tls.handshake connections:
        // the handshake fails, so that attempt fails.
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut accepted = 0;
        while accepted < 2 {
            match l.accept() {
                Ok((s, _)) => {
                    drop(s);
                    accepted += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "verify never connected"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        // The same socket goes on as istiod: the port is never closed.
        let fake = rt.block_on(async {
            tokio::spawn(async move { FakeIstiod::start_on(l, Behaviour::default(), ca) })
                .await
                .unwrap()
        });
        let run = h.join().unwrap();
        assert_eq!(run.failing(), Vec::<String>::new(), "{}", run.json);
        assert_eq!(run.code, 0);
        assert_eq!(
            fake.seen().ca_subjects.len(),
            1,
            "a later attempt reached the CA"
        );
    }
}

#[test]
fn ca_addr_is_used_for_the_certificate() {
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    // istiod without a CA on 15012; the CA (same root) on 15013.
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let xds = Wire::start_istiod(
        &rt,
        15012,
        Behaviour {
            ca_unimplemented: true,
            ..Default::default()
        },
        ca.clone(),
    );
    let ca_server = Wire::start_istiod(
        &rt,
        15013,
        Behaviour {
            sans: vec!["istiod-ca.istio-system.svc".into()],
            ..Default::default()
        },
        ca.clone(),
    );
    let spec = VmSpec {
        hosts_block: vec![format!(
            "{ISTIOD_IP} istiod.istio-system.svc istiod-ca.istio-system.svc"
        )],
        env_extra: vec!["CA_ADDR='istiod-ca.istio-system.svc:15013'".into()],
        ..Default::default()
    };
    let root = VmRoot::new(&spec, &ca.cert_pem);
    let run = verify_behind_rules(&wire, root, &["--timeout", "2s", "--skip-agent"]);
    assert!(
        run.detail("dns.discovery")
            .contains("istiod-ca.istio-system.svc -> 203.0.113.20"),
        "{}",
        run.detail("dns.discovery")
    );
    run.expect("ca.token", "pass", "istiod-ca.istio-system.svc:15013");
    run.expect("xds.stream", "pass", "");
    assert_eq!(ca_server.seen().ca_subjects.len(), 1);
    assert!(xds.seen().ca_subjects.is_empty());
    assert_eq!(xds.seen().nodes.len(), 1);
}

#[test]
fn token_copies_that_differ_are_reported() {
    files_only(VmSpec::default(), |root| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let other = fake_istiod::token(
            "system:serviceaccount:vm-apps:ratings-sa",
            &["istio-ca"],
            now + 7200,
        );
        std::fs::write(root.file("/var/lib/istio-vm/istio-token"), other).unwrap();
        let run = verify(root, &["--timeout", "1s", "--skip-agent"]);
        run.expect("files.token_persistent", "warn", "after a reboot");
        // The token itself never shows up in the report.
        assert!(!run.json.to_string().contains("eyJ"));
    });
}

#[test]
fn token_lost_after_reboot() {
    // /var/run is a tmpfs: after a reboot the token is gone until something
    // restores it; the stand-in, like the agent, cannot get ready without it.
    with_istiod(VmSpec::default(), Behaviour::default(), |root| {
        std::fs::remove_file(root.file("/run/secrets/tokens/istio-token")).unwrap();
        let log = root.file("/var/log/istio/istio.log");
        let _agent = start_agent(root, &["--log", log.to_str().unwrap()]);
        let run = verify(root, &["--timeout", "2s"]);
        // istiod is reached through the capture rules; only the CA needs the token.
        run.expect("tls.handshake", "pass", "");
        run.expect("files.token", "fail", "reboot");
        run.expect("files.token_persistent", "pass", "restored from it at boot");
        run.expect("ca.token", "fail", "files.token");
        run.expect("agent.ready", "fail", "");
        // The agent's log says why, as pilot-agent's would.
        run.expect("log.errors", "fail", "token.missing");
    });
}

#[test]
fn stand_in_dns_proxy_answers_over_tcp_too() {
    use std::io::{Read, Write};
    // Only the stand-in's DNS proxy is asked (no verify, no istiod): the
    // VM's namespace alone, loopback only.
    in_netns(|| {
        let spec = VmSpec {
            hosts_extra: vec!["240.240.0.9 nginx.jd.com".into()],
            ..Default::default()
        };
        let root = VmRoot::new(&spec, &fake_istiod::TestCa::new("x").cert_pem);
        let _agent = start_agent(&root, &[]);
        verify_harness::wait_port("127.0.0.1:15053");
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::RecordType;
        let ask = |s: &mut std::net::TcpStream, name: &str, id: u16, t: RecordType| {
            let q = istio_vm::verify::agent::dns_query(name, id, t).unwrap();
            let mut msg = (q.len() as u16).to_be_bytes().to_vec();
            msg.extend_from_slice(&q);
            s.write_all(&msg).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut resp = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut resp).unwrap();
            istio_vm::verify::agent::dns_answers(&resp, id).unwrap()
        };
        let mut s = std::net::TcpStream::connect("127.0.0.1:15053").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (rcode, addrs) = ask(&mut s, "nginx.jd.com", 0x4242, RecordType::A);
        assert_eq!(rcode, ResponseCode::NoError);
        assert_eq!(
            addrs,
            vec!["240.240.0.9".parse::<std::net::IpAddr>().unwrap()]
        );
        // Unknown names: NXDOMAIN, no answer.
        assert_eq!(
            ask(&mut s, "nosuch.example", 7, RecordType::AAAA),
            (ResponseCode::NXDomain, vec![])
        );
    });
}

#[test]
fn owners_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    files_only(VmSpec::default(), |root| {
        // A world-readable token is a leaked credential: a failure.
        let tok = root.file("/run/secrets/tokens/istio-token");
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A root-owned root cert only departs from the layout: a warning.
        let cert = root.file("/etc/certs/root-cert.pem");
        std::os::unix::fs::chown(&cert, Some(0), Some(0)).unwrap();
        // The agent cannot write its certificates here.
        std::os::unix::fs::chown(root.file("/etc/certs"), Some(0), Some(0)).unwrap();
        let run = verify(root, &["--timeout", "1s", "--skip-agent"]);
        run.expect("files.token", "fail", "chmod 0600");
        run.expect(
            "files.root_cert",
            "warn",
            "chown istio-proxy:istio-proxy /etc/certs/root-cert.pem",
        );
        run.expect("files.dirs", "fail", "/etc/certs (owner uid 0)");
    });
}

#[test]
fn live_vm_without_root_flag() {
    // `istio-vm verify` as on a VM: no --root. A private mount namespace puts
    // the VM tree at the real paths (a copy of this machine's /etc with the
    // placed files added; /var/lib, /var/log and /run from the tree), so
    // nothing of the host changes.
    with_istiod(VmSpec::default(), Behaviour::default(), |vm| {
        let etc = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg("/etc/.")
            .arg(etc.path())
            .status()
            .unwrap();
        assert!(st.success());
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(vm.file("/etc/certs"))
            .arg(vm.file("/etc/istio"))
            .arg(vm.file("/etc/hosts"))
            .arg(vm.file("/etc/resolv.conf"))
            .arg(etc.path())
            .status()
            .unwrap();
        assert!(st.success());
        let passwd = etc.path().join("passwd");
        let mut text = std::fs::read_to_string(&passwd).unwrap_or_default();
        text.push_str(&format!(
            "istio-proxy:x:{0}:{0}::/var/lib/istio:/usr/sbin/nologin\n",
            verify_harness::PROXY_UID
        ));
        std::fs::write(&passwd, text).unwrap();
        std::fs::write(
            etc.path().join("nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files dns\n",
        )
        .unwrap();
        let _agent = start_agent(vm, &[]);
        let script = r#"set -e
mount --bind "$1" /etc
mount --bind "$2/var/lib" /var/lib
mount --bind "$2/var/log" /var/log
mount --bind "$2/run" /run
shift 2
exec "$@""#;
        let out = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(etc.path())
            .arg(vm.path())
            .arg(env!("CARGO_BIN_EXE_istio-vm"))
            .args(["--output", "json", "verify", "--timeout", "2s"])
            .env_remove("ISTIO_VM_ROOT")
            .env_remove("ISTIO_VM_CONFIG")
            .env_remove("ISTIO_VM_TIMEOUT")
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let run = verify_harness::Run {
            code: out.status.code().unwrap_or(-1),
            json,
            stderr: String::new(),
            elapsed: std::time::Duration::ZERO,
        };
        for id in [
            "files.root_cert",
            "files.token",
            "files.cluster_env",
            "files.mesh_config",
            "files.dirs",
            "files.hosts",
            "dns.discovery",
            "tls.handshake",
            "ca.token",
            "xds.stream",
            "agent.ready",
            "agent.dns",
        ] {
            assert_eq!(run.status(id), "pass", "{id}: {}", run.check(id));
        }
        // Live, systemctl is asked; without a systemd here it cannot tell.
        assert_ne!(
            run.detail("agent.service"),
            "not checked under --root: nothing live is looked at there"
        );
        assert_ne!(run.status("agent.service"), "pass");
    });
}

#[test]
fn the_installed_sidecar_version_decides_the_addresses() {
    // A mesh file naming a revisioned istiod that does not resolve; the
    // hosts block maps only istiod.istio-system.svc.
    let spec = |v: &str| VmSpec {
        sidecar_version: Some(v.into()),
        discovery_address: "istiod-1-10-6.istio-system.svc:15012".into(),
        ..Default::default()
    };
    // 1.10: istio-start.sh always sets PROXY_CONFIG's discoveryAddress to
    // istiod.istio-system.svc:15012 (tools/packaging/common/istio-start.sh@1.10.0).
    let old = scenario_full(
        spec("1.10.6"),
        Behaviour::default(),
        None,
        &["--timeout", "2s", "--skip-agent"],
    );
    for id in [
        "dns.discovery",
        "tcp.discovery",
        "tls.handshake",
        "ca.token",
        "xds.stream",
    ] {
        assert_eq!(old.run.status(id), "pass", "{id}: {}", old.run.check(id));
    }
    old.run.expect(
        "files.sidecar",
        "pass",
        "istio-sidecar 1.10.6 in dpkg's /var/lib/dpkg/status",
    );
    assert!(
        old.run
            .detail("files.sidecar")
            .contains("istiod-1-10-6.istio-system.svc:15012 is ignored"),
        "{}",
        old.run.detail("files.sidecar")
    );
    // The ADS node carries the installed version.
    assert_eq!(old.seen.nodes[0].1["ISTIO_VERSION"], "1.10.6");
    // Current: the mesh file applies, and its host does not resolve.
    let new = scenario_full(
        spec("1.24.2"),
        Behaviour::default(),
        None,
        &["--timeout", "2s", "--skip-agent"],
    );
    new.run
        .expect("dns.discovery", "fail", "istiod-1-10-6.istio-system.svc");
    new.run
        .expect("files.sidecar", "pass", "istio-sidecar 1.24.2");
    assert!(new.seen.nodes.is_empty());
}

#[test]
fn the_sidecar_version_from_rpm_or_the_start_script() {
    // istio-sidecar 1.10.6 in the root's rpm database (no dpkg entry) and a
    // mesh file naming a revisioned istiod that does not resolve: 1.10's
    // istio-start.sh dials istiod.istio-system.svc anyway.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(
        w.join("s.spec"),
        "Name: istio-sidecar\nVersion: 1.10.6\nRelease: 1\nSummary: t\nLicense: Apache-2.0\n\
         BuildArch: noarch\n%description\nt\n%files\n",
    )
    .unwrap();
    let top = format!("_topdir {}", w.join("top").display());
    let st = std::process::Command::new("rpmbuild")
        .args(["--define", &top, "-bb", "--quiet"])
        .arg(w.join("s.spec"))
        .status()
        .expect("rpmbuild (package rpm)");
    assert!(st.success());
    let pkg = w.join("top/RPMS/noarch/istio-sidecar-1.10.6-1.noarch.rpm");
    let spec = VmSpec {
        discovery_address: "istiod-1-10-6.istio-system.svc:15012".into(),
        ..Default::default()
    };
    let (run, seen) = with_istiod(spec, Behaviour::default(), move |root| {
        let rpm = |args: &[&str]| {
            let st = std::process::Command::new("rpm")
                .arg("--root")
                .arg(root.path())
                .args(["--dbpath", "/var/lib/rpm"])
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "rpm {args:?}");
        };
        rpm(&["--initdb"]);
        rpm(&["-i", "--justdb", "--nodeps", pkg.to_str().unwrap()]);
        verify(root, &["--timeout", "2s", "--skip-agent"])
    });
    run.expect("files.sidecar", "pass", "rpm's database");
    for id in ["dns.discovery", "tls.handshake", "ca.token", "xds.stream"] {
        assert_eq!(run.status(id), "pass", "{id}: {}", run.check(id));
    }
    assert_eq!(seen.nodes[0].1["ISTIO_VERSION"], "1.10.6");
    // No package database entry: the version istio-start.sh announces.
    files_only(VmSpec::default(), |root| {
        let p = root.file("/usr/local/bin/istio-start.sh");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            "#!/bin/bash\nexport ISTIO_META_ISTIO_VERSION=\"1.11.4\"\n",
        )
        .unwrap();
        let run = verify(root, &["--timeout", "1s", "--skip-agent"]);
        run.expect(
            "files.sidecar",
            "pass",
            "ISTIO_META_ISTIO_VERSION=1.11.4 in /usr/local/bin/istio-start.sh",
        );
    });
}

#[test]
fn the_agents_namespace_is_istio_namespace() {
    // istio-start.sh runs pilot-agent with POD_NAMESPACE=${ISTIO_NAMESPACE:-default}
    // (tools/packaging/common/istio-start.sh@1.10.0 and at master): a
    // POD_NAMESPACE in cluster.env never reaches the agent.
    let ((run, without), seen) = with_istiod(VmSpec::default(), Behaviour::default(), |root| {
        let env = root.file("/var/lib/istio/envoy/cluster.env");
        let text = std::fs::read_to_string(&env).unwrap();
        let other = text.replace("POD_NAMESPACE='vm-apps'", "POD_NAMESPACE='other'");
        assert_ne!(text, other);
        std::fs::write(&env, &other).unwrap();
        let run = verify(root, &["--timeout", "2s", "--skip-agent"]);
        // Without ISTIO_NAMESPACE the agent's namespace is `default`, and
        // istiod refuses the token's vm-apps identity for it.
        let none: String = other
            .lines()
            .filter(|l| !l.starts_with("ISTIO_NAMESPACE="))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&env, none).unwrap();
        (run, verify(root, &["--timeout", "2s", "--skip-agent"]))
    });
    run.expect("xds.stream", "pass", "");
    assert_eq!(seen.nodes[0].1["NAMESPACE"], "vm-apps");
    assert_eq!(seen.nodes[1].1["NAMESPACE"], "default");
    without.expect("xds.stream", "fail", "PermissionDenied");
}

#[test]
fn from_1_12_the_ca_is_not_the_mesh_files_address() {
    // The mesh file names a revisioned istiod that resolves; the CA is still
    // istiod.istio-system.svc:15012 (tools/packaging/common/istio-start.sh@1.12.0).
    let spec = VmSpec {
        sidecar_version: Some("1.24.2".into()),
        discovery_address: "istiod-rev.istio-system.svc:15012".into(),
        hosts_block: vec!["127.0.0.1 istiod-rev.istio-system.svc".into()],
        ..Default::default()
    };
    let (run, _) = scenario(
        spec,
        Behaviour::default(),
        None,
        &["--timeout", "2s", "--skip-agent"],
    );
    run.expect("dns.discovery", "fail", "istio-start.sh's CA_ADDR default");
    assert!(
        run.detail("dns.discovery")
            .starts_with("istiod.istio-system.svc "),
        "{}",
        run.detail("dns.discovery")
    );
    assert!(
        run.hint("dns.discovery")
            .contains("set CA_ADDR in cluster.env")
    );
}

#[test]
fn an_expired_workload_certificate_strands_1_10_only() {
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let _fake = Wire::start_istiod(&rt, 15012, Behaviour::default(), ca.clone());
    let expired = |v: &str| {
        let spec = VmSpec {
            sidecar_version: Some(v.into()),
            hosts_block: vec![format!("{ISTIOD_IP} istiod.istio-system.svc")],
            ..Default::default()
        };
        let root = VmRoot::new(&spec, &ca.cert_pem);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = ca.workload_cert("spiffe://cluster.local/ns/vm-apps/sa/ratings-sa", &key, -1);
        std::fs::write(root.file("/etc/certs/cert-chain.pem"), pem).unwrap();
        std::fs::write(root.file("/etc/certs/key.pem"), key.serialize_pem()).unwrap();
        verify_behind_rules(&wire, root, &["--timeout", "2s", "--skip-agent"])
    };
    // citadel/client.go@1.10.0 presents it anyway: stuck.
    let run = expired("1.10.6");
    run.expect("ca.token", "fail", "/etc/certs/cert-chain.pem");
    assert!(
        run.hint("ca.token")
            .contains("stuck until the files are removed")
    );
    run.expect("files.workload_cert", "fail", "stuck");
    // citadel/client.go@1.11.0: `cert expired, using token instead`.
    let run = expired("1.11.0");
    run.expect("ca.token", "pass", "");
    run.expect("files.workload_cert", "warn", "falls back to the token");
    // xds_proxy.go@1.15.0 still presents the expired files to istiod.
    assert!(
        run.hint("files.workload_cert")
            .contains("only from Istio 1.16"),
        "{}",
        run.hint("files.workload_cert")
    );
    // xds_proxy.go@1.16.0: `cert expired, using token instead` for XDS too.
    let run = expired("1.16.0");
    run.expect("ca.token", "pass", "");
    run.expect("files.workload_cert", "warn", "for the CA and XDS");
}

#[test]
fn every_real_log_line_is_explained_through_verify() {
    const LINES: &str = include_str!("data/agent-log-lines.txt");
    // log.errors reads files only: no istiod (a quick refusal at its
    // address), one fresh log per line.
    files_only(VmSpec::default(), |root| {
        let mut n = 0;
        for l in LINES
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let mut p = l.splitn(3, '|');
            let (code, file, line) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            for f in ["istio.log", "istio.err.log"] {
                let _ = std::fs::remove_file(root.file(&format!("/var/log/istio/{f}")));
            }
            root.append_log(&format!("/var/log/istio/{file}"), &[line]);
            let run = verify(root, &["--timeout", "1s", "--skip-agent"]);
            let status = run.status("log.errors");
            assert!(
                status == "fail" || status == "warn",
                "{line}: {}",
                run.check("log.errors")
            );
            assert!(
                run.detail("log.errors").contains(code),
                "{line}: {}",
                run.check("log.errors")
            );
            n += 1;
        }
        assert!(n >= 20, "{n} lines");
    });
}

#[test]
fn clusterid_picks_the_cluster_that_reviews_the_token() {
    // istiod's own cluster is `primary`; the VM's token comes from remote
    // `cluster1`, so only a CA call naming cluster1 in its `clusterid`
    // header is reviewed where the token is valid (kube_jwt.go getKubeClient).
    // Without the header it would be reviewed by primary and refused.
    let remote = Behaviour {
        cluster_id: "primary".into(),
        issuer: "https://primary.example".into(),
        remote_clusters: vec![("cluster1".into(), "https://cluster1.example".into())],
        ..Default::default()
    };
    let spec = VmSpec {
        token_iss: "https://cluster1.example".into(),
        ..Default::default()
    };
    let (run, seen) = scenario(
        spec.clone(),
        remote,
        None,
        &["--timeout", "2s", "--skip-agent"],
    );
    run.expect("ca.token", "pass", "");
    assert_eq!(seen.ca_cluster_ids, vec!["cluster1"]);
    // A cluster istiod does not know: Unauthenticated, istiod's one answer.
    let unknown = Behaviour {
        cluster_id: "cluster2".into(),
        ..Default::default()
    };
    let (run, _) = scenario(
        VmSpec::default(),
        unknown,
        None,
        &["--timeout", "2s", "--skip-agent"],
    );
    run.expect("ca.token", "fail", "ISTIO_META_CLUSTER_ID");
    assert!(
        run.detail("ca.token")
            .contains("request authenticate failure"),
        "{}",
        run.detail("ca.token")
    );
    assert!(!run.hint("ca.token").contains("PermissionDenied"));
}

#[test]
fn a_token_not_valid_yet_is_refused() {
    let spec = VmSpec {
        token_issued_in: 3600,
        ..Default::default()
    };
    let (run, seen) = scenario(
        spec,
        Behaviour::default(),
        None,
        &["--timeout", "2s", "--skip-agent"],
    );
    run.expect("files.token", "fail", "valid only from");
    run.expect("ca.token", "fail", "Unauthenticated");
    assert!(seen.ca_subjects.is_empty());
}

#[test]
fn stand_in_is_not_ready_with_unusable_files() {
    // A token for the wrong audience: the real agent could never get a
    // certificate with it, so the stand-in is not ready either.
    let spec = VmSpec {
        token_aud: vec!["https://kubernetes.default.svc".into()],
        ..Default::default()
    };
    files_only(spec, |root| {
        let _agent = start_agent(root, &[]);
        let run = verify(root, &["--timeout", "1s"]);
        run.expect("agent.ready", "fail", "");
        run.expect("agent.xds", "fail", "");
    });
    // A root-cert.pem without a CA certificate: the same.
    files_only(VmSpec::default(), |root| {
        let leaf = fake_istiod::TestCa::new("x").server_cert(&["x"]).0;
        std::fs::write(root.file("/etc/certs/root-cert.pem"), leaf).unwrap();
        let _agent = start_agent(root, &[]);
        let run = verify(root, &["--timeout", "1s"]);
        run.expect("agent.ready", "fail", "");
    });
}

/// The capture record for `root` with `backend`, written as install does.
fn record(root: &VmRoot, backend: istio_vm::capture::Backend) -> istio_vm::capture::Rendered {
    use std::os::unix::fs::PermissionsExt;
    let env = root.env();
    let inp = istio_vm::capture::Inputs {
        env: &env,
        resolv_conf: "nameserver 127.0.0.1\n",
        uid: Some(verify_harness::PROXY_UID),
        gid: Some(verify_harness::PROXY_UID),
        host_ipv6: false,
        exclude_inbound_ports: &[],
        allow_ssh_capture: false,
        exclude_outbound_cidrs: &[],
    };
    let (_, r) = istio_vm::capture::render(&inp, backend).unwrap();
    let dir = root.file("/var/lib/istio-vm/capture");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (name, body) in r.record_files() {
        std::fs::write(dir.join(name), body).unwrap();
    }
    r
}

/// Runs `cmd` with `input` on stdin; it must succeed.
fn sh(cmd: &[&str], input: &str) {
    use std::io::Write;
    let mut c = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd[0]));
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "{cmd:?} failed:\n{input}");
}

#[test]
fn capture_rules_are_compared_in_each_backend() {
    // The record applied by each backend istio-vm can use, in the VM's
    // namespace (istiod a veth pair away): capture.rules passes, names the
    // backend, and fails naming what is missing once that backend is
    // flushed, as nftables.service, firewalld or an admin would.
    use istio_vm::capture::{Backend, Rendered};
    type Case = (
        Backend,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: [Case; 3] = [
        (
            Backend::Iptables,
            "iptables-nft",
            &["iptables-nft-restore", "--noflush"],
            &["iptables-nft", "-t", "nat", "-F"],
        ),
        (
            Backend::Iptables,
            "iptables-legacy",
            &["iptables-legacy-restore", "--noflush"],
            &["iptables-legacy", "-t", "nat", "-F"],
        ),
        (
            Backend::Nftables,
            "nftables",
            &["nft", "-f", "-"],
            &["nft", "flush", "ruleset"],
        ),
    ];
    for (backend, name, apply, flush) in cases {
        let wire = Wire::new();
        let root = VmRoot::new(
            &VmSpec::default().on_wire(),
            &fake_istiod::TestCa::new("cluster.local").cert_pem,
        );
        let (ok, flushed) = Wire::run_in(&wire.vm, move || {
            let text = match record(&root, backend) {
                Rendered::Iptables { v4, .. } => v4,
                Rendered::Nftables { script } => script,
            };
            sh(apply, &text);
            let args = &["--timeout", "1s", "--skip-agent"];
            let ok = verify(&root, args);
            let st = std::process::Command::new(flush[0])
                .args(&flush[1..])
                .status()
                .unwrap();
            assert!(st.success(), "{flush:?}");
            (ok, verify(&root, args))
        });
        ok.expect("capture.rules", "pass", "equal the record");
        assert!(
            ok.detail("capture.rules").contains(&format!("({name})")),
            "{name}: {}",
            ok.detail("capture.rules")
        );
        flushed.expect("capture.rules", "fail", "missing");
        assert!(
            flushed
                .hint("capture.rules")
                .contains("istio-vm capture apply"),
            "{}",
            flushed.hint("capture.rules")
        );
    }
}
