//! The rule model and its generator: Istio's capture rules as data, in the
//! order istio-iptables emits them, for either backend.
//!
//! Istio reference (istio/istio): `tools/istio-iptables/pkg/capture/run.go`
//! (`Run`, `SetupDNSRedir`, `handleInboundIpv6Rules` …) and the nftables twin
//! `tools/istio-nftables/pkg/capture/run.go`. The two differ in a few places
//! (DNS jumps, drop-invalid, owner-group spelling); `Backend` selects which.

use super::config::{CidrInclude, InboundPorts, InterceptionMode, IstioConfig, OwnerGroups};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Mangle,
    Nat,
    Raw,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }
    pub const ALL: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    Redirect,
    InRedirect,
    IstioOutput,
    OutputDns,
    Divert,
    Tproxy,
    Drop,
}

impl Chain {
    pub fn builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }
    pub fn iptables(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::Inbound => "ISTIO_INBOUND",
            Chain::Redirect => "ISTIO_REDIRECT",
            Chain::InRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::OutputDns => "ISTIO_OUTPUT_DNS",
            Chain::Divert => "ISTIO_DIVERT",
            Chain::Tproxy => "ISTIO_TPROXY",
            Chain::Drop => "ISTIO_DROP",
        }
    }
    pub fn nft(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
            Chain::Inbound => "istio-inbound",
            Chain::Redirect => "istio-redirect",
            Chain::InRedirect => "istio-in-redirect",
            Chain::IstioOutput => "istio-output",
            Chain::OutputDns => "istio-output-dns",
            Chain::Divert => "istio-divert",
            Chain::Tproxy => "istio-tproxy",
            Chain::Drop => "istio-drop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One match of a rule. Address matches take the family of their rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    InIface(String),
    OutIface(String),
    Src {
        cidr: String,
        neg: bool,
    },
    Dst {
        cidr: String,
        neg: bool,
    },
    Proto(Proto),
    Dport {
        proto: Proto,
        port: String,
        neg: bool,
    },
    Sport {
        proto: Proto,
        port: String,
    },
    /// `-m multiport ! --dports a,b`.
    DportsNot {
        proto: Proto,
        ports: Vec<String>,
    },
    Uid {
        id: String,
        neg: bool,
    },
    Gid {
        id: String,
        neg: bool,
    },
    /// Several negated gid owners in one rule (owner-group include list).
    GidsNot(Vec<String>),
    CtState(&'static [&'static str]),
    Mark {
        mark: String,
        neg: bool,
    },
    Connmark(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Jump(Chain),
    Return,
    Accept,
    Drop,
    /// REDIRECT `--to-ports`; `dns_udp` keeps Istio's `--to-port` spelling.
    Redirect {
        port: String,
        dns_udp: bool,
    },
    Tproxy {
        port: String,
        mark: String,
    },
    SetMark(String),
    ConnmarkSave,
    ConnmarkRestore,
    CtZone(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pos {
    Append,
    /// 1-based, as `iptables -I CHAIN N`.
    Insert(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: Chain,
    pub pos: Pos,
    /// None: the rule has no address match and applies to both families.
    pub family: Option<Family>,
    pub matches: Vec<Match>,
    pub target: Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// The whole rule set in emission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub ipv6: bool,
}

impl RuleSet {
    /// Rules of one iptables family, in emission order.
    pub fn family(&self, f: Family) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |r| r.family.is_none() || r.family == Some(f))
    }
}

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

/// Generate Istio's rule set for one backend.
pub fn generate(cfg: &IstioConfig, backend: Backend) -> RuleSet {
    let mut g = Gen {
        cfg,
        backend,
        rules: Vec::new(),
    };
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let nft = backend == Backend::Nftables;
    let v4_lo = cfg.ipv4_loopback_cidr.as_str();

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
                port_rules(&mut g, None);
            }
            InboundPorts::List(list) => {
                for p in list {
                    port_rules(&mut g, Some(p));
                }
            }
            InboundPorts::None => {}
        }
    }

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
        owner_rules(&mut g, uid, false);
    }
    for gid in &cfg.proxy_gids {
        owner_rules(&mut g, gid, true);
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
        setup_dns(&mut g);
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

    RuleSet {
        rules: g.rules,
        ipv6: cfg.ipv6,
    }
}

/// `SetupDNSRedir`: nat redirect of DNS to the agent's 15053 and conntrack
/// zones in raw so replies of the redirected and the upstream flows do not
/// collide.
fn setup_dns(g: &mut Gen) {
    let cfg = g.cfg;
    let nft = g.backend == Backend::Nftables;
    let have = |f: Family| {
        cfg.capture_all_dns
            || match f {
                Family::V4 => !cfg.dns_v4.is_empty(),
                Family::V6 => !cfg.dns_v6.is_empty(),
            }
    };
    // iptables jumps per family that has a server; nft once (CASES.md §4.3).
    let jump_fams: Vec<Option<Family>> = if nft {
        vec![None]
    } else {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| have(*f))
            .map(Some)
            .collect()
    };
    for f in &jump_fams {
        g.push(
            Table::Nat,
            Chain::IstioOutput,
            Pos::Append,
            *f,
            vec![],
            Target::Jump(Chain::OutputDns),
        );
    }
    let servers: Vec<(Family, String)> = cfg
        .dns_v4
        .iter()
        .map(|s| (Family::V4, format!("{s}/32")))
        .chain(cfg.dns_v6.iter().map(|s| (Family::V6, format!("{s}/128"))))
        .collect();
    for proto in [Proto::Tcp, Proto::Udp] {
        let target = Target::Redirect {
            port: DNS_AGENT_PORT.into(),
            dns_udp: proto == Proto::Udp,
        };
        if cfg.capture_all_dns {
            g.add(
                Table::Nat,
                Chain::OutputDns,
                vec![Match::Proto(proto), dport(proto, DNS_PORT)],
                target,
            );
        } else {
            for (f, s) in &servers {
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
    for f in &jump_fams {
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
    if cfg.capture_all_dns {
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
        for (f, s) in &servers {
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
