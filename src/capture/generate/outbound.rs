//! Outbound capture, the proxy's own traffic, DNS (`SetupDNSRedir`) and
//! TPROXY's mangle OUTPUT rules (tools/istio-iptables/pkg/capture/run.go).

use super::super::config::{CidrInclude, InterceptionMode, OwnerGroups};
use super::super::model::{Backend, Chain, Family, Match, Pos, Proto, Table, Target};
use super::*;

/// The OUTPUT jump and what never goes to the proxy (reply ports, excluded ports, passthrough).
pub(super) fn outbound_exemptions(g: &mut Gen) {
    let cfg = g.cfg;
    // Outbound.
    g.add(
        Table::Nat,
        Chain::Output,
        vec![],
        Target::Jump(Chain::IstioOutput),
    );
    for p in &cfg.reply_source_ports {
        g.add(
            Table::Nat,
            Chain::IstioOutput,
            vec![
                Match::Proto(Proto::Tcp),
                Match::Sport {
                    proto: Proto::Tcp,
                    port: p.clone(),
                },
            ],
            Target::Return,
        );
    }
    for p in &cfg.outbound_ports_exclude {
        for proto in [Proto::Tcp, Proto::Udp] {
            g.add(
                Table::Nat,
                Chain::IstioOutput,
                vec![Match::Proto(proto), dport(proto, p)],
                Target::Return,
            );
        }
    }
    g.add_twins(
        Table::Nat,
        Chain::IstioOutput,
        Pos::Append,
        INBOUND_PASSTHROUGH_V4,
        INBOUND_PASSTHROUGH_V6,
        |src| {
            (
                vec![
                    Match::OutIface("lo".into()),
                    Match::Src {
                        cidr: src.to_string(),
                        neg: false,
                    },
                ],
                Target::Return,
            )
        },
    );
}

/// The proxy's own traffic by uid/gid, owner groups, DNS.
pub(super) fn outbound_owners(g: &mut Gen) {
    let cfg = g.cfg;
    let v4_lo = cfg.ipv4_loopback_cidr.as_str();
    let dns = cfg.redirect_dns;
    let keep_lo_return = !cfg.include_has_loopback();
    let owner_rules = |g: &mut Gen, id: &str, gid: bool| {
        let owner = |neg: bool| {
            if gid {
                Match::Gid {
                    id: id.to_string(),
                    neg,
                }
            } else {
                Match::Uid {
                    id: id.to_string(),
                    neg,
                }
            }
        };
        // Quirk 1: only the uid rule exempts port 53.
        let port_match = if dns && !gid {
            Match::DportsNot {
                proto: Proto::Tcp,
                ports: vec![DNS_PORT.into(), cfg.inbound_tunnel_port.clone()],
            }
        } else {
            Match::Dport {
                proto: Proto::Tcp,
                port: cfg.inbound_tunnel_port.clone(),
                neg: true,
            }
        };
        g.add_twins(
            Table::Nat,
            Chain::IstioOutput,
            Pos::Append,
            v4_lo,
            IPV6_LOOPBACK,
            |lo| {
                (
                    vec![
                        Match::OutIface("lo".into()),
                        Match::Dst {
                            cidr: lo.to_string(),
                            neg: true,
                        },
                        tcp(),
                        port_match.clone(),
                        owner(false),
                    ],
                    Target::Jump(Chain::InRedirect),
                )
            },
        );
        if keep_lo_return {
            let mut m = vec![Match::OutIface("lo".into())];
            if dns {
                m.push(tcp());
                m.push(Match::Dport {
                    proto: Proto::Tcp,
                    port: DNS_PORT.into(),
                    neg: true,
                });
            }
            m.push(owner(true));
            g.add(Table::Nat, Chain::IstioOutput, m, Target::Return);
        }
        g.add(
            Table::Nat,
            Chain::IstioOutput,
            vec![owner(false)],
            Target::Return,
        );
    };
    for uid in &cfg.proxy_uids {
        owner_rules(g, uid, false);
    }
    for gid in &cfg.proxy_gids {
        owner_rules(g, gid, true);
    }

    match &cfg.owner_groups {
        OwnerGroups::Only(groups) => g.add(
            Table::Nat,
            Chain::IstioOutput,
            vec![Match::GidsNot(groups.clone())],
            Target::Return,
        ),
        OwnerGroups::All { exclude } => {
            for grp in exclude {
                g.add(
                    Table::Nat,
                    Chain::IstioOutput,
                    vec![Match::Gid {
                        id: grp.clone(),
                        neg: false,
                    }],
                    Target::Return,
                );
            }
        }
    }

    if dns {
        setup_dns(g);
    }

    g.add_fam(
        Family::V4,
        Table::Nat,
        Chain::IstioOutput,
        vec![Match::Dst {
            cidr: v4_lo.to_string(),
            neg: false,
        }],
        Target::Return,
    );
    g.add_fam(
        Family::V6,
        Table::Nat,
        Chain::IstioOutput,
        vec![Match::Dst {
            cidr: IPV6_LOOPBACK.to_string(),
            neg: false,
        }],
        Target::Return,
    );
}

