//! `agent.*`: the local sidecar as pilot-agent and Envoy expose it
//! (reference §4.2): istio.service, `:15021/healthz/ready`, Envoy admin on
//! `127.0.0.1:15000`, and the DNS proxy on `127.0.0.1:15053`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use super::inputs::Inputs;
use super::net::{self, ConnError};
use super::{fail, pass, skip};
use crate::report::Check;

pub const HEALTH: &str = "127.0.0.1:15021";
pub const ADMIN: &str = "127.0.0.1:15000";
pub const DNS: &str = "127.0.0.1:15053";

/// A response of a local endpoint (they are small).
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a request failed, in the terms the checks explain.
fn conn_error(addr: SocketAddr, e: &reqwest::Error) -> ConnError {
    if e.is_timeout() {
        return ConnError::Timeout(addr);
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return ConnError::Refused(addr);
            }
            return ConnError::Other(addr, std::io::Error::new(io.kind(), io.to_string()));
        }
        src = s.source();
    }
    ConnError::Other(addr, std::io::Error::other(e.to_string()))
}

/// GET `path` from a local endpoint, bounded by `timeout` (connect and body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, ConnError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("istio-vm")
        .build()
        .map_err(|e| ConnError::Other(addr, std::io::Error::other(e.to_string())))?;
    let resp = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| conn_error(addr, &e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| conn_error(addr, &e))?;
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
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
    match http_get(addr(HEALTH), "/healthz/ready", timeout).await {
        Err(e) => not_running(id, "Envoy's :15021 health listener", &e),
        Ok(r) if r.status == 200 => pass(
            id,
            ":15021/healthz/ready is 200: Envoy has its configuration and is live",
        ),
        // pilot-agent answers with a bare status code: its reason goes only
        // to its log, as `Envoy proxy is NOT ready: ...`
        // (pilot/cmd/pilot-agent/status/server.go@1.10.0 and at master,
        // handleReadyProbe), which log.errors reads.
        Ok(r) => fail(
            id,
            format!(":15021/healthz/ready is {}", r.status),
            "Envoy is not ready: the agent writes why to /var/log/istio/istio.log (`Envoy proxy is NOT ready: ...`, see log.errors); \
             agent.xds and the network and CA checks above say whether configuration reaches it",
        ),
    }
}

