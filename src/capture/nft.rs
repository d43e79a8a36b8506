//! Native nftables: Istio's `inet istio-proxy-{nat,mangle,raw}` tables as an
//! `nft -f` script (`tools/istio-nftables/pkg/capture/run.go`, knftables
//! transaction text), and a reader of such scripts for comparisons.

use std::collections::BTreeMap;

use super::model::{Chain, Family, Match, Pos, Proto, Rule, RuleSet, Table, Target};

pub const TABLES: [&str; 3] = ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"];

fn table_name(t: Table) -> &'static str {
    match t {
        Table::Nat => TABLES[0],
        Table::Mangle => TABLES[1],
        Table::Raw => TABLES[2],
    }
}

/// Declaration order and base-chain spec per table (Istio's constants).
fn chain_decls(t: Table) -> &'static [(Chain, Option<&'static str>)] {
    match t {
        Table::Nat => &[
            (
                Chain::Prerouting,
                Some("{ type nat hook prerouting priority -100 ; }"),
            ),
            (
                Chain::Output,
                Some("{ type nat hook output priority -100 ; }"),
            ),
            (Chain::Inbound, None),
            (Chain::Redirect, None),
            (Chain::InRedirect, None),
            (Chain::IstioOutput, None),
            (Chain::OutputDns, None),
        ],
        Table::Mangle => &[
            (
                Chain::Prerouting,
                Some("{ type filter hook prerouting priority -150 ; }"),
            ),
            (
                Chain::Output,
                Some("{ type route hook output priority -150 ; }"),
            ),
            (Chain::Divert, None),
            (Chain::Tproxy, None),
            (Chain::Inbound, None),
            (Chain::Drop, None),
        ],
        Table::Raw => &[
            (
                Chain::Prerouting,
                Some("{ type filter hook prerouting priority -300 ; }"),
            ),
            (
                Chain::Output,
                Some("{ type filter hook output priority -300 ; }"),
            ),
            (Chain::Inbound, None),
            (Chain::OutputDns, None),
        ],
    }
}

fn ne(neg: bool) -> &'static str {
    if neg { "!= " } else { "" }
}

fn addr_kw(f: Option<Family>) -> &'static str {
    match f {
        Some(Family::V6) => "ip6",
        _ => "ip",
    }
}

/// Where a match goes in the rule, to read like Istio's nft rules:
/// interface, protocol, conntrack state, then addresses and ports (ports
/// first in raw, as Istio writes them), marks, owners.
fn rank(m: &Match, raw: bool) -> u8 {
    match m {
        Match::InIface(_) | Match::OutIface(_) => 0,
        Match::Proto(_) => 1,
        Match::CtState(_) => 2,
        Match::Src { .. } | Match::Dst { .. } => {
            if raw {
                4
            } else {
                3
            }
        }
        Match::Dport { .. } | Match::Sport { .. } | Match::DportsNot { .. } => {
            if raw {
                3
            } else {
                4
            }
        }
        Match::Mark { .. } | Match::Connmark(_) => 5,
        Match::Uid { .. } | Match::Gid { .. } | Match::GidsNot(_) => 6,
    }
}

/// Istio leaves out `meta l4proto` where a port match already implies it:
/// raw-table rules, DNS redirects (except capture-all TCP), outbound-port
/// redirects and outbound-port excludes.
fn drops_l4proto(r: &Rule) -> bool {
    let port = r.matches.iter().find_map(|m| match m {
        Match::Dport { proto, neg, .. } => Some((*proto, *neg)),
        Match::Sport { proto, .. } => Some((*proto, false)),
        _ => None,
    });
    let Some((proto, negated)) = port else {
        return false;
    };
    let has_addr = r
        .matches
        .iter()
        .any(|m| matches!(m, Match::Dst { .. } | Match::Src { .. }));
    r.table == Table::Raw
        || (r.chain == Chain::OutputDns && (has_addr || proto == Proto::Udp))
        || (r.chain == Chain::IstioOutput
            && !negated
            && matches!(r.target, Target::Jump(Chain::Redirect) | Target::Return))
}

