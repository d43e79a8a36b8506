//! `agent.*`: the local sidecar as pilot-agent and Envoy expose it
//! (reference §4.2): istio.service, `:15021/healthz/ready`, Envoy admin on
//! `127.0.0.1:15000`, and the DNS proxy on `127.0.0.1:15053`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::inputs::Inputs;
use super::net::{self, ConnError};
use super::{fail, pass, skip};
use crate::report::Check;

pub const HEALTH: &str = "127.0.0.1:15021";
pub const ADMIN: &str = "127.0.0.1:15000";
pub const DNS: &str = "127.0.0.1:15053";

/// A minimal HTTP/1.1 GET (the endpoints are local and tiny).
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, ConnError> {
    let mut s = net::tcp_connect(&[addr], timeout).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: istio-vm\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let io = async {
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        // Responses here are small; cap what we keep.
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 || buf.len() > 1 << 20 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(timeout, io).await {
        Err(_) => return Err(ConnError::Timeout(addr)),
        Ok(Err(e)) => return Err(ConnError::Other(addr, e)),
        Ok(Ok(b)) => b,
    };
    parse_response(&buf)
        .ok_or_else(|| ConnError::Other(addr, std::io::Error::other("not an HTTP response")))
}

fn parse_response(buf: &[u8]) -> Option<HttpResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect::<Vec<_>>();
    let raw = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..pos])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        raw = &raw[pos + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

fn not_running(id: &str, what: &str, e: &ConnError) -> Check {
    match e {
        ConnError::Refused(a) => fail(
            id,
            format!("nothing listens on {a} ({what})"),
            "the sidecar is not running: `systemctl start istio`, then see `journalctl -u istio` and /var/log/istio/istio.err.log",
        ),
        ConnError::Timeout(a) => fail(
            id,
            format!("{a} did not answer in time ({what})"),
            "the sidecar is hung or overloaded: restart it with `systemctl restart istio`",
        ),
        ConnError::Other(a, err) => fail(
            id,
            format!("{a}: {err} ({what})"),
            "the sidecar is not serving its local endpoints",
        ),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("constant address")
}

pub async fn service(live: bool) -> Check {
    let id = "agent.service";
    if !live {
        return skip(
            id,
            "not checked under --root: nothing live is looked at there",
            "run verify without --root on the VM to check istio.service",
        );
    }
    // LoadState tells a missing package from a stopped service.
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new("systemctl")
            .args([
                "show",
                "--property=LoadState,ActiveState,SubState",
                "istio.service",
            ])
            .output()
    })
    .await;
    let o = match out {
        Ok(Ok(o)) if o.status.success() => o,
        Ok(Ok(o)) => {
            let why = String::from_utf8_lossy(&o.stderr)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return skip(
                id,
                format!("systemctl cannot tell: {why}"),
                "systemd is not running here (a container?): check the sidecar process by hand",
            );
        }
        _ => {
            return skip(
                id,
                "systemctl is not available here",
                "check the sidecar process by hand (ps, journalctl)",
            );
        }
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let prop = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let (load, active, sub) = (prop("LoadState"), prop("ActiveState"), prop("SubState"));
    if load == "not-found" {
        return fail(
            id,
            "istio.service does not exist",
            "install the istio-sidecar package (.deb/.rpm from the Istio release): it ships pilot-agent, Envoy and istio.service",
        );
    }
    if active == "active" {
        return pass(id, format!("istio.service is active ({sub})"));
    }
    let hint = if active == "activating" || active == "failed" {
        "istio.service keeps failing: see `journalctl -u istio` and /var/log/istio/istio.err.log (log.errors below)"
    } else {
        "start it with `systemctl enable --now istio` (the istio.io guide never enables it, so it does not start at boot)"
    };
    fail(id, format!("istio.service is {active} ({sub})"), hint)
}

pub async fn ready(timeout: Duration) -> Check {
    let id = "agent.ready";
    match http_get(addr(HEALTH), "localhost", "/healthz/ready", timeout).await {
        Err(e) => not_running(id, "Envoy's :15021 health listener", &e),
        Ok(r) if r.status == 200 => pass(
            id,
            ":15021/healthz/ready is 200: Envoy has its configuration and is live",
        ),
        Ok(r) => {
            let msg = r.body.trim();
            let hint = if msg.contains("config not received") {
                "XDS is not flowing: the failing network or CA check above says why (Envoy proxy is NOT ready: config not received from XDS server)"
            } else if msg.contains("rejected") {
                "Envoy rejected the configuration istiod sent: check istio.log for the NACK and the Istio versions of VM and istiod"
            } else {
                "the agent is starting or cannot get its configuration: see log.errors and /var/log/istio/istio.log"
            };
            fail(
                id,
                format!(
                    ":15021/healthz/ready is {}: {}",
                    r.status,
                    if msg.is_empty() {
                        "no reason given"
                    } else {
                        msg
                    }
                ),
                hint,
            )
        }
    }
}

pub async fn connected(timeout: Duration) -> Check {
    let id = "agent.xds";
    match http_get(
        addr(ADMIN),
        "localhost",
        "/stats?filter=control_plane.connected_state",
        timeout,
    )
    .await
    {
        Err(e) => not_running(id, "Envoy admin", &e),
        Ok(r) if r.status != 200 => fail(
            id,
            format!("Envoy admin /stats answered {}", r.status),
            "Envoy admin is not healthy: restart istio",
        ),
        Ok(r) => {
            let v = r.body.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("control_plane.connected_state:")
                    .map(|v| v.trim().to_string())
            });
            match v.as_deref() {
                Some("1") => pass(
                    id,
                    "Envoy is connected to its XDS source (control_plane.connected_state 1)",
                ),
                Some(v) => fail(
                    id,
                    format!("control_plane.connected_state is {v}"),
                    "Envoy is not connected to the agent's XDS proxy, which follows the agent's stream to istiod: see xds.stream and log.errors",
                ),
                None => fail(
                    id,
                    "Envoy admin reports no control_plane.connected_state",
                    "this is not Envoy's admin port, or Envoy has no ADS source",
                ),
            }
        }
    }
}

