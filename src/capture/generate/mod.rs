//! The generator: Istio's capture rules as [`RuleSet`] data, section by
//! section in istio-iptables' emission order (`Run` in
//! `tools/istio-iptables/pkg/capture/run.go`; the nftables twin
//! `tools/istio-nftables/pkg/capture/run.go`). This file: the builder,
//! interfaces, the base chains and inbound; [`outbound`]: outbound, DNS and
//! TPROXY's OUTPUT rules.

mod outbound;

use super::config::{InboundPorts, InterceptionMode, IstioConfig};
use super::model::{Backend, Chain, Family, Match, Pos, Proto, Rule, RuleSet, Table, Target};
use outbound::{outbound_destinations, outbound_exemptions, outbound_owners, tproxy_output};

struct Gen<'a> {
    cfg: &'a IstioConfig,
    backend: Backend,
    rules: Vec<Rule>,
}

fn family_of(cidr: &str) -> Family {
    if cidr.contains(':') {
        Family::V6
    } else {
        Family::V4
    }
}

impl Gen<'_> {
    fn push(
        &mut self,
        table: Table,
        chain: Chain,
        pos: Pos,
        family: Option<Family>,
        matches: Vec<Match>,
        target: Target,
    ) {
        if family == Some(Family::V6) && !self.cfg.ipv6 {
            return;
        }
        self.rules.push(Rule {
            table,
            chain,
            pos,
            family,
            matches,
            target,
        });
    }
    fn add(&mut self, table: Table, chain: Chain, matches: Vec<Match>, target: Target) {
        self.push(table, chain, Pos::Append, None, matches, target);
    }
    fn add_fam(
        &mut self,
        f: Family,
        table: Table,
        chain: Chain,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(table, chain, Pos::Append, Some(f), matches, target);
    }
    /// A rule with a per-family address: the IPv4 one, then its IPv6 twin.
    fn add_twins(
        &mut self,
        table: Table,
        chain: Chain,
        pos: Pos,
        v4: &str,
        v6: &str,
        mk: impl Fn(&str) -> (Vec<Match>, Target),
    ) {
        let (m, t) = mk(v4);
        self.push(table, chain, pos, Some(Family::V4), m, t);
        let (m, t) = mk(v6);
        self.push(table, chain, pos, Some(Family::V6), m, t);
    }
}

fn tcp() -> Match {
    Match::Proto(Proto::Tcp)
}
fn udp() -> Match {
    Match::Proto(Proto::Udp)
}
fn dport(proto: Proto, port: &str) -> Match {
    Match::Dport {
        proto,
        port: port.to_string(),
        neg: false,
    }
}

const IPV6_LOOPBACK: &str = "::1/128";
const INBOUND_PASSTHROUGH_V4: &str = "127.0.0.6/32";
const INBOUND_PASSTHROUGH_V6: &str = "::6/128";
const DNS_PORT: &str = "53";
const DNS_AGENT_PORT: &str = "15053";
const OUTBOUND_MARK: &str = "1338";

/// Generate Istio's rule set for one backend, section by section in
/// istio-iptables' emission order (`Run` in tools/istio-iptables/pkg/capture/run.go).
pub fn generate(cfg: &IstioConfig, backend: Backend) -> RuleSet {
    let mut g = Gen {
        cfg,
        backend,
        rules: Vec::new(),
    };
    interfaces(&mut g);
    base_chains(&mut g);
    inbound(&mut g);
    outbound_exemptions(&mut g);
    outbound_owners(&mut g);
    outbound_destinations(&mut g);
    tproxy_output(&mut g);
    RuleSet {
        rules: g.rules,
        ipv6: cfg.ipv6,
    }
}