fn render_rule(r: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    // Istio spells owners `skuid` in nat/mangle and `meta skuid` in raw.
    let raw = r.table == Table::Raw;
    let meta = if raw { "meta " } else { "" };
    let mut matches: Vec<&Match> = r.matches.iter().collect();
    if drops_l4proto(r) {
        matches.retain(|m| !matches!(m, Match::Proto(_)));
    }
    matches.sort_by_key(|m| rank(m, raw));
    for m in matches {
        parts.push(match m {
            Match::InIface(i) => format!("iifname {i}"),
            Match::OutIface(i) => format!("oifname {i}"),
            Match::Src { cidr, neg } => format!("{} saddr {}{cidr}", addr_kw(r.family), ne(*neg)),
            Match::Dst { cidr, neg } => format!("{} daddr {}{cidr}", addr_kw(r.family), ne(*neg)),
            Match::Proto(p) => format!("meta l4proto {}", p.name()),
            Match::Dport { proto, port, neg } => {
                format!("{} dport {}{port}", proto.name(), ne(*neg))
            }
            Match::Sport { proto, port } => format!("{} sport {port}", proto.name()),
            Match::DportsNot { proto, ports } => {
                format!("{} dport != {{ {} }}", proto.name(), ports.join(", "))
            }
            Match::Uid { id, neg } => format!("{meta}skuid {}{id}", ne(*neg)),
            Match::Gid { id, neg } => format!("{meta}skgid {}{id}", ne(*neg)),
            Match::GidsNot(ids) => ids
                .iter()
                .map(|g| format!("{meta}skgid != {g}"))
                .collect::<Vec<_>>()
                .join(" "),
            Match::CtState(s) => format!("ct state {}", s.join(",").to_lowercase()),
            Match::Mark { mark, neg } => format!("mark {}{mark}", ne(*neg)),
            Match::Connmark(m) => format!("ct mark {m}"),
        });
    }
    parts.push(match &r.target {
        Target::Jump(c) => format!("counter jump {}", c.nft()),
        Target::Return => "counter return".into(),
        Target::Accept => "counter accept".into(),
        Target::Drop => "counter drop".into(),
        Target::Redirect { port, .. } => format!("counter redirect to :{port}"),
        Target::Tproxy { port, mark } => format!(
            "tproxy {} to :{port} meta mark set {mark} counter accept",
            addr_kw(r.family)
        ),
        Target::SetMark(m) => format!("counter meta mark set {m}"),
        Target::ConnmarkSave => "counter ct mark set mark".into(),
        Target::ConnmarkRestore => "counter meta mark set ct mark".into(),
        Target::CtZone(z) => format!("counter ct zone set {z}"),
    });
    parts.join(" ")
}

/// The `nft -f` script Istio's nft backend would run: per table `add table`,
/// `flush table`, the chains that have rules, then the rules in emission
/// order. An insert into an empty chain (or past its end) becomes an add.
pub fn render(rs: &RuleSet) -> String {
    let mut out = String::new();
    for table in [Table::Nat, Table::Mangle, Table::Raw] {
        let rules: Vec<&Rule> = rs.rules.iter().filter(|r| r.table == table).collect();
        if rules.is_empty() {
            continue;
        }
        let t = table_name(table);
        out.push_str(&format!("add table inet {t}\nflush table inet {t}\n"));
        for (chain, spec) in chain_decls(table) {
            let used = rules
                .iter()
                .any(|r| r.chain == *chain || r.target == Target::Jump(*chain));
            if used {
                match spec {
                    Some(s) => out.push_str(&format!("add chain inet {t} {} {s}\n", chain.nft())),
                    None => out.push_str(&format!("add chain inet {t} {}\n", chain.nft())),
                }
            }
        }
        let mut count: BTreeMap<Chain, usize> = BTreeMap::new();
        for r in rules {
            let n = count.entry(r.chain).or_default();
            let text = render_rule(r);
            match r.pos {
                Pos::Insert(p) if p - 1 < *n => out.push_str(&format!(
                    "insert rule inet {t} {} index {} {text}\n",
                    r.chain.nft(),
                    p - 1
                )),
                _ => out.push_str(&format!("add rule inet {t} {} {text}\n", r.chain.nft())),
            }
            *n += 1;
        }
    }
    out
}

