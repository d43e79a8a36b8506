//! A stand-in for pilot-agent + Envoy's *local* endpoints, for tests only.
//!
//! No real pilot-agent or Envoy can be installed where the tests run, so this
//! binary serves what `istio-vm verify` and the e2e harness look at on a VM:
//!
//! - `:15021/healthz/ready` (Envoy's listener routed to the agent): 200 when
//!   "connected", else a bare 503 with no body, the reason going only to the
//!   agent's log as `Envoy proxy is NOT ready: ...`
//!   (pilot/cmd/pilot-agent/status/server.go handleReadyProbe, ready/probe.go);
//! - Envoy admin `127.0.0.1:15000`: `/stats?filter=...` with
//!   `control_plane.connected_state: 1|0`, `/server_info` with `"state": "LIVE"`,
//!   `/ready`;
//! - the agent's DNS proxy on `127.0.0.1:15053` (UDP and TCP), answering A and
//!   AAAA queries from a hosts-style file (the real proxy answers mesh names
//!   from istiod's NDS table and forwards the rest; this one answers NXDOMAIN
//!   for names it does not know). Like the real one before istiod's first
//!   name table, it answers SERVFAIL to everything while not "connected"
//!   (pkg/dns/client/dns.go ServeDNS; pilot/pkg/dns/dns.go@1.10.0).
//!
//! - with `--outbound ADDR`, Envoy's virtual outbound listener (15001),
//!   where capture sends applications' connections: it reads the original
//!   destination (SO_ORIGINAL_DST) and, for a destination named by
//!   `--http-route ORIG=UPSTREAM`, carries one HTTP exchange to UPSTREAM as
//!   Envoy's outbound HTTP connection manager does: the response's `server`
//!   header overwritten with Envoy's default name `envoy` (Istio leaves the
//!   outbound server name unset: pilot/pkg/networking/core/httproute.go@1.24.0
//!   GetProxyHeadersFromProxyConfig; pilot/pkg/networking/core/v1alpha3/
//!   listener.go@1.10.0 names only inbound `istio-envoy`) and the router's
//!   `x-envoy-upstream-service-time` added. For a destination named by
//!   `--tcp-route ORIG=UPSTREAM` it carries the bytes untouched to UPSTREAM,
//!   as Envoy's tcp_proxy does for a TLS or TCP service port (a
//!   mesh-allocated address to the service's endpoint). Any other
//!   destination is passed through byte for byte to itself
//!   (PassthroughCluster, TCP). Its upstream sockets
//!   belong to istio-proxy (from the root's /etc/passwd), as Envoy's do, so
//!   the capture rules let them out.
//!
//! It does not talk to istiod. At startup it reads the files install places
//! and is "ready" only when it could use them as the real agent must: the
//! token decodes as a JWT with audience `istio-ca`, root-cert.pem parses and
//! holds a CA certificate, cluster.env exists. Otherwise it is not ready and
//! its log says why. What it proves: install placed files a real agent could
//! authenticate and verify istiod with, and verify reads the endpoints
//! right. What it does not prove: that istiod accepts the token or that
//! Envoy gets configuration (the fake istiod and a real cluster do). Misbehaviour is
//! chosen with flags or `STAND_IN_*` environment variables so a systemd unit
//! can set it. Its own messages go to stderr; the agent's success-path log
//! lines (reference §4.5) go to stdout (which istio-start.sh appends to
//! istio.log), or to `--log FILE`. Unknown `--flags` are ignored with a
//! message, as the stand-in runs where pilot-agent would, with its flags.
//!
//! ```text
//! stand-in-agent [--root DIR] [--health-addr A] [--admin-addr A] [--dns-addr A]
//!                [--hosts FILE] [--log FILE] [--not-ready] [--disconnected]
//!                [--dns-silent] [--no-dns] [--outbound ADDR]
//!                [--http-route IP:PORT=IP:PORT]... [--tcp-route IP:PORT=IP:PORT]...
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const ROOT_CERT: &str = "etc/certs/root-cert.pem";
const TOKEN: &str = "var/run/secrets/tokens/istio-token";
const CLUSTER_ENV: &str = "var/lib/istio/envoy/cluster.env";
const MESH_CONFIG: &str = "etc/istio/config/mesh";