/// Loopback, outbound ports and CIDR include/exclude.
pub(super) fn outbound_destinations(g: &mut Gen) {
    let cfg = g.cfg;
    let nft = g.backend == Backend::Nftables;
    for f in [Family::V4, Family::V6] {
        for c in cfg.cidr_exclude.iter().filter(|c| family_of(c) == f) {
            g.add_fam(
                f,
                Table::Nat,
                Chain::IstioOutput,
                vec![Match::Dst {
                    cidr: c.clone(),
                    neg: false,
                }],
                Target::Return,
            );
        }
    }
    for p in &cfg.outbound_ports {
        g.add(
            Table::Nat,
            Chain::IstioOutput,
            vec![tcp(), dport(Proto::Tcp, p)],
            Target::Jump(Chain::Redirect),
        );
    }
    match &cfg.cidr_include {
        CidrInclude::All => {
            // iptables emits this per family; in an inet table one rule
            // covers both.
            let fams: &[Option<Family>] = if nft {
                &[None]
            } else {
                &[Some(Family::V4), Some(Family::V6)]
            };
            for f in fams {
                g.push(
                    Table::Nat,
                    Chain::IstioOutput,
                    Pos::Append,
                    *f,
                    vec![],
                    Target::Jump(Chain::Redirect),
                );
                for iface in &cfg.kube_virt_interfaces {
                    g.push(
                        Table::Nat,
                        Chain::Prerouting,
                        Pos::Insert(1),
                        *f,
                        vec![Match::InIface(iface.clone())],
                        Target::Jump(Chain::Redirect),
                    );
                }
            }
        }
        CidrInclude::List(list) => {
            for f in [Family::V4, Family::V6] {
                for c in list.iter().filter(|c| family_of(c) == f) {
                    for iface in &cfg.kube_virt_interfaces {
                        g.push(
                            Table::Nat,
                            Chain::Prerouting,
                            Pos::Insert(1),
                            Some(f),
                            vec![
                                Match::InIface(iface.clone()),
                                Match::Dst {
                                    cidr: c.clone(),
                                    neg: false,
                                },
                            ],
                            Target::Jump(Chain::Redirect),
                        );
                    }
                    g.add_fam(
                        f,
                        Table::Nat,
                        Chain::IstioOutput,
                        vec![Match::Dst {
                            cidr: c.clone(),
                            neg: false,
                        }],
                        Target::Jump(Chain::Redirect),
                    );
                }
            }
        }
    }
}

