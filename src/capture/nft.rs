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
/// redundant by a port match), actions in order at the end.
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
    // `meta l4proto tcp` is implied by a `tcp dport/sport` match.
    let implied: Vec<String> = matches
        .iter()
        .filter_map(|m| {
            let p = m.split(' ').next()?;
            (matches!(p, "tcp" | "udp") && (m.contains(" dport ") || m.contains(" sport ")))
                .then(|| format!("meta l4proto {p}"))
        })
        .collect();
    matches.retain(|m| !implied.contains(m));
    matches.sort();
    matches.extend(actions);
    matches
}