/// Prefix that deletes Istio's tables whether or not they exist, so the
/// whole apply is one `nft -f` transaction (`add` makes `delete` safe).
pub fn delete_tables_script() -> String {
    TABLES
        .iter()
        .map(|t| format!("add table inet {t}\ndelete table inet {t}\n"))
        .collect()
}

/// A replayed nft script: (table, chain) -> (base-chain spec, ordered rules).
pub type Replayed = BTreeMap<(String, String), (Option<String>, Vec<String>)>;

/// Replay `add chain`, `add rule` and `insert rule … index N` (0-based,
/// before the rule at N) of a knftables-style script.
pub fn replay(script: &str) -> Result<Replayed, String> {
    let mut out: Replayed = BTreeMap::new();
    for (i, line) in script.lines().enumerate() {
        let line = line.trim();
        let err = |m: &str| format!("line {}: {m}: {line}", i + 1);
        let w: Vec<&str> = line.splitn(6, ' ').collect();
        match w.as_slice() {
            [] | [""] => {}
            ["add" | "flush" | "delete", "table", ..] => {}
            ["add", "chain", "inet", t, c] => {
                out.entry((t.to_string(), c.to_string())).or_default();
            }
            ["add", "chain", "inet", t, c, spec] => {
                out.entry((t.to_string(), c.to_string())).or_default().0 = Some(spec.to_string());
            }
            ["add", "rule", "inet", t, c, rule] => out
                .entry((t.to_string(), c.to_string()))
                .or_default()
                .1
                .push(rule.to_string()),
            ["insert", "rule", "inet", t, c, rest] => {
                let rest = rest.strip_prefix("index ").ok_or_else(|| err("no index"))?;
                let (n, rule) = rest.split_once(' ').ok_or_else(|| err("no rule"))?;
                let n: usize = n.parse().map_err(|_| err("bad index"))?;
                let rules = &mut out.entry((t.to_string(), c.to_string())).or_default().1;
                rules.insert(n.min(rules.len()), rule.to_string());
            }
            _ => return Err(err("unknown command")),
        }
    }
    Ok(out)
}

/// Statement heads that take one argument (or `!= arg`).
const HEADS: &[&[&str]] = &[
    &["iifname"],
    &["oifname"],
    &["meta", "l4proto"],
    &["meta", "skuid"],
    &["meta", "skgid"],
    &["meta", "mark", "set"],
    &["skuid"],
    &["skgid"],
    &["ip", "saddr"],
    &["ip", "daddr"],
    &["ip6", "saddr"],
    &["ip6", "daddr"],
    &["tcp", "dport"],
    &["tcp", "sport"],
    &["udp", "dport"],
    &["udp", "sport"],
    &["ct", "state"],
    &["ct", "mark", "set"],
    &["ct", "mark"],
    &["ct", "zone", "set"],
    &["mark"],
    &["jump"],
    &["redirect", "to"],
];