#[derive(Debug, Clone)]
struct Opts {
    root: PathBuf,
    health_addr: SocketAddr,
    admin_addr: SocketAddr,
    dns_addr: SocketAddr,
    hosts: Option<PathBuf>,
    log: Option<PathBuf>,
    not_ready: bool,
    disconnected: bool,
    dns_silent: bool,
    no_dns: bool,
    outbound: Option<SocketAddr>,
    http_routes: HashMap<SocketAddr, SocketAddr>,
    tcp_routes: HashMap<SocketAddr, SocketAddr>,
}

const USAGE: &str = "usage: stand-in-agent [--root DIR] [--health-addr ADDR] [--admin-addr ADDR] \
[--dns-addr ADDR] [--hosts FILE] [--log FILE] [--not-ready] [--disconnected] [--dns-silent] [--no-dns] \
[--outbound ADDR] [--http-route IP:PORT=IP:PORT]... [--tcp-route IP:PORT=IP:PORT]...\n\
environment: STAND_IN_ROOT, STAND_IN_HEALTH_ADDR, STAND_IN_ADMIN_ADDR, STAND_IN_DNS_ADDR, \
STAND_IN_HOSTS, STAND_IN_LOG, STAND_IN_NOT_READY=1, STAND_IN_DISCONNECTED=1, STAND_IN_DNS_SILENT=1, \
STAND_IN_NO_DNS=1, STAND_IN_OUTBOUND (flags win)";

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

fn parse_addr(what: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{what}: `{v}` is not an address like 127.0.0.1:15000"))
}

fn parse_opts() -> Result<Opts, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut o = Opts {
        root: env("STAND_IN_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from),
        health_addr: parse_addr(
            "STAND_IN_HEALTH_ADDR",
            &env("STAND_IN_HEALTH_ADDR").unwrap_or_else(|| "0.0.0.0:15021".into()),
        )?,
        admin_addr: parse_addr(
            "STAND_IN_ADMIN_ADDR",
            &env("STAND_IN_ADMIN_ADDR").unwrap_or_else(|| "127.0.0.1:15000".into()),
        )?,
        dns_addr: parse_addr(
            "STAND_IN_DNS_ADDR",
            &env("STAND_IN_DNS_ADDR").unwrap_or_else(|| "127.0.0.1:15053".into()),
        )?,
        hosts: env("STAND_IN_HOSTS").map(PathBuf::from),
        log: env("STAND_IN_LOG").map(PathBuf::from),
        not_ready: env_flag("STAND_IN_NOT_READY"),
        disconnected: env_flag("STAND_IN_DISCONNECTED"),
        dns_silent: env_flag("STAND_IN_DNS_SILENT"),
        no_dns: env_flag("STAND_IN_NO_DNS"),
        outbound: env("STAND_IN_OUTBOUND")
            .map(|v| parse_addr("STAND_IN_OUTBOUND", &v))
            .transpose()?,
        http_routes: HashMap::new(),
        tcp_routes: HashMap::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--root" => o.root = PathBuf::from(value("--root")?),
            "--health-addr" => o.health_addr = parse_addr("--health-addr", &value(&a)?)?,
            "--admin-addr" => o.admin_addr = parse_addr("--admin-addr", &value(&a)?)?,
            "--dns-addr" => o.dns_addr = parse_addr("--dns-addr", &value(&a)?)?,
            "--hosts" => o.hosts = Some(PathBuf::from(value(&a)?)),
            "--log" => o.log = Some(PathBuf::from(value(&a)?)),
            "--not-ready" => o.not_ready = true,
            "--disconnected" => o.disconnected = true,
            "--dns-silent" => o.dns_silent = true,
            "--no-dns" => o.no_dns = true,
            "--outbound" => o.outbound = Some(parse_addr("--outbound", &value(&a)?)?),
            "--http-route" | "--tcp-route" => {
                let v = value(&a)?;
                let (from, to) = v
                    .split_once('=')
                    .ok_or_else(|| format!("{a}: `{v}` is not ORIG=UPSTREAM"))?;
                let routes = if a == "--http-route" {
                    &mut o.http_routes
                } else {
                    &mut o.tcp_routes
                };
                routes.insert(parse_addr(&a, from)?, parse_addr(&a, to)?);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            // pilot-agent takes many flags with values (ISTIO_AGENT_FLAGS);
            // a stand-in started in its place must not die on them.
            other => log(&format!("ignoring pilot-agent argument `{other}`")),
        }
    }
    Ok(o)
}

