//! What istio-iptables would read from its environment, derived from the
//! placed cluster.env, resolv.conf and the istio-proxy uid/gid, plus
//! istio-vm's VM-safety layer on top.
//!
//! Istio reference (istio/istio): `tools/common/config/config.go`
//! (defaults, list splitting, owner groups) and `tools/istio-iptables/pkg/cmd/root.go`
//! (flag <-> environment binding).

use std::collections::BTreeMap;
use std::net::IpAddr;

use thiserror::Error;

mod env;
use env::Env;

/// Ports never captured inbound on a VM: SSH, and the agent's own ports
/// (15090 Prometheus, 15021 health, 15020 merged metrics) that istioctl's
/// cluster.env lists but 1.10 bundles forget (15020).
pub const ALWAYS_EXCLUDED_INBOUND: [u16; 4] = [22, 15090, 15021, 15020];
pub const SSH_PORT: u16 = 22;

/// Why rendering refused. Every variant is the user's input being wrong or
/// unsafe; nothing was changed (exit 1).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CaptureError {
    #[error("cluster.env: {key}={value:?}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "cluster.env: ISTIO_INBOUND_PORTS={ports:?} captures inbound SSH (port 22): \
         remove 22 from ISTIO_INBOUND_PORTS, or set allow_ssh_capture = true in \
         /etc/istio-vm/config.toml if SSH really must go through the sidecar"
    )]
    SshCaptured { ports: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    Redirect,
    Tproxy,
}

/// Inbound capture: none (`""`), all ports but some (`*`), or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    None,
    All { exclude: Vec<String> },
    List(Vec<String>),
}

/// Outbound destination capture (ISTIO_SERVICE_CIDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrInclude {
    All,
    List(Vec<String>),
}

/// Owner-group filter (`ISTIO_OUTBOUND_OWNER_GROUPS`, `..._EXCLUDE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Default `*` with optional excludes.
    All {
        exclude: Vec<String>,
    },
    Only(Vec<String>),
}

/// Everything the rule generator needs, values verbatim as Istio emits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioConfig {
    pub envoy_port: String,
    pub inbound_capture_port: String,
    pub inbound_tunnel_port: String,
    pub proxy_uids: Vec<String>,
    pub proxy_gids: Vec<String>,
    pub mode: InterceptionMode,
    pub tproxy_mark: String,
    /// Policy-routing table for TPROXY (`ip rule fwmark MARK lookup TABLE`).
    pub tproxy_route_table: String,
    pub inbound: InboundPorts,
    pub exclude_interfaces: Vec<String>,
    pub kube_virt_interfaces: Vec<String>,
    pub cidr_include: CidrInclude,
    pub cidr_exclude: Vec<String>,
    pub outbound_ports: Vec<String>,
    pub outbound_ports_exclude: Vec<String>,
    /// DNS capture after Istio's "no servers means off" rule.
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub dns_v4: Vec<String>,
    pub dns_v6: Vec<String>,
    pub ipv6: bool,
    pub drop_invalid: bool,
    pub owner_groups: OwnerGroups,
    pub ipv4_loopback_cidr: String,
    /// istio-vm only (empty in Istio's reading): TCP source ports whose
    /// outbound packets always RETURN, i.e. the replies of local servers
    /// never captured inbound (SSH). The nat table sees a packet only when
    /// conntrack calls it NEW; an SSH session accepted before conntrack was
    /// tracking (a fresh image with no firewall rules) has its next reply
    /// look NEW, and without this it would be redirected to 15001 and the
    /// session reset: applying the rules would cut the admin's own SSH.
    pub reply_source_ports: Vec<String>,
    /// Notes for the report (e.g. DNS capture requested but off).
    pub notes: Vec<String>,
}

/// The inputs of a render, all read by the caller (pure from here on).
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// cluster.env variables (`bundle::ClusterEnv::to_map()`).
    pub env: &'a BTreeMap<String, String>,
    pub resolv_conf: &'a str,
    /// istio-proxy uid/gid from the root's passwd/group (None: not found).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The host has a global IPv6 address.
    pub host_ipv6: bool,
    /// istio-vm config: extra inbound ports never captured.
    pub exclude_inbound_ports: &'a [u16],
    /// istio-vm config: destinations never captured outbound
    /// (`exclude_outbound_cidrs`, cloud metadata by default).
    pub exclude_outbound_cidrs: &'a [String],
    pub allow_ssh_capture: bool,
}