/// Excluded and KubeVirt interfaces, and the drop of invalid packets.
fn interfaces(g: &mut Gen) {
    let cfg = g.cfg;
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let nft = g.backend == Backend::Nftables;
    for iface in &cfg.exclude_interfaces {
        g.add(
            Table::Nat,
            Chain::Prerouting,
            vec![Match::InIface(iface.clone())],
            Target::Return,
        );
        g.add(
            Table::Nat,
            Chain::Output,
            vec![Match::OutIface(iface.clone())],
            Target::Return,
        );
        if tproxy {
            g.add(
                Table::Mangle,
                Chain::Prerouting,
                vec![Match::InIface(iface.clone())],
                Target::Return,
            );
            g.add(
                Table::Mangle,
                Chain::Output,
                vec![Match::OutIface(iface.clone())],
                Target::Return,
            );
        }
    }
    for iface in &cfg.kube_virt_interfaces {
        g.push(
            Table::Nat,
            Chain::Prerouting,
            Pos::Insert(1),
            None,
            vec![Match::InIface(iface.clone())],
            Target::Return,
        );
    }
    if cfg.drop_invalid {
        // The nft backend drops invalid TCP only (CASES.md §4.3).
        let mut m = Vec::new();
        if nft {
            m.push(tcp());
        }
        m.push(Match::CtState(&["INVALID"]));
        g.add(
            Table::Mangle,
            Chain::Prerouting,
            m,
            Target::Jump(Chain::Drop),
        );
        g.add(Table::Mangle, Chain::Drop, vec![], Target::Drop);
    }
}

/// The tunnel-port RETURN and the two REDIRECT chains.
fn base_chains(g: &mut Gen) {
    let cfg = g.cfg;
    g.add(
        Table::Nat,
        Chain::Inbound,
        vec![tcp(), dport(Proto::Tcp, &cfg.inbound_tunnel_port)],
        Target::Return,
    );
    g.add(
        Table::Nat,
        Chain::Redirect,
        vec![tcp()],
        Target::Redirect {
            port: cfg.envoy_port.clone(),
            dns_udp: false,
        },
    );
    g.add(
        Table::Nat,
        Chain::InRedirect,
        vec![tcp()],
        Target::Redirect {
            port: cfg.inbound_capture_port.clone(),
            dns_udp: false,
        },
    );
}

/// Inbound capture (REDIRECT or TPROXY).
fn inbound(g: &mut Gen) {
    let cfg = g.cfg;
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let nft = g.backend == Backend::Nftables;
    let v4_lo = cfg.ipv4_loopback_cidr.as_str();
    // Inbound.
    let in_table = if tproxy { Table::Mangle } else { Table::Nat };
    if cfg.inbound != InboundPorts::None {
        if tproxy {
            g.add(
                Table::Mangle,
                Chain::Divert,
                vec![],
                Target::SetMark(cfg.tproxy_mark.clone()),
            );
            g.add(Table::Mangle, Chain::Divert, vec![], Target::Accept);
            g.add_twins(
                Table::Mangle,
                Chain::Tproxy,
                Pos::Append,
                v4_lo,
                IPV6_LOOPBACK,
                |lo| {
                    (
                        vec![
                            Match::Dst {
                                cidr: lo.to_string(),
                                neg: true,
                            },
                            tcp(),
                        ],
                        Target::Tproxy {
                            port: cfg.inbound_capture_port.clone(),
                            mark: cfg.tproxy_mark.clone(),
                        },
                    )
                },
            );
        }
        g.add(
            in_table,
            Chain::Prerouting,
            vec![tcp()],
            Target::Jump(Chain::Inbound),
        );
        let port_rules = |g: &mut Gen, port: Option<&str>| {
            let pm = |v: &mut Vec<Match>| {
                if let Some(p) = port {
                    v.push(dport(Proto::Tcp, p));
                }
            };
            if tproxy {
                let mut m = vec![tcp()];
                if nft {
                    m.push(Match::CtState(&["RELATED", "ESTABLISHED"]));
                    pm(&mut m);
                } else {
                    pm(&mut m);
                    m.push(Match::CtState(&["RELATED", "ESTABLISHED"]));
                }
                g.add(
                    Table::Mangle,
                    Chain::Inbound,
                    m,
                    Target::Jump(Chain::Divert),
                );
                let mut m = vec![tcp()];
                pm(&mut m);
                g.add(
                    Table::Mangle,
                    Chain::Inbound,
                    m,
                    Target::Jump(Chain::Tproxy),
                );
            } else {
                let mut m = vec![tcp()];
                pm(&mut m);
                g.add(
                    Table::Nat,
                    Chain::Inbound,
                    m,
                    Target::Jump(Chain::InRedirect),
                );
            }
        };
        match &cfg.inbound {
            InboundPorts::All { exclude } => {
                for p in exclude {
                    g.add(
                        in_table,
                        Chain::Inbound,
                        vec![tcp(), dport(Proto::Tcp, p)],
                        Target::Return,
                    );
                }
                port_rules(g, None);
            }
            InboundPorts::List(list) => {
                for p in list {
                    port_rules(g, Some(p));
                }
            }
            InboundPorts::None => {}
        }
    }
}