/// What the endpoints report, fixed at startup.
struct State {
    ready: bool,
    connected: bool,
    /// Why not ready, in the agent's words.
    not_ready_reason: String,
    names: HashMap<String, Vec<IpAddr>>,
    dns_silent: bool,
}

fn log(msg: &str) {
    eprintln!("stand-in-agent: {msg}");
}

/// Appends to the agent-style log file, like istio-start.sh's `>>` redirect.
/// Without `--log`, the lines go to stdout, which istio-start.sh appends to
/// /var/log/istio/istio.log like the real agent's.
fn agent_log(path: &Option<PathBuf>, line: &str) {
    // Istio's log format: RFC 3339 time, level, scope, message, tab-separated.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let Some(p) = path else {
        println!("{now}\tinfo\t{line}");
        return;
    };
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
    {
        Ok(mut f) => {
            let _ = writeln!(f, "{now}\tinfo\t{line}");
        }
        Err(e) => log(&format!("cannot append to {}: {e}", p.display())),
    }
}

/// `rel` under `root`, symlinks resolved as in a chroot (a Debian tree's
/// `var/run -> /run` must mean `ROOT/run`, not the host's /run).
fn under_root(root: &Path, rel: &str) -> PathBuf {
    istio_vm::sysroot::Sysroot::new(root)
        .and_then(|r| r.resolve(&format!("/{rel}")))
        .map(|r| r.host)
        .unwrap_or_else(|_| root.join(rel))
}

/// `addr name...` lines; `#` comments. Later lines add addresses.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut m: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut parts = line.split_whitespace();
        let Some(Ok(ip)) = parts.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in parts {
            let e = m.entry(name.trim_end_matches('.').to_ascii_lowercase());
            let v = e.or_default();
            if !v.contains(&ip) {
                v.push(ip);
            }
        }
    }
    m
}

/// The discovery address from the placed mesh config, for the log lines.
fn discovery_address(root: &Path) -> String {
    std::fs::read(under_root(root, MESH_CONFIG))
        .ok()
        .and_then(|b| istio_vm::verify::inputs::discovery_address(&b))
        .unwrap_or_else(|| istio_vm::verify::inputs::DEFAULT_DISCOVERY.to_string())
}

/// Why the placed files would not let a real agent start, if they would not:
/// the token must decode with audience istio-ca (istiod reviews it for that,
/// security.TokenAudiences) and root-cert.pem must hold a CA certificate
/// (the agent verifies istiod with it).
fn unusable_files(root: &Path) -> Vec<String> {
    let mut why = Vec::new();
    for rel in [ROOT_CERT, TOKEN, CLUSTER_ENV] {
        let p = under_root(root, rel);
        match std::fs::read(&p) {
            Ok(b) if b.is_empty() => why.push(format!("missing /{rel} (empty)")),
            Ok(b) if rel == TOKEN => match istio_vm::verify::files::decode_claims(&b) {
                Ok(c) if c.aud.iter().any(|a| a == "istio-ca") => {}
                Ok(c) => why.push(format!("/{rel} has audience {:?}, not istio-ca", c.aud)),
                Err(e) => why.push(format!("/{rel}: {e}")),
            },
            Ok(b) if rel == ROOT_CERT => match istio_vm::verify::files::parse_pem_certs(&b) {
                Ok(certs) if certs.iter().any(|(c, _)| c.is_ca) => {}
                Ok(certs) if certs.is_empty() => why.push(format!("/{rel} holds no certificate")),
                Ok(_) => why.push(format!("/{rel} holds no CA certificate")),
                Err(e) => why.push(format!("/{rel}: {e}")),
            },
            Ok(_) => {}
            Err(_) => why.push(format!("missing /{rel}")),
        }
    }
    why
}

