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

#[cfg(test)]
mod tests {
    //! The generator's sections one at a time, as data. The full renderings
    //! are compared with Istio's goldens in tests/capture_golden.rs; these
    //! pin each section's behaviour where the unit tests (`--lib`) see it.
    use super::*;
    use crate::capture::config::{CidrInclude, OwnerGroups};
    use crate::capture::{Inputs, IstioConfig};
    use std::collections::BTreeMap;

    /// Istio's defaults with istio-proxy as uid 998 / gid 997, no inbound.
    fn base() -> IstioConfig {
        let env = BTreeMap::new();
        let mut cfg = IstioConfig::from_inputs(&Inputs {
            env: &env,
            resolv_conf: "",
            uid: Some(998),
            gid: Some(997),
            host_ipv6: false,
            exclude_inbound_ports: &[],
            exclude_outbound_cidrs: &[],
            allow_ssh_capture: false,
        })
        .unwrap();
        cfg.inbound = InboundPorts::None;
        cfg
    }

    fn rule(
        table: Table,
        chain: Chain,
        family: Option<Family>,
        matches: Vec<Match>,
        target: Target,
    ) -> Rule {
        Rule {
            table,
            chain,
            pos: Pos::Append,
            family,
            matches,
            target,
        }
    }

    #[track_caller]
    fn has(rs: &RuleSet, r: &Rule) {
        assert!(rs.rules.contains(r), "missing {r:?} in {:#?}", rs.rules);
    }

    #[track_caller]
    fn lacks(rs: &RuleSet, r: &Rule) {
        assert!(!rs.rules.contains(r), "unexpected {r:?}");
    }

    fn dst(cidr: &str, neg: bool) -> Match {
        Match::Dst {
            cidr: cidr.into(),
            neg,
        }
    }
    fn src(cidr: &str) -> Match {
        Match::Src {
            cidr: cidr.into(),
            neg: false,
        }
    }
    fn lo_out() -> Match {
        Match::OutIface("lo".into())
    }
    fn uid(id: &str, neg: bool) -> Match {
        Match::Uid { id: id.into(), neg }
    }
    fn gid(id: &str, neg: bool) -> Match {
        Match::Gid { id: id.into(), neg }
    }
    fn sport(proto: Proto, port: &str) -> Match {
        Match::Sport {
            proto,
            port: port.into(),
        }
    }
    fn redirect(port: &str, dns_udp: bool) -> Target {
        Target::Redirect {
            port: port.into(),
            dns_udp,
        }
    }