pub async fn connected(timeout: Duration) -> Check {
    let id = "agent.xds";
    match http_get(
        addr(ADMIN),
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
    match http_get(addr(ADMIN), "/server_info", timeout).await {
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

/// A DNS query for `name` and `rtype` with id `id`. A label over 63 bytes
/// or a name over 255 is an error, not truncated.
pub fn dns_query(name: &str, id: u16, rtype: RecordType) -> Result<Vec<u8>, String> {
    let n = Name::from_ascii(name).map_err(|e| format!("`{name}` is not a DNS name: {e}"))?;
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(n, rtype));
    m.to_vec().map_err(|e| format!("`{name}`: {e}"))
}

/// The response code and A/AAAA answers of a response to `id`.
pub fn dns_answers(resp: &[u8], id: u16) -> Option<(ResponseCode, Vec<IpAddr>)> {
    let m = Message::from_vec(resp).ok()?;
    if m.id() != id || m.message_type() != MessageType::Response {
        return None;
    }
    let addrs = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Some((m.response_code(), addrs))
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
    let base = (std::process::id() as u16) ^ 0x5a5a;
    let queries = match [RecordType::A, RecordType::AAAA]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Ok((
                base.wrapping_add(i as u16),
                dns_query(&name, base.wrapping_add(i as u16), *t)?,
            ))
        })
        .collect::<Result<Vec<(u16, Vec<u8>)>, String>>()
    {
        Ok(q) => q,
        Err(e) => return fail(id, e, "fix the discovery address"),
    };
    // A and AAAA, as a resolver asks; both answers are awaited.
    let res = async {
        let s = UdpSocket::bind("127.0.0.1:0").await?;
        s.connect(DNS).await?;
        for (_, q) in &queries {
            s.send(q).await?;
        }
        let mut buf = [0u8; 1500];
        let mut got: Vec<(u16, (ResponseCode, Vec<IpAddr>))> = Vec::new();
        while got.len() < queries.len() {
            let n = s.recv(&mut buf).await?;
            for (qid, _) in &queries {
                if !got.iter().any(|(g, _)| g == qid)
                    && let Some(a) = dns_answers(&buf[..n], *qid)
                {
                    got.push((*qid, a));
                }
            }
        }
        let rcode = got
            .iter()
            .map(|(_, (r, _))| *r)
            .find(|r| *r != ResponseCode::NoError)
            .unwrap_or(ResponseCode::NoError);
        let addrs: Vec<IpAddr> = got.into_iter().flat_map(|(_, (_, a))| a).collect();
        Ok::<_, std::io::Error>((rcode, addrs))
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
        // The proxy answers SERVFAIL to everything until istiod has sent
        // its name table (pkg/dns/client/dns.go at master, ServeDNS:
        // `dns request for host ... before lookup table is loaded`;
        // pilot/pkg/dns/dns.go@1.10.0).
        Ok(Ok((ResponseCode::ServFail, _))) => fail(
            id,
            format!("the DNS proxy on {DNS} answered SERVFAIL for {name}"),
            "the agent's DNS proxy has no name table from istiod yet (it answers SERVFAIL until the first NDS push): \
             XDS is not flowing, see xds.stream, agent.xds and log.errors; with DNS captured every lookup on this VM fails meanwhile",
        ),
        Ok(Ok((rcode, addrs))) => {
            if addrs.is_empty() {
                pass(
                    id,
                    format!(
                        "the DNS proxy answered for {name} ({rcode}, no A/AAAA record: the name is resolved outside the mesh)"
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
    fn dns_wire() {
        let q = dns_query("istiod.istio-system.svc", 7, RecordType::A).unwrap();
        // The same answer a resolver would give: the query echoed, one A record.
        let mut m = Message::from_vec(&q).unwrap();
        m.set_message_type(MessageType::Response);
        m.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("istiod.istio-system.svc").unwrap(),
            30,
            RData::A("127.0.0.1".parse::<std::net::Ipv4Addr>().unwrap().into()),
        ));
        let r = m.to_vec().unwrap();
        assert_eq!(
            dns_answers(&r, 7),
            Some((ResponseCode::NoError, vec!["127.0.0.1".parse().unwrap()]))
        );
        assert_eq!(dns_answers(&r, 8), None);
        assert_eq!(dns_answers(&q, 7), None, "a query is not an answer");
    }

    /// One HTTP response from a local listener, whatever the request.
    async fn serve_once(raw: &'static [u8]) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(raw).await;
            }
        });
        a
    }

    #[tokio::test]
    async fn chunked_bodies_whole_or_an_error() {
        let t = Duration::from_secs(5);
        let a = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").await;
        let r = http_get(a, "/stats", t).await.ok().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
        // The hand-written decoder returned "abc" here, silently.
        let a = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nde\r\n0\r\n\r\n").await;
        assert!(http_get(a, "/stats", t).await.is_err());
        // A bare 503, as pilot-agent's /healthz/ready answers.
        let a = serve_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let r = http_get(a, "/healthz/ready", t).await.ok().unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, ""));
    }

    #[test]
    fn long_labels_are_an_error_not_truncated() {
        // The hand-written encoder cut labels to 63 bytes and asked another name.
        let long = format!("{}.example", "a".repeat(64));
        assert!(dns_query(&long, 1, RecordType::A).is_err());
        assert!(dns_query(&format!("{}.example", "a".repeat(63)), 1, RecordType::A).is_ok());
        let q = dns_query("x.example", 1, RecordType::AAAA).unwrap();
        let m = Message::from_vec(&q).unwrap();
        assert_eq!(m.queries()[0].query_type(), RecordType::AAAA);
    }
}