/// TPROXY's mangle OUTPUT rules.
pub(super) fn tproxy_output(g: &mut Gen) {
    let cfg = g.cfg;
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let v4_lo = cfg.ipv4_loopback_cidr.as_str();
    if tproxy {
        let mark = cfg.tproxy_mark.clone();
        g.add(
            Table::Mangle,
            Chain::Prerouting,
            vec![
                tcp(),
                Match::Mark {
                    mark: mark.clone(),
                    neg: false,
                },
            ],
            Target::ConnmarkSave,
        );
        g.add(
            Table::Mangle,
            Chain::Output,
            vec![
                tcp(),
                Match::OutIface("lo".into()),
                Match::Mark {
                    mark: mark.clone(),
                    neg: false,
                },
            ],
            Target::Return,
        );
        let ids: Vec<(String, bool)> = cfg
            .proxy_uids
            .iter()
            .map(|u| (u.clone(), false))
            .chain(cfg.proxy_gids.iter().map(|g| (g.clone(), true)))
            .collect();
        for (id, gid) in ids {
            g.add_twins(
                Table::Mangle,
                Chain::Output,
                Pos::Append,
                v4_lo,
                IPV6_LOOPBACK,
                |lo| {
                    let owner = if gid {
                        Match::Gid {
                            id: id.clone(),
                            neg: false,
                        }
                    } else {
                        Match::Uid {
                            id: id.clone(),
                            neg: false,
                        }
                    };
                    (
                        vec![
                            Match::Dst {
                                cidr: lo.to_string(),
                                neg: true,
                            },
                            tcp(),
                            Match::OutIface("lo".into()),
                            owner,
                        ],
                        Target::SetMark(OUTBOUND_MARK.into()),
                    )
                },
            );
        }
        g.add(
            Table::Mangle,
            Chain::Output,
            vec![tcp(), Match::Connmark(mark.clone())],
            Target::ConnmarkRestore,
        );
        g.push(
            Table::Mangle,
            Chain::Inbound,
            Pos::Insert(1),
            None,
            vec![
                tcp(),
                Match::Mark {
                    mark: mark.clone(),
                    neg: false,
                },
            ],
            Target::Return,
        );
        g.add_twins(
            Table::Mangle,
            Chain::Inbound,
            Pos::Insert(2),
            INBOUND_PASSTHROUGH_V4,
            INBOUND_PASSTHROUGH_V6,
            |src| {
                (
                    vec![
                        tcp(),
                        Match::Src {
                            cidr: src.to_string(),
                            neg: false,
                        },
                        Match::InIface("lo".into()),
                    ],
                    Target::Return,
                )
            },
        );
        g.push(
            Table::Mangle,
            Chain::Inbound,
            Pos::Insert(3),
            None,
            vec![
                tcp(),
                Match::InIface("lo".into()),
                Match::Mark {
                    mark: OUTBOUND_MARK.into(),
                    neg: true,
                },
            ],
            Target::Return,
        );
    }
}

/// `SetupDNSRedir`: nat redirect of DNS to the agent's 15053 and conntrack
/// zones in raw so replies of the redirected and the upstream flows do not
/// collide. The three parts append in Istio's order.
fn setup_dns(g: &mut Gen) {
    let jump_fams = dns_jump_families(g);
    let servers = dns_servers(g.cfg);
    dns_nat_redirects(g, &jump_fams, &servers);
    dns_raw_owner_zones(g);
    dns_raw_server_zones(g, &jump_fams, &servers);
}

/// iptables jumps per family that has a server; nft once (CASES.md §4.3).
fn dns_jump_families(g: &Gen) -> Vec<Option<Family>> {
    let cfg = g.cfg;
    if g.backend == Backend::Nftables {
        return vec![None];
    }
    let have = |f: Family| {
        cfg.capture_all_dns
            || match f {
                Family::V4 => !cfg.dns_v4.is_empty(),
                Family::V6 => !cfg.dns_v6.is_empty(),
            }
    };
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| have(*f))
        .map(Some)
        .collect()
}

/// resolv.conf's nameservers as host CIDRs.
fn dns_servers(cfg: &IstioConfig) -> Vec<(Family, String)> {
    cfg.dns_v4
        .iter()
        .map(|s| (Family::V4, format!("{s}/32")))
        .chain(cfg.dns_v6.iter().map(|s| (Family::V6, format!("{s}/128"))))
        .collect()
}