    #[test]
    fn ipv6_twins_only_when_ipv6_is_on_and_family_rules_always() {
        let passthrough = |f, cidr| {
            rule(
                Table::Nat,
                Chain::IstioOutput,
                Some(f),
                vec![lo_out(), src(cidr)],
                Target::Return,
            )
        };
        let jump = rule(
            Table::Nat,
            Chain::Output,
            None,
            vec![],
            Target::Jump(Chain::IstioOutput),
        );
        let mut cfg = base();
        cfg.ipv6 = false;
        let rs = generate(&cfg, Backend::Iptables);
        assert!(!rs.ipv6);
        assert!(rs.rules.iter().all(|r| r.family != Some(Family::V6)));
        has(&rs, &jump);
        has(&rs, &passthrough(Family::V4, "127.0.0.6/32"));

        cfg.ipv6 = true;
        let rs = generate(&cfg, Backend::Iptables);
        assert!(rs.ipv6);
        has(&rs, &jump);
        has(&rs, &passthrough(Family::V4, "127.0.0.6/32"));
        has(&rs, &passthrough(Family::V6, "::6/128"));
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                Some(Family::V6),
                vec![dst("::1/128", false)],
                Target::Return,
            ),
        );
    }

    #[test]
    fn cidrs_go_to_their_own_family() {
        let mut cfg = base();
        cfg.ipv6 = true;
        cfg.cidr_exclude = vec!["2001:db8::/32".into(), "10.0.0.0/8".into()];
        cfg.cidr_include = CidrInclude::List(vec!["fd00::/108".into(), "10.96.0.0/12".into()]);
        cfg.kube_virt_interfaces = vec!["eth1".into()];
        let rs = generate(&cfg, Backend::Iptables);
        for (f, ex, inc) in [
            (Family::V4, "10.0.0.0/8", "10.96.0.0/12"),
            (Family::V6, "2001:db8::/32", "fd00::/108"),
        ] {
            has(
                &rs,
                &rule(
                    Table::Nat,
                    Chain::IstioOutput,
                    Some(f),
                    vec![dst(ex, false)],
                    Target::Return,
                ),
            );
            has(
                &rs,
                &rule(
                    Table::Nat,
                    Chain::IstioOutput,
                    Some(f),
                    vec![dst(inc, false)],
                    Target::Jump(Chain::Redirect),
                ),
            );
            has(
                &rs,
                &Rule {
                    pos: Pos::Insert(1),
                    ..rule(
                        Table::Nat,
                        Chain::Prerouting,
                        Some(f),
                        vec![Match::InIface("eth1".into()), dst(inc, false)],
                        Target::Jump(Chain::Redirect),
                    )
                },
            );
        }
        // Every address match sits in a rule of the address's family.
        for r in &rs.rules {
            for m in &r.matches {
                if let Match::Dst { cidr, .. } | Match::Src { cidr, .. } = m {
                    assert_eq!(r.family, Some(family_of(cidr)), "{r:?}");
                }
            }
        }
        // No catch-all jump when a list is given.
        lacks(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                Some(Family::V4),
                vec![],
                Target::Jump(Chain::Redirect),
            ),
        );
    }

    #[test]
    fn catch_all_outbound_is_per_family_for_iptables_and_once_for_nft() {
        let mut cfg = base();
        cfg.ipv6 = true;
        cfg.outbound_ports = vec!["8443".into()];
        cfg.cidr_include = CidrInclude::All;
        cfg.kube_virt_interfaces = vec!["eth1".into()];
        let all = |f| {
            rule(
                Table::Nat,
                Chain::IstioOutput,
                f,
                vec![],
                Target::Jump(Chain::Redirect),
            )
        };
        let virt = |f| Rule {
            pos: Pos::Insert(1),
            ..rule(
                Table::Nat,
                Chain::Prerouting,
                f,
                vec![Match::InIface("eth1".into())],
                Target::Jump(Chain::Redirect),
            )
        };
        let port = rule(
            Table::Nat,
            Chain::IstioOutput,
            None,
            vec![tcp(), dport(Proto::Tcp, "8443")],
            Target::Jump(Chain::Redirect),
        );
        let ipt = generate(&cfg, Backend::Iptables);
        let nft = generate(&cfg, Backend::Nftables);
        for f in [Family::V4, Family::V6] {
            has(&ipt, &all(Some(f)));
            has(&ipt, &virt(Some(f)));
            lacks(&nft, &all(Some(f)));
        }
        lacks(&ipt, &all(None));
        has(&nft, &all(None));
        has(&nft, &virt(None));
        has(&ipt, &port);
        has(&nft, &port);
        // The KubeVirt interface's inbound RETURN is inserted first.
        has(
            &ipt,
            &Rule {
                pos: Pos::Insert(1),
                ..rule(
                    Table::Nat,
                    Chain::Prerouting,
                    None,
                    vec![Match::InIface("eth1".into())],
                    Target::Return,
                )
            },
        );
    }

    #[test]
    fn excluded_interfaces_and_drop_invalid() {
        let mut cfg = base();
        cfg.exclude_interfaces = vec!["eth9".into()];
        cfg.drop_invalid = true;
        let iface = |table, chain, m| rule(table, chain, None, vec![m], Target::Return);
        let nat_in = iface(Table::Nat, Chain::Prerouting, Match::InIface("eth9".into()));
        let nat_out = iface(Table::Nat, Chain::Output, Match::OutIface("eth9".into()));
        let mangle_in = iface(
            Table::Mangle,
            Chain::Prerouting,
            Match::InIface("eth9".into()),
        );
        let mangle_out = iface(Table::Mangle, Chain::Output, Match::OutIface("eth9".into()));
        let invalid = Match::CtState(&["INVALID"]);
        let drop_jump = |m| {
            rule(
                Table::Mangle,
                Chain::Prerouting,
                None,
                m,
                Target::Jump(Chain::Drop),
            )
        };
        let drop = rule(Table::Mangle, Chain::Drop, None, vec![], Target::Drop);

        let rs = generate(&cfg, Backend::Iptables);
        for r in [&nat_in, &nat_out, &drop] {
            has(&rs, r);
        }
        lacks(&rs, &mangle_in);
        lacks(&rs, &mangle_out);
        has(&rs, &drop_jump(vec![invalid.clone()]));
        lacks(&rs, &drop_jump(vec![tcp(), invalid.clone()]));

        let rs = generate(&cfg, Backend::Nftables);
        has(&rs, &drop_jump(vec![tcp(), invalid.clone()]));
        lacks(&rs, &drop_jump(vec![invalid.clone()]));

        cfg.mode = InterceptionMode::Tproxy;
        let rs = generate(&cfg, Backend::Iptables);
        for r in [&nat_in, &nat_out, &mangle_in, &mangle_out] {
            has(&rs, r);
        }
    }

    #[test]
    fn base_chains_point_at_the_proxy_ports() {
        let rs = generate(&base(), Backend::Iptables);
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::Inbound,
                None,
                vec![tcp(), dport(Proto::Tcp, "15008")],
                Target::Return,
            ),
        );
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::Redirect,
                None,
                vec![tcp()],
                redirect("15001", false),
            ),
        );
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::InRedirect,
                None,
                vec![tcp()],
                redirect("15006", false),
            ),
        );
    }

    #[test]
    fn inbound_redirect_list_all_and_none() {
        let pre = |table| {
            rule(
                table,
                Chain::Prerouting,
                None,
                vec![tcp()],
                Target::Jump(Chain::Inbound),
            )
        };
        let mut cfg = base();
        let rs = generate(&cfg, Backend::Iptables);
        lacks(&rs, &pre(Table::Nat));
        assert!(
            !rs.rules
                .iter()
                .any(|r| r.chain == Chain::Inbound && r.target == Target::Jump(Chain::InRedirect))
        );

        cfg.inbound = InboundPorts::List(vec!["8080".into()]);
        let rs = generate(&cfg, Backend::Iptables);
        has(&rs, &pre(Table::Nat));
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::Inbound,
                None,
                vec![tcp(), dport(Proto::Tcp, "8080")],
                Target::Jump(Chain::InRedirect),
            ),
        );
        assert!(rs.rules.iter().all(|r| r.table != Table::Mangle));

        cfg.inbound = InboundPorts::All {
            exclude: vec!["22".into()],
        };
        let rs = generate(&cfg, Backend::Iptables);
        has(&rs, &pre(Table::Nat));
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::Inbound,
                None,
                vec![tcp(), dport(Proto::Tcp, "22")],
                Target::Return,
            ),
        );
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::Inbound,
                None,
                vec![tcp()],
                Target::Jump(Chain::InRedirect),
            ),
        );
    }

    #[test]
    fn inbound_tproxy_marks_and_diverts_in_mangle() {
        let mut cfg = base();
        cfg.ipv6 = true;
        cfg.mode = InterceptionMode::Tproxy;
        cfg.inbound = InboundPorts::List(vec!["8080".into()]);
        let mark = cfg.tproxy_mark.clone();
        let est = Match::CtState(&["RELATED", "ESTABLISHED"]);
        let p = dport(Proto::Tcp, "8080");
        let divert = |m| {
            rule(
                Table::Mangle,
                Chain::Inbound,
                None,
                m,
                Target::Jump(Chain::Divert),
            )
        };
        let ipt = generate(&cfg, Backend::Iptables);
        let nft = generate(&cfg, Backend::Nftables);
        for rs in [&ipt, &nft] {
            has(
                rs,
                &rule(
                    Table::Mangle,
                    Chain::Prerouting,
                    None,
                    vec![tcp()],
                    Target::Jump(Chain::Inbound),
                ),
            );
            lacks(
                rs,
                &rule(
                    Table::Nat,
                    Chain::Prerouting,
                    None,
                    vec![tcp()],
                    Target::Jump(Chain::Inbound),
                ),
            );
            has(
                rs,
                &rule(
                    Table::Mangle,
                    Chain::Divert,
                    None,
                    vec![],
                    Target::SetMark(mark.clone()),
                ),
            );
            has(
                rs,
                &rule(Table::Mangle, Chain::Divert, None, vec![], Target::Accept),
            );
            has(
                rs,
                &rule(
                    Table::Mangle,
                    Chain::Inbound,
                    None,
                    vec![tcp(), p.clone()],
                    Target::Jump(Chain::Tproxy),
                ),
            );
            for (f, lo) in [
                (Family::V4, cfg.ipv4_loopback_cidr.as_str()),
                (Family::V6, "::1/128"),
            ] {
                has(
                    rs,
                    &rule(
                        Table::Mangle,
                        Chain::Tproxy,
                        Some(f),
                        vec![dst(lo, true), tcp()],
                        Target::Tproxy {
                            port: "15006".into(),
                            mark: mark.clone(),
                        },
                    ),
                );
            }
        }
        // The two backends spell the established-flow divert differently.
        has(&ipt, &divert(vec![tcp(), p.clone(), est.clone()]));
        has(&nft, &divert(vec![tcp(), est.clone(), p.clone()]));
        lacks(&ipt, &divert(vec![tcp(), est.clone(), p.clone()]));
    }

    #[test]
    fn outbound_exemptions_return_before_capture() {
        let mut cfg = base();
        cfg.reply_source_ports = vec!["22".into()];
        cfg.outbound_ports_exclude = vec!["9000".into()];
        let rs = generate(&cfg, Backend::Iptables);
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                None,
                vec![tcp(), sport(Proto::Tcp, "22")],
                Target::Return,
            ),
        );
        for proto in [Proto::Tcp, Proto::Udp] {
            has(
                &rs,
                &rule(
                    Table::Nat,
                    Chain::IstioOutput,
                    None,
                    vec![Match::Proto(proto), dport(proto, "9000")],
                    Target::Return,
                ),
            );
        }
    }

    /// The proxy's own uid/gid rules, with and without DNS capture.
    fn owner_jump(cfg: &IstioConfig, owner: Match, port: Match) -> Rule {
        rule(
            Table::Nat,
            Chain::IstioOutput,
            Some(Family::V4),
            vec![
                lo_out(),
                dst(&cfg.ipv4_loopback_cidr, true),
                tcp(),
                port,
                owner,
            ],
            Target::Jump(Chain::InRedirect),
        )
    }

    #[test]
    fn proxy_owner_rules() {
        let mut cfg = base();
        cfg.proxy_uids = vec!["998".into()];
        cfg.proxy_gids = vec!["997".into()];
        let not_tunnel = Match::Dport {
            proto: Proto::Tcp,
            port: "15008".into(),
            neg: true,
        };
        let rs = generate(&cfg, Backend::Iptables);
        has(
            &rs,
            &owner_jump(&cfg, uid("998", false), not_tunnel.clone()),
        );
        has(
            &rs,
            &owner_jump(&cfg, gid("997", false), not_tunnel.clone()),
        );
        for o in [uid("998", true), gid("997", true)] {
            has(
                &rs,
                &rule(
                    Table::Nat,
                    Chain::IstioOutput,
                    None,
                    vec![lo_out(), o],
                    Target::Return,
                ),
            );
        }
        for o in [uid("998", false), gid("997", false)] {
            has(
                &rs,
                &rule(
                    Table::Nat,
                    Chain::IstioOutput,
                    None,
                    vec![o],
                    Target::Return,
                ),
            );
        }
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                Some(Family::V4),
                vec![dst(&cfg.ipv4_loopback_cidr, false)],
                Target::Return,
            ),
        );

        // A loopback include drops the "out lo, not the proxy" RETURNs.
        cfg.cidr_include = CidrInclude::List(vec!["127.0.0.1/32".into()]);
        let rs = generate(&cfg, Backend::Iptables);
        lacks(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                None,
                vec![lo_out(), uid("998", true)],
                Target::Return,
            ),
        );

        // With DNS capture only the uid rule exempts port 53 (Istio's quirk).
        let mut cfg = base();
        cfg.proxy_uids = vec!["998".into()];
        cfg.proxy_gids = vec!["997".into()];
        cfg.redirect_dns = true;
        cfg.dns_v4 = vec!["10.0.0.2".into()];
        let rs = generate(&cfg, Backend::Iptables);
        let dns_and_tunnel = Match::DportsNot {
            proto: Proto::Tcp,
            ports: vec!["53".into(), "15008".into()],
        };
        has(
            &rs,
            &owner_jump(&cfg, uid("998", false), dns_and_tunnel.clone()),
        );
        has(
            &rs,
            &owner_jump(&cfg, gid("997", false), not_tunnel.clone()),
        );
        lacks(&rs, &owner_jump(&cfg, gid("997", false), dns_and_tunnel));
        let not53 = Match::Dport {
            proto: Proto::Tcp,
            port: "53".into(),
            neg: true,
        };
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                None,
                vec![lo_out(), tcp(), not53, uid("998", true)],
                Target::Return,
            ),
        );
    }

    #[test]
    fn owner_groups_include_and_exclude() {
        let mut cfg = base();
        cfg.owner_groups = OwnerGroups::Only(vec!["java".into(), "ftp".into()]);
        let rs = generate(&cfg, Backend::Iptables);
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                None,
                vec![Match::GidsNot(vec!["java".into(), "ftp".into()])],
                Target::Return,
            ),
        );
        cfg.owner_groups = OwnerGroups::All {
            exclude: vec!["ftp".into()],
        };
        let rs = generate(&cfg, Backend::Iptables);
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::IstioOutput,
                None,
                vec![gid("ftp", false)],
                Target::Return,
            ),
        );
    }

    #[test]
    fn tproxy_output_marks_the_proxy_and_restores_connmark() {
        let mut cfg = base();
        cfg.proxy_uids = vec!["998".into()];
        cfg.proxy_gids = vec!["997".into()];
        cfg.mode = InterceptionMode::Tproxy;
        cfg.inbound = InboundPorts::List(vec!["8080".into()]);
        let mark = cfg.tproxy_mark.clone();
        let m = |neg| Match::Mark {
            mark: mark.clone(),
            neg,
        };
        let rs = generate(&cfg, Backend::Iptables);
        let save = rule(
            Table::Mangle,
            Chain::Prerouting,
            None,
            vec![tcp(), m(false)],
            Target::ConnmarkSave,
        );
        has(&rs, &save);
        has(
            &rs,
            &rule(
                Table::Mangle,
                Chain::Output,
                None,
                vec![tcp(), lo_out(), m(false)],
                Target::Return,
            ),
        );
        for o in [uid("998", false), gid("997", false)] {
            has(
                &rs,
                &rule(
                    Table::Mangle,
                    Chain::Output,
                    Some(Family::V4),
                    vec![dst(&cfg.ipv4_loopback_cidr, true), tcp(), lo_out(), o],
                    Target::SetMark("1338".into()),
                ),
            );
        }
        has(
            &rs,
            &rule(
                Table::Mangle,
                Chain::Output,
                None,
                vec![tcp(), Match::Connmark(mark.clone())],
                Target::ConnmarkRestore,
            ),
        );
        let inserted = |pos, family, matches| Rule {
            pos: Pos::Insert(pos),
            ..rule(
                Table::Mangle,
                Chain::Inbound,
                family,
                matches,
                Target::Return,
            )
        };
        has(&rs, &inserted(1, None, vec![tcp(), m(false)]));
        has(
            &rs,
            &inserted(
                2,
                Some(Family::V4),
                vec![tcp(), src("127.0.0.6/32"), Match::InIface("lo".into())],
            ),
        );
        has(
            &rs,
            &inserted(
                3,
                None,
                vec![
                    tcp(),
                    Match::InIface("lo".into()),
                    Match::Mark {
                        mark: "1338".into(),
                        neg: true,
                    },
                ],
            ),
        );

        cfg.mode = InterceptionMode::Redirect;
        let rs = generate(&cfg, Backend::Iptables);
        assert!(
            !rs.rules
                .iter()
                .any(|r| matches!(r.target, Target::ConnmarkSave | Target::ConnmarkRestore))
        );
    }

    fn dns_cfg() -> IstioConfig {
        let mut cfg = base();
        cfg.ipv6 = true;
        cfg.proxy_uids = vec!["998".into()];
        cfg.proxy_gids = vec!["997".into()];
        cfg.redirect_dns = true;
        cfg.dns_v4 = vec!["10.0.0.2".into()];
        cfg
    }

    fn dns_jumps(rs: &RuleSet, table: Table) -> Vec<Option<Family>> {
        let (chain, to) = match table {
            Table::Nat => (Chain::IstioOutput, Chain::OutputDns),
            _ => (Chain::Prerouting, Chain::Inbound),
        };
        rs.rules
            .iter()
            .filter(|r| r.table == table && r.chain == chain && r.target == Target::Jump(to))
            .map(|r| r.family)
            .collect()
    }

    #[test]
    fn dns_jumps_per_family_with_a_server_and_once_in_nft() {
        let cfg = dns_cfg();
        let rs = generate(&cfg, Backend::Iptables);
        assert_eq!(dns_jumps(&rs, Table::Nat), [Some(Family::V4)]);
        assert_eq!(dns_jumps(&rs, Table::Raw), [Some(Family::V4)]);
        let rs = generate(&cfg, Backend::Nftables);
        assert_eq!(dns_jumps(&rs, Table::Nat), [None]);
        assert_eq!(dns_jumps(&rs, Table::Raw), [None]);

        let mut v6 = cfg.clone();
        v6.dns_v4 = vec![];
        v6.dns_v6 = vec!["fd00::53".into()];
        let rs = generate(&v6, Backend::Iptables);
        assert_eq!(dns_jumps(&rs, Table::Nat), [Some(Family::V6)]);

        let mut all = cfg.clone();
        all.capture_all_dns = true;
        let rs = generate(&all, Backend::Iptables);
        let both = [Some(Family::V4), Some(Family::V6)];
        assert_eq!(dns_jumps(&rs, Table::Nat), both);
        assert_eq!(dns_jumps(&rs, Table::Raw), both);

        let mut off = cfg;
        off.redirect_dns = false;
        let rs = generate(&off, Backend::Iptables);
        assert!(dns_jumps(&rs, Table::Nat).is_empty());
        assert!(!rs.rules.iter().any(|r| r.table == Table::Raw));
    }

    #[test]
    fn dns_to_the_nameservers_goes_to_the_agent_in_conntrack_zones() {
        let cfg = dns_cfg();
        let rs = generate(&cfg, Backend::Iptables);
        let v4 = Some(Family::V4);
        for (proto, udp) in [(Proto::Tcp, false), (Proto::Udp, true)] {
            has(
                &rs,
                &rule(
                    Table::Nat,
                    Chain::OutputDns,
                    v4,
                    vec![
                        Match::Proto(proto),
                        dport(proto, "53"),
                        dst("10.0.0.2/32", false),
                    ],
                    redirect("15053", udp),
                ),
            );
        }
        has(
            &rs,
            &rule(
                Table::Raw,
                Chain::Output,
                None,
                vec![],
                Target::Jump(Chain::OutputDns),
            ),
        );
        for o in [uid("998", false), gid("997", false)] {
            has(
                &rs,
                &rule(
                    Table::Raw,
                    Chain::OutputDns,
                    None,
                    vec![udp(), dport(Proto::Udp, "53"), o.clone()],
                    Target::CtZone(1),
                ),
            );
            has(
                &rs,
                &rule(
                    Table::Raw,
                    Chain::OutputDns,
                    None,
                    vec![udp(), sport(Proto::Udp, "15053"), o],
                    Target::CtZone(2),
                ),
            );
        }
        has(
            &rs,
            &rule(
                Table::Raw,
                Chain::OutputDns,
                v4,
                vec![udp(), dport(Proto::Udp, "53"), dst("10.0.0.2/32", false)],
                Target::CtZone(2),
            ),
        );
        has(
            &rs,
            &rule(
                Table::Raw,
                Chain::Inbound,
                v4,
                vec![udp(), sport(Proto::Udp, "53"), src("10.0.0.2/32")],
                Target::CtZone(1),
            ),
        );

        let mut v6 = cfg.clone();
        v6.dns_v6 = vec!["fd00::53".into()];
        let rs = generate(&v6, Backend::Iptables);
        has(
            &rs,
            &rule(
                Table::Raw,
                Chain::Inbound,
                Some(Family::V6),
                vec![udp(), sport(Proto::Udp, "53"), src("fd00::53/128")],
                Target::CtZone(1),
            ),
        );

        let mut all = cfg;
        all.capture_all_dns = true;
        let rs = generate(&all, Backend::Iptables);
        has(
            &rs,
            &rule(
                Table::Nat,
                Chain::OutputDns,
                None,
                vec![udp(), dport(Proto::Udp, "53")],
                redirect("15053", true),
            ),
        );
        has(
            &rs,
            &rule(
                Table::Raw,
                Chain::OutputDns,
                None,
                vec![udp(), dport(Proto::Udp, "53")],
                Target::CtZone(2),
            ),
        );
        has(
            &rs,
            &rule(
                Table::Raw,
                Chain::Inbound,
                None,
                vec![udp(), sport(Proto::Udp, "53")],
                Target::CtZone(1),
            ),
        );
        assert!(
            !rs.rules
                .iter()
                .any(|r| r.matches.contains(&dst("10.0.0.2/32", false)))
        );
    }
}