fn load_state(o: &Opts) -> State {
    let missing = unusable_files(&o.root);
    let hosts_path = o
        .hosts
        .clone()
        .unwrap_or_else(|| under_root(&o.root, "etc/hosts"));
    let names = match std::fs::read_to_string(&hosts_path) {
        Ok(t) => parse_hosts(&t),
        Err(e) => {
            log(&format!(
                "no DNS names: cannot read {}: {e}",
                hosts_path.display()
            ));
            HashMap::new()
        }
    };
    let disco = discovery_address(&o.root);
    let (ready, connected, reason) = if !missing.is_empty() {
        log(&format!("not ready: {}", missing.join(", ")));
        if missing.iter().any(|m| m.contains(TOKEN)) {
            // security/pkg/credentialfetcher/plugin/token.go
            agent_log(
                &o.log,
                "failed to fetch token from file: open ./var/run/secrets/tokens/istio-token: no such file or directory",
            );
        }
        (
            false,
            false,
            format!(
                "config not received from XDS server (is Istiod running?): cds updates: 0 successful, 0 rejected; lds updates: 0 successful, 0 rejected ({})",
                missing.join(", ")
            ),
        )
    } else if o.disconnected {
        (
            false,
            false,
            "config not received from XDS server (is Istiod running?): cds updates: 0 successful, 0 rejected; lds updates: 0 successful, 0 rejected".to_string(),
        )
    } else if o.not_ready {
        (
            false,
            true,
            "config not fully received from XDS server: cds updates: 1 successful, 0 rejected; lds updates: 0 successful, 0 rejected".to_string(),
        )
    } else {
        (true, true, String::new())
    };
    agent_log(
        &o.log,
        &format!(
            "xdsproxy\tInitializing with upstream address \"{disco}\" and cluster \"Kubernetes\""
        ),
    );
    if connected {
        agent_log(
            &o.log,
            &format!("xdsproxy\tconnected to upstream XDS server: {disco}"),
        );
    }
    if ready {
        agent_log(&o.log, "Envoy proxy is ready");
    } else {
        agent_log(&o.log, &format!("Envoy proxy is NOT ready: {reason}"));
    }
    State {
        ready,
        connected,
        not_ready_reason: reason,
        names,
        dns_silent: o.dns_silent,
    }
}

// ---- HTTP (just enough HTTP/1.1 for curl and verify: one request, then close)

async fn read_request_line(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines().next().map(str::to_string)
}

async fn respond(s: &mut TcpStream, code: u16, ctype: &str, body: &str, head_only: bool) {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nserver: envoy\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

async fn serve_http(l: TcpListener, st: Arc<State>, admin: bool) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let st = st.clone();
        tokio::spawn(async move {
            let Some(line) = read_request_line(&mut s).await else {
                return;
            };
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("");
            let target = parts.next().unwrap_or("/");
            let head = method == "HEAD";
            if method != "GET" && !head {
                respond(&mut s, 405, "text/plain", "method not allowed\n", false).await;
                return;
            }
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let (code, ctype, body) = route(&st, admin, path, query);
            respond(&mut s, code, ctype, &body, head).await;
        });
    }
}

fn route(st: &State, admin: bool, path: &str, query: &str) -> (u16, &'static str, String) {
    match (admin, path) {
        // A bare status code: the reason is only logged.
        (false, "/healthz/ready") => {
            if st.ready {
                (200, "text/plain", String::new())
            } else {
                log(&format!("Envoy proxy is NOT ready: {}", st.not_ready_reason));
                (503, "text/plain", String::new())
            }
        }
        (true, "/stats") => {
            let all = [
                (
                    "control_plane.connected_state",
                    u8::from(st.connected).to_string(),
                ),
                (
                    "cluster_manager.cds.update_success",
                    u8::from(st.connected).to_string(),
                ),
                (
                    "listener_manager.lds.update_success",
                    u8::from(st.ready).to_string(),
                ),
                ("server.state", "0".to_string()),
            ];
            let filter = query_param(query, "filter").unwrap_or("");
            let body: String = all
                .iter()
                .filter(|(k, _)| filter.is_empty() || k.contains(filter.trim_matches(['^', '$'])))
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect();
            (200, "text/plain", body)
        }
        (true, "/server_info") => (
            200,
            "application/json",
            "{\n \"version\": \"stand-in/0.0.0/Clean/RELEASE/BoringSSL\",\n \"state\": \"LIVE\",\n \"hot_restart_version\": \"disabled\"\n}\n".to_string(),
        ),
        (true, "/ready") => (200, "text/plain", "LIVE\n".to_string()),
        _ => (404, "text/plain", "not found\n".to_string()),
    }
}

