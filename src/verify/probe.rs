//! `probe.*`: the seed's last step (`curl nginx.jd.com` from the VM) as a
//! check: the name resolves (through the DNS proxy when capture is on), a
//! request gets an answer, and the answer came through the sidecar.

use std::time::{Duration, Instant};

use super::net;
use super::{fail, pass, warn};
use crate::report::Check;

/// Whether this VM's own Envoy routed the request as HTTP. Its outbound
/// HTTP connection manager overwrites the response's `server` header with
/// Envoy's default name `envoy`: Istio sets `istio-envoy` only on inbound
/// listeners and gateways and leaves the outbound one unset
/// (pilot/pkg/networking/core/v1alpha3/listener.go@1.10.0 sets ServerName on
/// the inbound HCM only; pilot/pkg/networking/core/httproute.go@1.24.0
/// GetProxyHeadersFromProxyConfig: "outbound uses \"envoy\""; the transformation
/// is OVERWRITE). So `istio-envoy` or a bare `x-envoy-upstream-service-time`
/// is the far side's sidecar or a gateway, not this VM's.
pub fn via_sidecar(server: Option<&str>) -> bool {
    server.is_some_and(|s| s.eq_ignore_ascii_case("envoy"))
}

/// A sidecar or gateway on the far side answered (it names itself
/// `istio-envoy`, or its router added the upstream time header).
pub fn far_envoy(server: Option<&str>, upstream_time: bool) -> bool {
    upstream_time || server.is_some_and(|s| s.eq_ignore_ascii_case("istio-envoy"))
}

pub fn check_id(url: &str, index: usize, seen: &[String]) -> String {
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| format!("{}", index + 1));
    let id = format!("probe.{host}");
    if seen.contains(&id) {
        format!("{id}.{}", index + 1)
    } else {
        id
    }
}

pub async fn check(id: String, url: &str, timeout: Duration) -> Check {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => {
            return fail(
                &id,
                format!("`{url}` is not an http:// or https:// URL"),
                "pass a full URL, e.g. --probe http://nginx.jd.com/",
            );
        }
    };
    let host = parsed
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs = match net::resolve(&host, port, timeout, net::Owner(None)).await {
        Ok(a) => a,
        Err(e) => {
            return fail(
                &id,
                format!("{host} does not resolve: {e}"),
                "mesh service names resolve only through the agent's DNS proxy: needs ISTIO_META_DNS_CAPTURE=true, \
                 traffic capture applied (DNS to 15053, see `istio-vm capture status`) and agent.dns passing; \
                 otherwise use the full name <svc>.<ns>.svc.cluster.local with a hosts entry, or a ServiceEntry for external names",
            );
        }
    };
    let ips: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    let mesh = addrs.iter().any(|a| net::mesh_allocated(&a.ip()));
    let resolved = format!(
        "{host} -> {}{}",
        ips.join(", "),
        if mesh {
            " (auto-allocated by the mesh: answered by the DNS proxy)"
        } else {
            ""
        }
    );
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("istio-vm/", env!("CARGO_PKG_VERSION")));
    // The VM's apps trust the system's store, where a private CA lives; the
    // probe trusts what the bundle fetch trusts (SSL_CERT_FILE on top of the
    // built-in roots), so it can reach what they reach.
    if parsed.scheme() == "https" {
        match crate::extra_ca::roots() {
            Ok(certs) => {
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            Err(msg) => return fail(&id, msg, crate::extra_ca::HINT),
        }
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return fail(&id, format!("HTTP client: {e}"), "internal error"),
    };
    let start = Instant::now();
    let resp = match client.get(parsed.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            let (what, hint) = if e.is_timeout() {
                (
                    "no answer in time",
                    "the sidecar accepted the request but the upstream did not answer, or capture sends it nowhere",
                )
            } else if let Some(why) = untrusted_certificate(&e) {
                return fail(
                    &id,
                    format!("{resolved}; the server's certificate is not trusted: {why}"),
                    "the probe trusts the built-in Mozilla roots and the PEM certificates in SSL_CERT_FILE: \
                     point SSL_CERT_FILE at the CA the service's certificate chains to (e.g. the system's \
                     /etc/ssl/certs/ca-certificates.crt, where the VM's apps find a private CA)",
                );
            } else if e.is_connect() {
                (
                    "could not connect",
                    "with capture on, outbound connections go to Envoy on 15001: is the sidecar running (agent.ready)? Without capture the address must be reachable directly",
                )
            } else {
                ("request failed", "see the error")
            };
            return fail(&id, format!("{resolved}; {what}: {e}"), hint);
        }
    };
    let ms = start.elapsed().as_millis();
    let status = resp.status().as_u16();
    let server = resp
        .headers()
        .get("server")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let upstream = resp.headers().contains_key("x-envoy-upstream-service-time");
    let detail = format!(
        "{resolved}; HTTP {status} in {ms} ms; server: {}",
        server.as_deref().unwrap_or("-")
    );
    // Envoy adds its headers only where it routes HTTP. TLS (https://) and
    // services it treats as TCP (protocol not declared, or the
    // PassthroughCluster) pass through it byte for byte: the response cannot
    // tell whether the sidecar carried it. Over https even `server: envoy`
    // is the far side's, as this VM's Envoy never sees inside the TLS.
    if parsed.scheme() == "https" {
        return pass(
            &id,
            format!(
                "{detail}; https: Envoy passes TLS through without adding headers, so whether the sidecar carried this cannot be told from the response"
            ),
        );
    }
    if !via_sidecar(server.as_deref()) {
        if far_envoy(server.as_deref(), upstream) {
            return warn(
                &id,
                format!("{detail}; Envoy headers from the far side's inbound sidecar or a gateway"),
                "the answer carries `server: istio-envoy` (or only `x-envoy-upstream-service-time`), which the destination's inbound sidecar \
                 or a gateway writes; this VM's Envoy, had it routed the request as HTTP, would have overwritten it with `server: envoy`. \
                 So the response cannot tell: either outbound traffic is not captured (`istio-vm capture status`, ISTIO_SERVICE_CIDR) \
                 or this VM's Envoy carries the port as TCP (protocol not declared on the service port), or the mesh's \
                 proxyHeaders.server setting keeps the upstream's header",
            );
        }
        return warn(
            &id,
            format!("{detail}; no Envoy headers in the response"),
            "without `server: istio-envoy` or `x-envoy-upstream-service-time` the response cannot tell: either outbound traffic is not captured \
             (`istio-vm capture status`, ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE, ISTIO_SERVICE_CIDR), or Envoy carries this port as TCP \
             (protocol not declared on the service port, or a name outside the mesh), where it adds no headers",
        );
    }
    if status >= 500 {
        let hint = if status == 503 {
            "the sidecar has no healthy endpoint for this service: the service has no ready pods, or on a multi-network mesh \
             traffic does not route through the east-west gateway (ISTIO_META_NETWORK, meshNetworks; istio#33268)"
        } else {
            "the request passed through the sidecar but the upstream failed"
        };
        return fail(&id, format!("{detail} (through the sidecar)"), hint);
    }
    pass(&id, format!("{detail} (through the sidecar)"))
}