/// Istio's `strconv.ParseBool`.
fn parse_bool(key: &str, v: &str) -> Result<bool, CaptureError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(invalid(key, v, "expected true or false")),
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> CaptureError {
    CaptureError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Istio splits on commas and drops empty items (`6000,7000,`).
fn split(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn port(key: &str, p: &str) -> Result<String, CaptureError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(p.to_string()),
        _ => Err(invalid(key, p, "not a port number (1-65535)")),
    }
}

fn ports(key: &str, v: &str) -> Result<Vec<String>, CaptureError> {
    split(v).iter().map(|p| port(key, p)).collect()
}

/// Values end up inside iptables-restore / nft input: anything but a plain
/// token would let a cluster.env inject rules.
fn name_token(key: &str, v: &str, max: usize) -> Result<String, CaptureError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok && !v.starts_with('-') {
        Ok(v.to_string())
    } else {
        Err(invalid(key, v, "not a valid name"))
    }
}

fn names(key: &str, v: &str, max: usize) -> Result<Vec<String>, CaptureError> {
    split(v).iter().map(|n| name_token(key, n, max)).collect()
}

fn owner_id(key: &str, v: &str) -> Result<String, CaptureError> {
    v.parse::<u32>()
        .map(|_| v.to_string())
        .map_err(|_| invalid(key, v, "not a numeric id"))
}

/// A CIDR as Istio accepts it; kept verbatim (`127.0.0.1/8` stays), a bare
/// address gets its host prefix. Returns (text, is_v6).
fn cidr(key: &str, v: &str) -> Result<(String, bool), CaptureError> {
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| invalid(key, v, "not an IP address or CIDR"))?;
    let max = if ip.is_ipv6() { 128 } else { 32 };
    let text = match prefix {
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => v.to_string(),
            _ => return Err(invalid(key, v, "bad prefix length")),
        },
        None => format!("{v}/{max}"),
    };
    Ok((text, ip.is_ipv6()))
}

/// Nameservers of resolv.conf, split by family (Istio reads them with
/// miekg/dns `ClientConfigFromFile`; zone suffixes are not supported).
pub fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = it.next() else { continue };
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => v4.push(addr.to_string()),
            Ok(IpAddr::V6(_)) => v6.push(addr.to_string()),
            Err(_) => {}
        }
    }
    (v4, v6)
}