/// nat: ISTIO_OUTPUT jumps to ISTIO_OUTPUT_DNS, which redirects DNS (all,
/// or to the nameservers) to the agent.
fn dns_nat_redirects(g: &mut Gen, jump_fams: &[Option<Family>], servers: &[(Family, String)]) {
    for f in jump_fams {
        g.push(
            Table::Nat,
            Chain::IstioOutput,
            Pos::Append,
            *f,
            vec![],
            Target::Jump(Chain::OutputDns),
        );
    }
    for proto in [Proto::Tcp, Proto::Udp] {
        let target = Target::Redirect {
            port: DNS_AGENT_PORT.into(),
            dns_udp: proto == Proto::Udp,
        };
        if g.cfg.capture_all_dns {
            g.add(
                Table::Nat,
                Chain::OutputDns,
                vec![Match::Proto(proto), dport(proto, DNS_PORT)],
                target,
            );
        } else {
            for (f, s) in servers {
                g.add_fam(
                    *f,
                    Table::Nat,
                    Chain::OutputDns,
                    vec![
                        Match::Proto(proto),
                        dport(proto, DNS_PORT),
                        Match::Dst {
                            cidr: s.clone(),
                            neg: false,
                        },
                    ],
                    target.clone(),
                );
            }
        }
    }
}

/// raw: the proxy's own DNS to and from the agent port in their conntrack
/// zones.
fn dns_raw_owner_zones(g: &mut Gen) {
    let cfg = g.cfg;
    g.add(
        Table::Raw,
        Chain::Output,
        vec![],
        Target::Jump(Chain::OutputDns),
    );
    let owners: Vec<Match> = cfg
        .proxy_uids
        .iter()
        .map(|u| Match::Uid {
            id: u.clone(),
            neg: false,
        })
        .chain(cfg.proxy_gids.iter().map(|gid| Match::Gid {
            id: gid.clone(),
            neg: false,
        }))
        .collect();
    for owner in owners {
        g.add(
            Table::Raw,
            Chain::OutputDns,
            vec![udp(), dport(Proto::Udp, DNS_PORT), owner.clone()],
            Target::CtZone(1),
        );
        g.add(
            Table::Raw,
            Chain::OutputDns,
            vec![
                udp(),
                Match::Sport {
                    proto: Proto::Udp,
                    port: DNS_AGENT_PORT.into(),
                },
                owner,
            ],
            Target::CtZone(2),
        );
    }
}

/// raw: queries to and replies from the nameservers (or any port 53) in
/// their conntrack zones.
fn dns_raw_server_zones(g: &mut Gen, jump_fams: &[Option<Family>], servers: &[(Family, String)]) {
    for f in jump_fams {
        g.push(
            Table::Raw,
            Chain::Prerouting,
            Pos::Append,
            *f,
            vec![],
            Target::Jump(Chain::Inbound),
        );
    }
    let sport53 = Match::Sport {
        proto: Proto::Udp,
        port: DNS_PORT.into(),
    };
    if g.cfg.capture_all_dns {
        g.add(
            Table::Raw,
            Chain::OutputDns,
            vec![udp(), dport(Proto::Udp, DNS_PORT)],
            Target::CtZone(2),
        );
        g.add(
            Table::Raw,
            Chain::Inbound,
            vec![udp(), sport53],
            Target::CtZone(1),
        );
    } else {
        for (f, s) in servers {
            g.add_fam(
                *f,
                Table::Raw,
                Chain::OutputDns,
                vec![
                    udp(),
                    dport(Proto::Udp, DNS_PORT),
                    Match::Dst {
                        cidr: s.clone(),
                        neg: false,
                    },
                ],
                Target::CtZone(2),
            );
            g.add_fam(
                *f,
                Table::Raw,
                Chain::Inbound,
                vec![
                    udp(),
                    sport53.clone(),
                    Match::Src {
                        cidr: s.clone(),
                        neg: false,
                    },
                ],
                Target::CtZone(1),
            );
        }
    }
}