/// Why rustls refused the server's certificate, if that is what failed.
/// reqwest reports it as a connect error, whose hint (is the sidecar
/// running?) would mislead.
fn untrusted_certificate(e: &reqwest::Error) -> Option<String> {
    bad_certificate(e)
}

fn bad_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(rustls::Error::InvalidCertificate(why)) = e.downcast_ref::<rustls::Error>() {
        return Some(format!("{why:?}"));
    }
    // An io::Error's source() skips the error it wraps (hyper wraps rustls's
    // error in an io::Error, itself in another): look inside.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return bad_certificate(inner);
    }
    bad_certificate(e.source()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_evidence() {
        assert!(via_sidecar(Some("envoy")));
        assert!(via_sidecar(Some("Envoy")));
        // The far side's inbound sidecar, not this VM's outbound one.
        assert!(!via_sidecar(Some("istio-envoy")));
        assert!(!via_sidecar(Some("nginx")));
        assert!(!via_sidecar(None));
        assert!(far_envoy(Some("istio-envoy"), false));
        assert!(far_envoy(None, true));
        assert!(!far_envoy(Some("nginx"), false));
        assert!(!far_envoy(Some("envoy"), false));
    }

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        // As hyper hands it over: rustls's error in an io::Error in another.
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, bad));
        assert_eq!(bad_certificate(&nested).as_deref(), Some("UnknownIssuer"));
        let other = std::io::Error::other(rustls::Error::DecryptError);
        assert_eq!(bad_certificate(&other), None);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(bad_certificate(&refused), None);
    }

    #[test]
    fn ids_are_unique() {
        let a = check_id("http://nginx.jd.com/", 0, &[]);
        assert_eq!(a, "probe.nginx.jd.com");
        assert_eq!(
            check_id("http://nginx.jd.com/x", 1, &[a]),
            "probe.nginx.jd.com.2"
        );
    }
}