// ---- DNS

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The query's name (lower case, no trailing dot), type, and where the
/// question section ends.
fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression is not used in questions we accept
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

/// An answer to `query`, or None for a message that is not a query we parse.
fn answer(st: &State, query: &[u8]) -> Option<Vec<u8>> {
    let (name, qtype, qend) = parse_question(query)?;
    let addrs: Vec<IpAddr> = st
        .names
        .get(&name)
        .map(|v| {
            v.iter()
                .copied()
                .filter(|a| match qtype {
                    TYPE_A => a.is_ipv4(),
                    TYPE_AAAA => a.is_ipv6(),
                    _ => false,
                })
                .collect()
        })
        .unwrap_or_default();
    let known = st.names.contains_key(&name);
    // No name table from istiod yet: SERVFAIL for everything, no answers.
    let addrs = if st.connected { addrs } else { Vec::new() };
    let rcode = match (st.connected, known) {
        (false, _) => 0x02,
        (true, true) => 0x00,
        (true, false) => 0x03,
    };
    let mut out = Vec::with_capacity(qend + 32 * addrs.len());
    out.extend_from_slice(&query[0..2]); // id
    let rd = query[2] & 0x01;
    out.push(0x80 | 0x04 | rd); // QR, AA, RD copied
    out.push(0x80 | rcode); // RA
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..qend]);
    for a in &addrs {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&30u32.to_be_bytes());
        match a {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(out)
}

async fn serve_dns_udp(sock: UdpSocket, st: Arc<State>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if st.dns_silent {
            continue;
        }
        if let Some(resp) = answer(&st, &buf[..n]) {
            let _ = sock.send_to(&resp, peer).await;
        }
    }
}

async fn serve_dns_tcp(l: TcpListener, st: Arc<State>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let st = st.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut msg).await.is_err() {
                    return;
                }
                if st.dns_silent {
                    continue;
                }
                let Some(resp) = answer(&st, &msg) else {
                    return;
                };
                let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&resp);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

// ---- outbound (Envoy's 15001)

/// istio-proxy's uid and gid from the root's /etc/passwd: Envoy runs as
/// istio-proxy, and the capture rules let that owner's sockets out.
fn proxy_owner(root: &Path) -> istio_vm::verify::net::Owner {
    let text = std::fs::read_to_string(under_root(root, "etc/passwd")).unwrap_or_default();
    let ids = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"istio-proxy") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    });
    istio_vm::verify::net::Owner(ids)
}

async fn connect_as(
    owner: istio_vm::verify::net::Owner,
    to: SocketAddr,
) -> std::io::Result<TcpStream> {
    // The socket takes this (only) thread's fsuid/fsgid when it is made.
    let sock = owner.run(|| {
        if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    })?;
    sock.connect(to).await
}

/// Where the connection was going before capture redirected it.
fn original_dst(s: &TcpStream) -> Option<SocketAddr> {
    let a = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
    Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
}