pub async fn live(timeout: Duration) -> Check {
    let id = "agent.live";
    match http_get(addr(ADMIN), "localhost", "/server_info", timeout).await {
        Err(e) => not_running(id, "Envoy admin", &e),
        Ok(r) => {
            let state = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_string));
            match state.as_deref() {
                Some("LIVE") => pass(id, "Envoy server state LIVE"),
                Some(s) => fail(
                    id,
                    format!("Envoy server state {s}"),
                    "Envoy is still initializing: it waits for its first clusters and listeners from istiod (see xds.stream)",
                ),
                None => fail(
                    id,
                    format!("/server_info answered {} without a state", r.status),
                    "this is not Envoy's admin port",
                ),
            }
        }
    }
}

/// A DNS query for `name` (type A) with a random-enough id.
pub fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// rcode and IPv4 answers of a response to `id`.
pub fn dns_answers(resp: &[u8], id: u16) -> Option<(u8, Vec<std::net::Ipv4Addr>)> {
    if resp.len() < 12 || u16::from_be_bytes([resp[0], resp[1]]) != id || resp[2] & 0x80 == 0 {
        return None;
    }
    let rcode = resp[3] & 0x0f;
    let qd = u16::from_be_bytes([resp[4], resp[5]]);
    let an = u16::from_be_bytes([resp[6], resp[7]]);
    let mut i = 12;
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let l = *resp.get(i)? as usize;
            if l & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + l;
            if l == 0 {
                return Some(i);
            }
        }
    };
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(i)?;
        let ty = u16::from_be_bytes([*resp.get(i)?, *resp.get(i + 1)?]);
        let len = u16::from_be_bytes([*resp.get(i + 8)?, *resp.get(i + 9)?]) as usize;
        let data = resp.get(i + 10..i + 10 + len)?;
        if ty == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Some((rcode, out))
}

pub async fn dns(inputs: &Inputs, timeout: Duration) -> Check {
    let id = "agent.dns";
    if !inputs.dns_capture() {
        return skip(
            id,
            "DNS capture is off (ISTIO_META_DNS_CAPTURE is not true): the agent runs no DNS proxy",
            "mesh names then do not resolve on this VM; regenerate the bundle with --capture-dns (the default) if you need them",
        );
    }
    let name = inputs
        .discovery
        .as_ref()
        .map(|t| t.host.clone())
        .unwrap_or_else(|| "istiod.istio-system.svc".into());
    let qid = (std::process::id() as u16) ^ 0x5a5a;
    let res = async {
        let s = UdpSocket::bind("127.0.0.1:0").await?;
        s.connect(DNS).await?;
        s.send(&dns_query(&name, qid)).await?;
        let mut buf = [0u8; 1500];
        loop {
            let n = s.recv(&mut buf).await?;
            if let Some(a) = dns_answers(&buf[..n], qid) {
                return Ok::<_, std::io::Error>(a);
            }
        }
    };
    match tokio::time::timeout(timeout, res).await {
        Err(_) => fail(
            id,
            format!(
                "the DNS proxy on {DNS} did not answer a query for {name} within {}",
                net::ms(timeout)
            ),
            "the agent's DNS proxy is silent: it answers only after istiod pushed its name table (is XDS flowing?); \
             with DNS captured, every lookup on this VM now hangs: check agent.xds and log.errors, or restart istio",
        ),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => fail(
            id,
            format!("nothing listens on {DNS} (udp)"),
            "DNS capture is on but the agent's DNS proxy is not running: the sidecar is down (and with capture rules in place, \
             DNS on this VM fails), start istio or remove capture (`istio-vm capture remove`)",
        ),
        Ok(Err(e)) => fail(id, format!("{DNS}: {e}"), "the DNS proxy is not usable"),
        Ok(Ok((rcode, addrs))) => {
            if addrs.is_empty() {
                pass(
                    id,
                    format!(
                        "the DNS proxy answered for {name} (rcode {rcode}, no A record: the name is resolved outside the mesh)"
                    ),
                )
            } else {
                pass(
                    id,
                    format!(
                        "the DNS proxy answered {name} -> {}",
                        addrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_parsing() {
        let r =
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nServer: envoy\r\n\r\nnot ready")
                .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("server"), Some("envoy"));
        assert_eq!(r.body, "not ready");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, "abcde");
        assert!(parse_response(b"garbage").is_none());
    }

    #[test]
    fn dns_wire() {
        let q = dns_query("istiod.istio-system.svc", 7);
        // A hand-built answer: the query echoed, one A record via a pointer.
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
        assert_eq!(
            dns_answers(&r, 7),
            Some((0, vec!["127.0.0.1".parse().unwrap()]))
        );
        assert_eq!(dns_answers(&r, 8), None);
        assert_eq!(dns_answers(&q, 7), None, "a query is not an answer");
    }
}