impl IstioConfig {
    /// Istio's own reading of the inputs, without the VM-safety layer: what
    /// `pilot-agent istio-iptables` would do on this VM (with the documented
    /// deviations below). Golden tests use this directly.
    ///
    /// Deviations from Istio, on purpose:
    /// - PROXY_GID defaults to the istio-proxy *group* id, not to the uid
    ///   string (`config.go` copies the uid, which on a VM where they differ
    ///   exempts an unrelated group).
    /// - IPv6 is on when the host has a global IPv6 address or DUAL_STACK is
    ///   set (Istio looks only at the first non-loopback address).
    pub fn from_inputs(inp: &Inputs<'_>) -> Result<IstioConfig, CaptureError> {
        // Read in Istio's order so that the first bad value is the one
        // reported, as before the split.
        let env = Env(inp.env);
        // ENVOY_PORT has not been read since Istio 1.21 (the flag lost its
        // env binding); Envoy's outbound listener is 15001 regardless.
        let envoy_port = "15001".to_string();
        let inbound_capture_port = env.port_or("INBOUND_CAPTURE_PORT", "15006")?;
        let inbound_tunnel_port = env.port_or("INBOUND_TUNNEL_PORT", "15008")?;
        let (proxy_uids, proxy_gids) = env.proxy_owners(inp.uid, inp.gid)?;
        let (mode, tproxy_mark, tproxy_route_table) = env.interception()?;
        let inbound = env.inbound_ports()?;
        let exclude_interfaces = names(
            "ISTIO_EXCLUDE_INTERFACES",
            env.get("ISTIO_EXCLUDE_INTERFACES"),
            15,
        )?;
        let kube_virt_interfaces =
            names("KUBE_VIRT_INTERFACES", env.get("KUBE_VIRT_INTERFACES"), 15)?;
        let (cidr_include, cidr_exclude) = env.service_cidrs()?;
        let outbound_ports = ports("ISTIO_OUTBOUND_PORTS", env.get("ISTIO_OUTBOUND_PORTS"))?;
        let outbound_ports_exclude = ports(
            "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
            env.get("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"),
        )?;
        let dns = env.dns(inp.resolv_conf)?;
        let drop_invalid = env.flag(&["DROP_INVALID", "INVALID_DROP"])?;
        let dual_stack = env.flag(&["DUAL_STACK", "ISTIO_DUAL_STACK"])?;
        let owner_groups = env.owner_groups()?;
        let ipv4_loopback_cidr = env.ipv4_loopback_cidr()?;

        Ok(IstioConfig {
            envoy_port,
            inbound_capture_port,
            inbound_tunnel_port,
            proxy_uids,
            proxy_gids,
            mode,
            tproxy_mark,
            tproxy_route_table,
            inbound,
            exclude_interfaces,
            kube_virt_interfaces,
            cidr_include,
            cidr_exclude,
            outbound_ports,
            outbound_ports_exclude,
            redirect_dns: dns.redirect,
            capture_all_dns: dns.capture_all,
            dns_v4: dns.v4,
            dns_v6: dns.v6,
            ipv6: inp.host_ipv6 || dual_stack,
            drop_invalid,
            owner_groups,
            ipv4_loopback_cidr,
            reply_source_ports: Vec::new(),
            notes: dns.note.into_iter().collect(),
        })
    }

    /// Whether an include CIDR is a loopback address (quirk: it removes the
    /// "out lo, owner not X -> RETURN" rules).
    pub fn include_has_loopback(&self) -> bool {
        match &self.cidr_include {
            CidrInclude::All => false,
            CidrInclude::List(l) => l.iter().any(|c| {
                c.split('/')
                    .next()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .is_some_and(|ip| ip.is_loopback())
            }),
        }
    }

    /// istio-vm's layer on top of Istio: SSH and the agent ports are never
    /// captured inbound (1.10 bundles forget 15020), `exclude_inbound_ports`
    /// adds more, and an explicit inbound list naming 22 is refused unless
    /// `allow_ssh_capture`.
    pub fn apply_vm_safety(
        &mut self,
        exclude_inbound_ports: &[u16],
        allow_ssh_capture: bool,
    ) -> Result<(), CaptureError> {
        let mut forced: Vec<u16> = ALWAYS_EXCLUDED_INBOUND
            .iter()
            .copied()
            .filter(|p| !(allow_ssh_capture && *p == SSH_PORT))
            .collect();
        for p in exclude_inbound_ports {
            if !forced.contains(p) {
                forced.push(*p);
            }
        }
        for p in &forced {
            let p = p.to_string();
            if !self.reply_source_ports.contains(&p) {
                self.reply_source_ports.push(p);
            }
        }
        match &mut self.inbound {
            InboundPorts::None => {}
            InboundPorts::All { exclude } => {
                for p in forced {
                    let p = p.to_string();
                    if !exclude.contains(&p) {
                        self.notes.push(format!(
                            "inbound port {p} excluded from capture (VM safety)"
                        ));
                        exclude.push(p);
                    }
                }
            }
            InboundPorts::List(list) => {
                if !allow_ssh_capture && list.iter().any(|p| p == "22") {
                    return Err(CaptureError::SshCaptured {
                        ports: list.join(","),
                    });
                }
                let before = list.len();
                list.retain(|p| !forced.iter().any(|f| f.to_string() == *p));
                if list.len() != before {
                    self.notes.push(
                        "ISTIO_INBOUND_PORTS names a port istio-vm never captures; dropped"
                            .to_string(),
                    );
                }
                if list.is_empty() {
                    self.inbound = InboundPorts::None;
                }
            }
        }
        Ok(())
    }