/// Canonical form of one nft rule for semantic comparison: match
/// statements as a sorted set, with the spellings `nft list` would also
/// normalise (`skuid` = `meta skuid`, quotes, `/32`, a `meta l4proto` made
/// redundant by a `tcp`/`udp` header match), actions in order at the end.
pub fn canonical_rule(rule: &str) -> Vec<String> {
    let words: Vec<String> = rule
        .replace(", ", ",")
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_string())
        .collect();
    let mut matches: Vec<String> = Vec::new();
    let mut actions: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if w == "counter" {
            i += 1;
            continue;
        }
        if matches!(w, "return" | "accept" | "drop") {
            actions.push(w.to_string());
            i += 1;
            continue;
        }
        if w == "tproxy" {
            // tproxy ip to :PORT
            actions.push(words[i..(i + 4).min(words.len())].join(" "));
            i += 4;
            continue;
        }
        let head = HEADS.iter().find(|h| {
            h.iter()
                .enumerate()
                .all(|(k, x)| words.get(i + k).map(String::as_str) == Some(*x))
        });
        let Some(head) = head else {
            matches.push(w.to_string());
            i += 1;
            continue;
        };
        i += head.len();
        let mut arg = Vec::new();
        if words.get(i).map(String::as_str) == Some("!=") {
            arg.push("!=".to_string());
            i += 1;
        }
        if words.get(i).map(String::as_str) == Some("{") {
            while i < words.len() && words[i] != "}" {
                arg.push(words[i].clone());
                i += 1;
            }
            arg.push("}".into());
            i += 1;
        } else if let Some(a) = words.get(i) {
            let a = a
                .strip_suffix("/32")
                .or_else(|| a.strip_suffix("/128"))
                .unwrap_or(a);
            arg.push(a.to_string());
            i += 1;
        }
        let mut head: Vec<&str> = head.to_vec();
        if head == ["skuid"] || head == ["skgid"] {
            head.insert(0, "meta");
        }
        let stmt = format!("{} {}", head.join(" "), arg.join(" "));
        let is_action = matches!(
            head.as_slice(),
            ["meta", "mark", "set"]
                | ["ct", "mark", "set"]
                | ["ct", "zone", "set"]
                | ["jump"]
                | ["redirect", "to"]
        );
        if is_action {
            actions.push(stmt);
        } else {
            matches.push(stmt);
        }
    }
    // `meta l4proto tcp` is implied by any `tcp …` header match, not only a
    // port: nft 1.0.6 lists `meta l4proto tcp tcp flags syn` as `tcp flags
    // syn`, as it does `… tcp dport 22`.
    let implied: Vec<String> = matches
        .iter()
        .filter_map(|m| {
            let p = m.split(' ').next()?;
            matches!(p, "tcp" | "udp").then(|| format!("meta l4proto {p}"))
        })
        .collect();
    matches.retain(|m| !implied.contains(m));
    matches.sort();
    matches.extend(actions);
    matches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(table: Table, chain: Chain, matches: Vec<Match>, target: Target) -> Rule {
        Rule {
            table,
            chain,
            pos: Pos::Append,
            family: None,
            matches,
            target,
        }
    }

    fn v4(mut r: Rule) -> Rule {
        r.family = Some(Family::V4);
        r
    }

    fn v6(mut r: Rule) -> Rule {
        r.family = Some(Family::V6);
        r
    }

    fn at(mut r: Rule, n: usize) -> Rule {
        r.pos = Pos::Insert(n);
        r
    }

    fn dport(proto: Proto, port: &str, neg: bool) -> Match {
        Match::Dport {
            proto,
            port: port.into(),
            neg,
        }
    }

    fn dst(cidr: &str, neg: bool) -> Match {
        Match::Dst {
            cidr: cidr.into(),
            neg,
        }
    }

    fn redirect(port: &str) -> Target {
        Target::Redirect {
            port: port.into(),
            dns_udp: false,
        }
    }

    /// Matches are given out of Istio's order on purpose: the renderer
    /// must sort them.
    fn rule_set() -> RuleSet {
        use super::Proto::{Tcp, Udp};
        use Chain::*;
        use Match::*;
        let nat = |c, m, t| rule(Table::Nat, c, m, t);
        let mangle = |c, m, t| rule(Table::Mangle, c, m, t);
        let raw = |c, m, t| rule(Table::Raw, c, m, t);
        let rules = vec![
            nat(Prerouting, vec![Proto(Tcp)], Target::Jump(Inbound)),
            nat(
                Prerouting,
                vec![
                    Src {
                        cidr: "10.1.0.0/16".into(),
                        neg: false,
                    },
                    InIface("eth0".into()),
                ],
                Target::Return,
            ),
            nat(
                Inbound,
                vec![dport(Tcp, "22", false), Proto(Tcp)],
                Target::Return,
            ),
            // Inside the chain's rules: an insert; past them: an add.
            at(nat(Inbound, vec![InIface("lo".into())], Target::Return), 1),
            at(nat(Inbound, vec![Proto(Tcp)], Target::Return), 4),
            nat(
                Inbound,
                vec![DportsNot {
                    proto: Tcp,
                    ports: vec!["22".into(), "15020".into()],
                }],
                Target::Jump(InRedirect),
            ),
            // An insert at 1 into an empty chain is an add.
            at(nat(Output, vec![], Target::Jump(IstioOutput)), 1),
            v4(nat(
                IstioOutput,
                vec![dst("127.0.0.1/32", true), OutIface("lo".into())],
                Target::Return,
            )),
            v6(nat(
                IstioOutput,
                vec![dst("::1/128", false)],
                Target::Return,
            )),
            nat(
                IstioOutput,
                vec![Proto(Tcp), dport(Tcp, "80", false)],
                Target::Jump(Redirect),
            ),
            nat(
                IstioOutput,
                vec![Proto(Tcp), dport(Tcp, "81", false)],
                Target::Return,
            ),
            nat(
                IstioOutput,
                vec![Proto(Tcp), dport(Tcp, "82", true)],
                Target::Return,
            ),
            nat(
                IstioOutput,
                vec![Proto(Tcp), dport(Tcp, "83", false)],
                Target::Jump(InRedirect),
            ),
            nat(
                IstioOutput,
                vec![Gid {
                    id: "1337".into(),
                    neg: true,
                }],
                Target::Return,
            ),
            nat(Redirect, vec![Proto(Tcp)], redirect("15001")),
            nat(
                OutputDns,
                vec![Proto(Udp), dport(Udp, "53", false)],
                Target::Redirect {
                    port: "15053".into(),
                    dns_udp: true,
                },
            ),
            v4(nat(
                OutputDns,
                vec![
                    dport(Tcp, "53", false),
                    Proto(Tcp),
                    dst("10.0.0.1/32", false),
                ],
                redirect("15053"),
            )),
            nat(
                OutputDns,
                vec![Proto(Tcp), dport(Tcp, "53", false)],
                redirect("15053"),
            ),
            mangle(
                Prerouting,
                vec![CtState(&["RELATED", "ESTABLISHED"]), Proto(Tcp)],
                Target::Jump(Divert),
            ),
            mangle(
                Prerouting,
                vec![Connmark("1337".into())],
                Target::ConnmarkRestore,
            ),
            mangle(Divert, vec![], Target::SetMark("1337".into())),
            mangle(Divert, vec![], Target::Accept),
            v6(mangle(
                Tproxy,
                vec![dst("::1/128", true), Proto(Tcp)],
                Target::Tproxy {
                    port: "15006".into(),
                    mark: "1337".into(),
                },
            )),
            v4(mangle(
                Tproxy,
                vec![Proto(Tcp)],
                Target::Tproxy {
                    port: "15006".into(),
                    mark: "1337".into(),
                },
            )),
            mangle(
                Output,
                vec![
                    Uid {
                        id: "0".into(),
                        neg: true,
                    },
                    Mark {
                        mark: "1337".into(),
                        neg: false,
                    },
                ],
                Target::ConnmarkSave,
            ),
            mangle(
                Output,
                vec![Mark {
                    mark: "1338".into(),
                    neg: true,
                }],
                Target::Return,
            ),
            mangle(Drop, vec![CtState(&["INVALID"])], Target::Drop),
            raw(
                Prerouting,
                vec![
                    Proto(Udp),
                    Sport {
                        proto: Udp,
                        port: "53".into(),
                    },
                ],
                Target::CtZone(1),
            ),
            v4(raw(
                Output,
                vec![
                    Uid {
                        id: "1337".into(),
                        neg: false,
                    },
                    dst("10.0.0.1/32", false),
                    dport(Udp, "53", false),
                    Proto(Udp),
                ],
                Target::CtZone(2),
            )),
            raw(
                Output,
                vec![
                    Gid {
                        id: "1337".into(),
                        neg: false,
                    },
                    GidsNot(vec!["1".into(), "2".into()]),
                ],
                Target::Return,
            ),
        ];
        RuleSet { rules, ipv6: true }
    }

    const RENDERED: &str = "\
add table inet istio-proxy-nat
flush table inet istio-proxy-nat
add chain inet istio-proxy-nat prerouting { type nat hook prerouting priority -100 ; }
add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }
add chain inet istio-proxy-nat istio-inbound
add chain inet istio-proxy-nat istio-redirect
add chain inet istio-proxy-nat istio-in-redirect
add chain inet istio-proxy-nat istio-output
add chain inet istio-proxy-nat istio-output-dns
add rule inet istio-proxy-nat prerouting meta l4proto tcp counter jump istio-inbound
add rule inet istio-proxy-nat prerouting iifname eth0 ip saddr 10.1.0.0/16 counter return
add rule inet istio-proxy-nat istio-inbound meta l4proto tcp tcp dport 22 counter return
insert rule inet istio-proxy-nat istio-inbound index 0 iifname lo counter return
add rule inet istio-proxy-nat istio-inbound meta l4proto tcp counter return
add rule inet istio-proxy-nat istio-inbound tcp dport != { 22, 15020 } counter jump istio-in-redirect
add rule inet istio-proxy-nat output counter jump istio-output
add rule inet istio-proxy-nat istio-output oifname lo ip daddr != 127.0.0.1/32 counter return
add rule inet istio-proxy-nat istio-output ip6 daddr ::1/128 counter return
add rule inet istio-proxy-nat istio-output tcp dport 80 counter jump istio-redirect
add rule inet istio-proxy-nat istio-output tcp dport 81 counter return
add rule inet istio-proxy-nat istio-output meta l4proto tcp tcp dport != 82 counter return
add rule inet istio-proxy-nat istio-output meta l4proto tcp tcp dport 83 counter jump istio-in-redirect
add rule inet istio-proxy-nat istio-output skgid != 1337 counter return
add rule inet istio-proxy-nat istio-redirect meta l4proto tcp counter redirect to :15001
add rule inet istio-proxy-nat istio-output-dns udp dport 53 counter redirect to :15053
add rule inet istio-proxy-nat istio-output-dns ip daddr 10.0.0.1/32 tcp dport 53 counter redirect to :15053
add rule inet istio-proxy-nat istio-output-dns meta l4proto tcp tcp dport 53 counter redirect to :15053
add table inet istio-proxy-mangle
flush table inet istio-proxy-mangle
add chain inet istio-proxy-mangle prerouting { type filter hook prerouting priority -150 ; }
add chain inet istio-proxy-mangle output { type route hook output priority -150 ; }
add chain inet istio-proxy-mangle istio-divert
add chain inet istio-proxy-mangle istio-tproxy
add chain inet istio-proxy-mangle istio-drop
add rule inet istio-proxy-mangle prerouting meta l4proto tcp ct state related,established counter jump istio-divert
add rule inet istio-proxy-mangle prerouting ct mark 1337 counter meta mark set ct mark
add rule inet istio-proxy-mangle istio-divert counter meta mark set 1337
add rule inet istio-proxy-mangle istio-divert counter accept
add rule inet istio-proxy-mangle istio-tproxy meta l4proto tcp ip6 daddr != ::1/128 tproxy ip6 to :15006 meta mark set 1337 counter accept
add rule inet istio-proxy-mangle istio-tproxy meta l4proto tcp tproxy ip to :15006 meta mark set 1337 counter accept
add rule inet istio-proxy-mangle output mark 1337 skuid != 0 counter ct mark set mark
add rule inet istio-proxy-mangle output mark != 1338 counter return
add rule inet istio-proxy-mangle istio-drop ct state invalid counter drop
add table inet istio-proxy-raw
flush table inet istio-proxy-raw
add chain inet istio-proxy-raw prerouting { type filter hook prerouting priority -300 ; }
add chain inet istio-proxy-raw output { type filter hook output priority -300 ; }
add rule inet istio-proxy-raw prerouting udp sport 53 counter ct zone set 1
add rule inet istio-proxy-raw output udp dport 53 ip daddr 10.0.0.1/32 meta skuid 1337 counter ct zone set 2
add rule inet istio-proxy-raw output meta skgid 1337 meta skgid != 1 meta skgid != 2 counter return
";

    #[test]
    fn render_writes_istios_tables_chains_and_rule_spellings() {
        let got = render(&rule_set());
        for (n, (g, w)) in got.lines().zip(RENDERED.lines()).enumerate() {
            assert_eq!(g, w, "line {}", n + 1);
        }
        assert_eq!(got, RENDERED);
    }

    #[test]
    fn render_leaves_out_tables_without_rules() {
        let mut rs = rule_set();
        rs.rules.retain(|r| r.table == Table::Mangle);
        let got = render(&rs);
        assert!(
            got.starts_with("add table inet istio-proxy-mangle\n"),
            "{got}"
        );
        assert!(!got.contains("istio-proxy-nat") && !got.contains("istio-proxy-raw"));
        rs.rules.clear();
        assert_eq!(render(&rs), "");
    }

    #[test]
    fn delete_tables_script_deletes_each_istio_table_even_if_absent() {
        assert_eq!(
            delete_tables_script(),
            "add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n\
             add table inet istio-proxy-mangle\ndelete table inet istio-proxy-mangle\n\
             add table inet istio-proxy-raw\ndelete table inet istio-proxy-raw\n"
        );
    }

    #[test]
    fn replay_follows_adds_and_inserts_by_index() {
        let script = "add table inet t\nflush table inet t\ndelete table inet u\n\n\
            add chain inet t pre { type nat hook prerouting priority -100 ; }\n\
            add chain inet t plain\n\
            add rule inet t pre counter return\n\
            insert rule inet t pre index 0 iifname lo counter return\n\
            insert rule inet t pre index 1 tcp dport 22 counter return\n\
            insert rule inet t pre index 9 counter accept\n\
            insert rule inet t other index 0 counter drop\n";
        let r = replay(script).unwrap();
        let key = |c: &str| ("t".to_string(), c.to_string());
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[&key("pre")],
            (
                Some("{ type nat hook prerouting priority -100 ; }".to_string()),
                vec![
                    "iifname lo counter return".to_string(),
                    "tcp dport 22 counter return".to_string(),
                    "counter return".to_string(),
                    "counter accept".to_string(),
                ]
            )
        );
        assert_eq!(r[&key("plain")], (None, vec![]));
        assert_eq!(r[&key("other")], (None, vec!["counter drop".to_string()]));
    }

    #[test]
    fn replay_rejects_what_it_cannot_place() {
        for (line, why) in [
            ("insert rule inet t c 0 counter drop", "no index"),
            ("insert rule inet t c index 0", "no rule"),
            ("insert rule inet t c index x counter drop", "bad index"),
            ("list ruleset", "unknown command"),
        ] {
            let e = replay(&format!("add table inet t\n{line}\n")).unwrap_err();
            assert_eq!(e, format!("line 2: {why}: {line}"));
        }
    }

    #[test]
    fn replayed_render_has_every_rule_where_the_kernel_puts_it() {
        let r = replay(&render(&rule_set())).unwrap();
        let inbound = &r[&("istio-proxy-nat".to_string(), "istio-inbound".to_string())].1;
        assert_eq!(
            inbound,
            &[
                "iifname lo counter return",
                "meta l4proto tcp tcp dport 22 counter return",
                "meta l4proto tcp counter return",
                "tcp dport != { 22, 15020 } counter jump istio-in-redirect",
            ]
        );
    }

    #[test]
    fn canonical_rule_takes_nft_lists_spelling() {
        assert_eq!(
            canonical_rule(
                "iifname \"lo\" meta l4proto tcp tcp dport != { 22, 15020 } counter jump istio-in-redirect"
            ),
            [
                "iifname lo",
                "tcp dport != { 22,15020 }",
                "jump istio-in-redirect"
            ]
        );
        assert_eq!(
            canonical_rule(
                "ip daddr 10.0.0.1/32 skuid 1337 tproxy ip to :15006 meta mark set 1337 counter accept"
            ),
            [
                "ip daddr 10.0.0.1",
                "meta skuid 1337",
                "tproxy ip to :15006",
                "meta mark set 1337",
                "accept"
            ]
        );
        assert_eq!(
            canonical_rule("tproxy ip6 to :15006 accept"),
            ["tproxy ip6 to :15006", "accept"]
        );
        assert_eq!(
            canonical_rule("ip6 saddr ::1/128 skgid != 7 counter return"),
            ["ip6 saddr ::1", "meta skgid != 7", "return"]
        );
        assert_eq!(
            canonical_rule("udp sport 53 meta l4proto udp counter ct zone set 1"),
            ["udp sport 53", "ct zone set 1"]
        );
        assert_eq!(
            canonical_rule("ct state related,established ct mark 7 counter ct mark set mark drop"),
            [
                "ct mark 7",
                "ct state related,established",
                "ct mark set mark",
                "drop"
            ]
        );
        assert_eq!(
            canonical_rule("oifname lo meta l4proto tcp counter redirect to :15001"),
            ["meta l4proto tcp", "oifname lo", "redirect to :15001"]
        );
        // A set cut short reads as if closed, rather than panicking.
        assert_eq!(canonical_rule("tcp dport { 1, 2"), ["tcp dport { 1,2 }"]);
        // A statement it does not know stays, word by word.
        assert_eq!(canonical_rule("notrack"), ["notrack"]);
    }

    #[test]
    fn canonical_rule_drops_l4proto_before_any_header_match_as_nft_list_does() {
        // What `nft list` printed for these rules (nft 1.0.6, Debian 12).
        for (written, listed) in [
            (
                "meta l4proto tcp tcp flags syn counter accept",
                "tcp flags syn counter accept",
            ),
            (
                "meta l4proto tcp tcp dport 22 counter accept",
                "tcp dport 22 counter accept",
            ),
            (
                "meta l4proto udp udp length 10 counter accept",
                "udp length 10 counter accept",
            ),
        ] {
            assert_eq!(canonical_rule(written), canonical_rule(listed), "{written}");
        }
    }

    #[test]
    fn canonical_rule_tells_apart_what_the_kernel_would() {
        for (a, b) in [
            (
                "tcp dport 80 counter return",
                "tcp dport != 80 counter return",
            ),
            ("tcp dport 80 counter return", "udp dport 80 counter return"),
            (
                "ip daddr 10.0.0.1 counter return",
                "ip daddr 10.0.0.0/8 counter return",
            ),
            (
                "meta l4proto tcp counter return",
                "meta l4proto udp counter return",
            ),
            (
                "meta mark set 1 counter jump a",
                "counter jump a meta mark set 1",
            ),
        ] {
            assert_ne!(canonical_rule(a), canonical_rule(b), "{a} vs {b}");
        }
    }
}