/// Reads until the end of an HTTP head (a GET has no body).
async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 65536 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// One routed HTTP exchange: the request to `up`, the whole response back
/// with Envoy's outbound headers.
async fn http_route(mut down: TcpStream, up: SocketAddr, owner: istio_vm::verify::net::Owner) {
    let start = std::time::Instant::now();
    let Some(req) = read_head(&mut down).await else {
        return;
    };
    let mut resp = Vec::new();
    let got = async {
        let mut u = connect_as(owner, up).await?;
        u.write_all(&req).await?;
        u.read_to_end(&mut resp).await
    }
    .await;
    let out = match got {
        Ok(_) => {
            let end = resp
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(resp.len());
            let head = String::from_utf8_lossy(&resp[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut out = format!("{}\r\n", lines.next().unwrap_or("HTTP/1.1 502 Bad Gateway"));
            for l in lines.filter(|l| !l.to_ascii_lowercase().starts_with("server:")) {
                out.push_str(l);
                out.push_str("\r\n");
            }
            out.push_str(&format!(
                "server: envoy\r\nx-envoy-upstream-service-time: {}\r\n",
                start.elapsed().as_millis()
            ));
            let mut b = out.into_bytes();
            b.extend_from_slice(resp.get(end..).unwrap_or_default());
            b
        }
        // Envoy's answer when the upstream cannot be reached.
        Err(_) => b"HTTP/1.1 503 Service Unavailable\r\nserver: envoy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
    };
    let _ = down.write_all(&out).await;
}

async fn serve_outbound(
    l: TcpListener,
    routes: Arc<HashMap<SocketAddr, SocketAddr>>,
    tcp_routes: Arc<HashMap<SocketAddr, SocketAddr>>,
    owner: istio_vm::verify::net::Owner,
    me: SocketAddr,
) {
    loop {
        let Ok((mut down, _)) = l.accept().await else {
            continue;
        };
        let routes = routes.clone();
        let tcp_routes = tcp_routes.clone();
        tokio::spawn(async move {
            // Not redirected by capture, or to this listener itself: drop.
            let Some(orig) = original_dst(&down).filter(|o| o.port() != me.port()) else {
                return;
            };
            if let Some(up) = routes.get(&orig) {
                return http_route(down, *up, owner).await;
            }
            let to = tcp_routes.get(&orig).copied().unwrap_or(orig);
            if let Ok(mut up) = connect_as(owner, to).await {
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let st = Arc::new(load_state(&o));
    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a).await.unwrap_or_else(|e| {
            log(&format!("cannot listen on {a}: {e}"));
            std::process::exit(1);
        })
    };
    let health = bind(o.health_addr).await;
    let admin = bind(o.admin_addr).await;
    let mut tasks = vec![
        tokio::spawn(serve_http(health, st.clone(), false)),
        tokio::spawn(serve_http(admin, st.clone(), true)),
    ];
    if let Some(a) = o.outbound {
        let l = bind(a).await;
        tasks.push(tokio::spawn(serve_outbound(
            l,
            Arc::new(o.http_routes.clone()),
            Arc::new(o.tcp_routes.clone()),
            proxy_owner(&o.root),
            a,
        )));
    }
    if !o.no_dns {
        // The DNS proxy's sockets are istio-proxy's, as the agent's are: the
        // capture rules put its UDP replies (source port 15053, that owner)
        // into the conntrack zone of the redirected query, or they are never
        // un-NATed (tools/istio-iptables/pkg/capture/run.go SetupDNSRedir).
        let owner = proxy_owner(&o.root);
        let dns_addr = o.dns_addr;
        let udp = owner
            .run(|| std::net::UdpSocket::bind(dns_addr))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            })
            .unwrap_or_else(|e| {
                log(&format!("cannot listen on udp {}: {e}", o.dns_addr));
                std::process::exit(1);
            });
        let tcp = owner
            .run(|| std::net::TcpListener::bind(dns_addr))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                TcpListener::from_std(s)
            })
            .unwrap_or_else(|e| {
                log(&format!("cannot listen on tcp {}: {e}", o.dns_addr));
                std::process::exit(1);
            });
        agent_log(
            &o.log,
            &format!("dns\tStarting local udp DNS server on {}", o.dns_addr),
        );
        agent_log(
            &o.log,
            &format!("dns\tStarting local tcp DNS server on {}", o.dns_addr),
        );
        tasks.push(tokio::spawn(serve_dns_udp(udp, st.clone())));
        tasks.push(tokio::spawn(serve_dns_tcp(tcp, st.clone())));
    }
    log(&format!(
        "serving health on {}, admin on {}, dns {} (ready={}, connected={}, {} DNS names)",
        o.health_addr,
        o.admin_addr,
        if o.no_dns {
            "off".to_string()
        } else {
            format!(
                "on {}{}",
                o.dns_addr,
                if o.dns_silent { " (silent)" } else { "" }
            )
        },
        st.ready,
        st.connected,
        st.names.len()
    ));
    for t in tasks {
        let _ = t.await;
    }
}