    /// istio-vm's `exclude_outbound_cidrs`: added to Istio's
    /// ISTIO_SERVICE_EXCLUDE_CIDR list (a RETURN in ISTIO_OUTPUT, per
    /// family), each validated like Istio's own CIDRs.
    pub fn exclude_outbound(&mut self, cidrs: &[String]) -> Result<(), CaptureError> {
        for c in cidrs {
            let (c, _) = cidr("exclude_outbound_cidrs", c)?;
            if !self.cidr_exclude.contains(&c) {
                self.cidr_exclude.push(c);
            }
        }
        Ok(())
    }

    /// Istio's reading plus the VM-safety layer: what istio-vm applies.
    pub fn for_vm(inp: &Inputs<'_>) -> Result<IstioConfig, CaptureError> {
        let mut cfg = IstioConfig::from_inputs(inp)?;
        cfg.apply_vm_safety(inp.exclude_inbound_ports, inp.allow_ssh_capture)?;
        cfg.exclude_outbound(inp.exclude_outbound_cidrs)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn inputs<'a>(env: &'a BTreeMap<String, String>, resolv: &'a str) -> Inputs<'a> {
        Inputs {
            env,
            resolv_conf: resolv,
            uid: Some(998),
            gid: Some(997),
            host_ipv6: false,
            exclude_inbound_ports: &[],
            exclude_outbound_cidrs: &[],
            allow_ssh_capture: false,
        }
    }

    #[test]
    fn wildcard_inbound_always_keeps_ssh_and_agent_ports_out() {
        // A 1.10 bundle: 15020 missing from the excludes.
        let e = env(&[
            ("ISTIO_INBOUND_PORTS", "*"),
            ("ISTIO_LOCAL_EXCLUDE_PORTS", "15090,15021"),
        ]);
        let mut inp = inputs(&e, "");
        inp.exclude_inbound_ports = &[2222];
        let cfg = IstioConfig::for_vm(&inp).unwrap();
        assert_eq!(
            cfg.inbound,
            InboundPorts::All {
                exclude: ["15090", "15021", "22", "15020", "2222"]
                    .map(String::from)
                    .to_vec()
            }
        );
    }

    #[test]
    fn explicit_ssh_in_list_is_refused_unless_allowed() {
        let e = env(&[("ISTIO_INBOUND_PORTS", "8080,22")]);
        let err = IstioConfig::for_vm(&inputs(&e, "")).unwrap_err();
        assert!(matches!(err, CaptureError::SshCaptured { .. }), "{err}");
        assert!(err.to_string().contains("allow_ssh_capture"));
        let mut inp = inputs(&e, "");
        inp.allow_ssh_capture = true;
        let cfg = IstioConfig::for_vm(&inp).unwrap();
        assert_eq!(
            cfg.inbound,
            InboundPorts::List(vec!["8080".into(), "22".into()])
        );
    }

    #[test]
    fn agent_ports_are_dropped_from_a_list() {
        let e = env(&[("ISTIO_INBOUND_PORTS", "15020,8080")]);
        let cfg = IstioConfig::for_vm(&inputs(&e, "")).unwrap();
        assert_eq!(cfg.inbound, InboundPorts::List(vec!["8080".into()]));
    }

    #[test]
    fn uid_gid_come_from_the_user_unless_set() {
        let e = env(&[]);
        let cfg = IstioConfig::from_inputs(&inputs(&e, "")).unwrap();
        assert_eq!(cfg.proxy_uids, vec!["998"]);
        assert_eq!(cfg.proxy_gids, vec!["997"]);
        let e = env(&[("PROXY_UID", "3,4"), ("PROXY_GID", "1,2")]);
        let cfg = IstioConfig::from_inputs(&inputs(&e, "")).unwrap();
        assert_eq!(cfg.proxy_uids, vec!["3", "4"]);
        assert_eq!(cfg.proxy_gids, vec!["1", "2"]);
        let mut inp = inputs(&e, "");
        inp.uid = None;
        inp.gid = None;
        let e = env(&[]);
        inp.env = &e;
        let cfg = IstioConfig::from_inputs(&inp).unwrap();
        assert_eq!(cfg.proxy_uids, vec!["1337"]);
        assert_eq!(cfg.proxy_gids, vec!["1337"]);
    }

    #[test]
    fn dns_without_servers_is_off() {
        let e = env(&[("ISTIO_META_DNS_CAPTURE", "true")]);
        let cfg = IstioConfig::from_inputs(&inputs(&e, "search x\n")).unwrap();
        assert!(!cfg.redirect_dns);
        assert_eq!(cfg.notes.len(), 1);
        let cfg = IstioConfig::from_inputs(&inputs(
            &e,
            "# c\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n",
        ))
        .unwrap();
        assert!(cfg.redirect_dns);
        assert_eq!(cfg.dns_v4, vec!["127.0.0.53"]);
        assert_eq!(cfg.dns_v6, vec!["::1"]);
    }

    #[test]
    fn injection_and_bad_values_are_refused() {
        for (k, v) in [
            ("ISTIO_INBOUND_PORTS", "80 -j DROP"),
            ("ISTIO_SERVICE_CIDR", "10.0.0.0/8\n-A OUTPUT -j DROP"),
            ("ISTIO_EXCLUDE_INTERFACES", "eth0;x"),
            ("ISTIO_LOCAL_EXCLUDE_PORTS", "70000"),
            ("PROXY_UID", "root"),
            ("ISTIO_META_DNS_CAPTURE", "yes please"),
            ("ISTIO_INBOUND_INTERCEPTION_MODE", "MAGIC"),
        ] {
            let mut pairs = vec![(k, v)];
            if k == "ISTIO_LOCAL_EXCLUDE_PORTS" {
                pairs.push(("ISTIO_INBOUND_PORTS", "*"));
            }
            let e = env(&pairs);
            let err = IstioConfig::from_inputs(&inputs(&e, "")).unwrap_err();
            assert!(
                matches!(err, CaptureError::InvalidValue { .. }),
                "{k}={v}: {err}"
            );
        }
    }

    #[test]
    fn exclude_outbound_cidrs_join_the_exclude_list_per_family() {
        let e = env(&[("ISTIO_SERVICE_EXCLUDE_CIDR", "10.9.0.0/16")]);
        let defaults: Vec<String> = crate::config::DEFAULT_EXCLUDE_OUTBOUND_CIDRS
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut i = inputs(&e, "");
        i.exclude_outbound_cidrs = &defaults;
        let cfg = IstioConfig::for_vm(&i).unwrap();
        assert_eq!(
            cfg.cidr_exclude,
            vec!["10.9.0.0/16", "169.254.169.254/32", "fd00:ec2::254/128"]
        );
        let rs = crate::capture::model::generate(&cfg, crate::capture::Backend::Iptables);
        let v4 = crate::capture::iptables::render_restore(&rs, crate::capture::Family::V4).unwrap();
        assert!(
            v4.contains("-A ISTIO_OUTPUT -d 169.254.169.254/32 -j RETURN"),
            "{v4}"
        );
        assert!(!v4.contains("fd00:ec2"), "{v4}");
        // Users can turn it off, and a bad entry is refused.
        i.exclude_outbound_cidrs = &[];
        assert_eq!(
            IstioConfig::for_vm(&i).unwrap().cidr_exclude,
            vec!["10.9.0.0/16"]
        );
        let bad = vec!["169.254.169.254/33".to_string()];
        i.exclude_outbound_cidrs = &bad;
        assert!(IstioConfig::for_vm(&i).is_err());
    }

    #[test]
    fn dual_stack_turns_on_ipv6() {
        let e = env(&[("DUAL_STACK", "true")]);
        assert!(IstioConfig::from_inputs(&inputs(&e, "")).unwrap().ipv6);
        let e = env(&[]);
        assert!(!IstioConfig::from_inputs(&inputs(&e, "")).unwrap().ipv6);
    }
}
