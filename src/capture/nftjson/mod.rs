//! Istio's native nft tables in one normalised form, read from either
//! side: the rendered (or recorded) `nft -f` script, and the kernel's
//! `nft -j list` output (JSON, parsed with serde). Both land in
//! [`NftTables`], which [`super::compare::compare_nft`] compares — so
//! `capture apply`'s read-back, `capture status` and verify's
//! `capture.rules` need neither a scratch network namespace nor the text
//! of `nft list`.
//!
//! The normal form is the kernel's: `nft list` drops a `meta l4proto`
//! that a port match implies, stores host addresses without `/32`, clears
//! host bits of networks, resolves user and group names to ids, prints
//! marks as numbers and priorities as numbers, and ignores counters. A
//! rule is its match statements (sorted: their order does not change what
//! the rule matches) followed by its actions in order, joined by spaces,
//! so a difference reads like nft syntax.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

mod json;

pub use json::{Listing, from_json, objects_of};

/// One chain: its base-chain spec (`type nat hook output priority -100
/// policy accept`), None for a regular chain, and its rules in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftChain {
    pub base: Option<String>,
    pub rules: Vec<String>,
}

/// One `inet` table: its chains by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftTable {
    pub chains: BTreeMap<String, NftChain>,
}

/// Tables by name (all `inet`).
pub type NftTables = BTreeMap<String, NftTable>;

/// What a statement's value is, for its normal spelling.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addr,
    Port,
    Uid,
    Gid,
    Mark,
    Flags,
    Plain,
}

/// Statement keys: the words that start them, the normal name, the kind
/// of value. Longest first where one is a prefix of another.
const KEYS: &[(&[&str], &str, Kind)] = &[
    (&["meta", "l4proto"], "meta l4proto", Kind::Plain),
    (&["meta", "skuid"], "meta skuid", Kind::Uid),
    (&["meta", "skgid"], "meta skgid", Kind::Gid),
    (&["meta", "mark"], "meta mark", Kind::Mark),
    (&["meta", "iifname"], "iifname", Kind::Plain),
    (&["meta", "oifname"], "oifname", Kind::Plain),
    (&["meta", "nfproto"], "meta nfproto", Kind::Plain),
    (&["skuid"], "meta skuid", Kind::Uid),
    (&["skgid"], "meta skgid", Kind::Gid),
    (&["mark"], "meta mark", Kind::Mark),
    (&["iifname"], "iifname", Kind::Plain),
    (&["oifname"], "oifname", Kind::Plain),
    (&["ct", "state"], "ct state", Kind::Flags),
    (&["ct", "mark"], "ct mark", Kind::Mark),
    (&["ct", "zone"], "ct zone", Kind::Plain),
    (&["ip", "saddr"], "ip saddr", Kind::Addr),
    (&["ip", "daddr"], "ip daddr", Kind::Addr),
    (&["ip6", "saddr"], "ip6 saddr", Kind::Addr),
    (&["ip6", "daddr"], "ip6 daddr", Kind::Addr),
    (&["tcp", "dport"], "tcp dport", Kind::Port),
    (&["tcp", "sport"], "tcp sport", Kind::Port),
    (&["udp", "dport"], "udp dport", Kind::Port),
    (&["udp", "sport"], "udp sport", Kind::Port),
];

fn kind_of(name: &str) -> Kind {
    KEYS.iter()
        .find(|k| k.1 == name)
        .map_or(Kind::Plain, |k| k.2)
}

/// An address or network as the kernel keeps it: a host without its
/// prefix length, a network with its host bits cleared.
fn addr(v: &str) -> String {
    let (a, len) = match v.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (v, None),
    };
    match a.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => match len.filter(|l| *l < 32) {
            None => ip.to_string(),
            Some(l) => {
                let mask = u32::MAX.checked_shl(32 - l).unwrap_or(0);
                format!("{}/{l}", std::net::Ipv4Addr::from(u32::from(ip) & mask))
            }
        },
        Ok(IpAddr::V6(ip)) => match len.filter(|l| *l < 128) {
            None => ip.to_string(),
            Some(l) => {
                let mask = u128::MAX.checked_shl(128 - l).unwrap_or(0);
                format!("{}/{l}", std::net::Ipv6Addr::from(u128::from(ip) & mask))
            }
        },
        Err(_) => v.to_string(),
    }
}

/// A number as decimal (`0x539` and `1337` are one mark).
fn number(v: &str) -> String {
    let n = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse::<u64>().ok(),
    };
    n.map_or_else(|| v.to_string(), |n| n.to_string())
}

/// A user or group as nft stores it: its id (nft resolves names through
/// NSS when it parses the rule; so does this).
fn id(v: &str, group: bool) -> String {
    if v.parse::<u32>().is_ok() {
        return v.to_string();
    }
    let found = if group {
        nix::unistd::Group::from_name(v)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    } else {
        nix::unistd::User::from_name(v)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    };
    found.map_or_else(|| v.to_string(), |n| n.to_string())
}

fn value(kind: Kind, v: &str) -> String {
    match kind {
        Kind::Addr => addr(v),
        Kind::Port | Kind::Mark => number(v),
        Kind::Uid => id(v, false),
        Kind::Gid => id(v, true),
        Kind::Flags => {
            let set: BTreeSet<&str> = v.split(',').filter(|s| !s.is_empty()).collect();
            set.into_iter().collect::<Vec<_>>().join(",")
        }
        Kind::Plain => v.trim_matches('"').to_string(),
    }
}

/// Elements of an anonymous set, each in its normal spelling, in one order.
fn set(kind: Kind, elems: &[String]) -> String {
    let mut v: Vec<String> = elems.iter().map(|e| value(kind, e)).collect();
    v.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
    v.dedup();
    format!("{{ {} }}", v.join(", "))
}

/// Matches sorted, an implied `meta l4proto` dropped, actions in order.
fn assemble(mut matches: Vec<String>, actions: Vec<String>) -> String {
    let implied: Vec<String> = matches
        .iter()
        .filter_map(|m| {
            let mut w = m.split(' ');
            let (p, f) = (w.next()?, w.next()?);
            (matches!(p, "tcp" | "udp") && matches!(f, "dport" | "sport"))
                .then(|| format!("meta l4proto {p}"))
        })
        .collect();
    matches.retain(|m| !implied.contains(m));
    matches.sort();
    matches.dedup();
    matches.extend(actions);
    matches.join(" ")
}

/// Words of a rule: quotes dropped, braces and commas their own words.
fn words(rule: &str) -> Vec<String> {
    rule.replace('{', " { ")
        .replace('}', " } ")
        .replace(',', " , ")
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_string())
        .collect()
}

/// One rule of the script in the normal form.
pub fn script_rule(rule: &str) -> String {
    let w = words(rule);
    let at = |i: usize| w.get(i).map(String::as_str);
    let key_at = |i: usize| {
        KEYS.iter().find(|(ws, _, _)| {
            ws.iter()
                .enumerate()
                .all(|(k, x)| w.get(i + k).map(String::as_str) == Some(*x))
        })
    };
    let (mut matches, mut actions) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < w.len() {
        let word = w[i].as_str();
        match word {
            "counter" => {
                i += 1;
                // `counter packets N bytes M`
                while matches!(at(i), Some("packets" | "bytes")) {
                    i += 2;
                }
                continue;
            }
            "return" | "accept" | "drop" => {
                actions.push(word.to_string());
                i += 1;
                continue;
            }
            "jump" | "goto" => {
                actions.push(format!("{word} {}", at(i + 1).unwrap_or("")));
                i += 2;
                continue;
            }
            "redirect" => {
                // redirect [to :PORT]
                if at(i + 1) == Some("to") {
                    let p = at(i + 2).unwrap_or("").trim_start_matches(':');
                    actions.push(format!("redirect to :{}", number(p)));
                    i += 3;
                } else {
                    actions.push("redirect".into());
                    i += 1;
                }
                continue;
            }
            "tproxy" => {
                // tproxy ip|ip6 to [ADDR]:PORT
                let (fam, mut j) = match at(i + 1) {
                    Some(f @ ("ip" | "ip6")) => (f, i + 2),
                    _ => ("", i + 1),
                };
                if at(j) == Some("to") {
                    j += 1;
                }
                let to = at(j).unwrap_or("");
                actions.push(tproxy_text(fam, to));
                i = j + 1;
                continue;
            }
            _ => {}
        }
        let Some((ws, name, kind)) = key_at(i) else {
            // Not a statement this form knows: kept as is, so it differs
            // from anything the kernel lists.
            matches.push(format!("?{word}"));
            i += 1;
            continue;
        };
        i += ws.len();
        if at(i) == Some("set") {
            i += 1;
            // The value: another key (`ct mark set mark`) or a literal.
            let v = match key_at(i) {
                Some((vw, vname, _)) => {
                    i += vw.len();
                    vname.to_string()
                }
                None => {
                    i += 1;
                    value(*kind, at(i - 1).unwrap_or(""))
                }
            };
            actions.push(format!("{name} set {v}"));
            continue;
        }
        let op = match at(i) {
            Some("!=") => {
                i += 1;
                "!= "
            }
            Some("==") => {
                i += 1;
                ""
            }
            _ => "",
        };
        let v = if at(i) == Some("{") {
            let mut elems = Vec::new();
            i += 1;
            while let Some(e) = at(i) {
                i += 1;
                match e {
                    "}" => break,
                    "," => {}
                    e => elems.push(e.to_string()),
                }
            }
            set(*kind, &elems)
        } else {
            // `ct state a,b` is one word with its commas split off.
            let mut v = at(i).unwrap_or("").to_string();
            i += 1;
            while *kind == Kind::Flags && at(i) == Some(",") {
                v.push(',');
                v.push_str(at(i + 1).unwrap_or(""));
                i += 2;
            }
            value(*kind, &v)
        };
        matches.push(format!("{name} {op}{v}"));
    }
    assemble(matches, actions)
}

fn tproxy_text(fam: &str, to: &str) -> String {
    let fam = if fam.is_empty() {
        String::new()
    } else {
        format!("{fam} ")
    };
    match to.rsplit_once(':') {
        Some((a, p)) if !a.is_empty() => {
            format!(
                "tproxy {fam}to {}:{}",
                addr(a.trim_matches(['[', ']'])),
                number(p)
            )
        }
        Some((_, p)) => format!("tproxy {fam}to :{}", number(p)),
        None => format!("tproxy {fam}to {}", addr(to)),
    }
}

/// A base-chain spec (`{ type nat hook output priority -100 ; }`) in the
/// normal form; named priorities as the numbers nft stores.
fn base_spec(spec: &str) -> String {
    let w = words(spec);
    let get = |k: &str| {
        w.iter()
            .position(|x| x == k)
            .and_then(|i| w.get(i + 1))
            .map(|s| s.trim_end_matches(';').to_string())
    };
    let prio = get("priority").unwrap_or_default();
    let prio = match prio.as_str() {
        "raw" => "-300".to_string(),
        "mangle" => "-150".to_string(),
        "dstnat" => "-100".to_string(),
        "filter" => "0".to_string(),
        "security" => "50".to_string(),
        "srcnat" => "100".to_string(),
        p => p.to_string(),
    };
    spec_text(
        &get("type").unwrap_or_default(),
        &get("hook").unwrap_or_default(),
        &prio,
        &get("policy").unwrap_or_else(|| "accept".into()),
    )
}

fn spec_text(kind: &str, hook: &str, prio: &str, policy: &str) -> String {
    format!("type {kind} hook {hook} priority {prio} policy {policy}")
}

/// The tables an `nft -f` script (knftables style: `add table`, `flush
/// table`, `delete table`, `add chain`, `add rule`, `insert rule … index
/// N`) leaves, in the normal form.
pub fn from_script(script: &str) -> Result<NftTables, String> {
    let mut out = NftTables::new();
    for (n, line) in script.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
        let w: Vec<&str> = line.splitn(6, ' ').collect();
        let table = |out: &mut NftTables, t: &str| -> Result<(), String> {
            out.get_mut(t)
                .map(|_| ())
                .ok_or_else(|| err("no such table"))
        };
        match w.as_slice() {
            ["add", "table", "inet", t] => {
                out.entry(t.to_string()).or_default();
            }
            ["flush", "table", "inet", t] => {
                table(&mut out, t)?;
                for c in out
                    .get_mut(*t)
                    .into_iter()
                    .flat_map(|t| t.chains.values_mut())
                {
                    c.rules.clear();
                }
            }
            ["delete", "table", "inet", t] => {
                table(&mut out, t)?;
                out.remove(*t);
            }
            ["add", "chain", "inet", t, c, rest @ ..] => {
                table(&mut out, t)?;
                let chain = out
                    .get_mut(*t)
                    .map(|t| t.chains.entry(c.to_string()).or_default());
                if let (Some(chain), Some(spec)) = (chain, rest.first()) {
                    chain.base = Some(base_spec(spec));
                }
            }
            ["add", "rule", "inet", t, c, rule] => {
                table(&mut out, t)?;
                let chain = out
                    .get_mut(*t)
                    .and_then(|t| t.chains.get_mut(*c))
                    .ok_or_else(|| err("no such chain"))?;
                chain.rules.push(script_rule(rule));
            }
            ["insert", "rule", "inet", t, c, rest] => {
                table(&mut out, t)?;
                let chain = out
                    .get_mut(*t)
                    .and_then(|t| t.chains.get_mut(*c))
                    .ok_or_else(|| err("no such chain"))?;
                // `index N`: before the rule now at position N.
                let (at, rule) = match rest.strip_prefix("index ") {
                    Some(r) => {
                        let (n, rule) = r.split_once(' ').ok_or_else(|| err("no rule"))?;
                        (n.parse::<usize>().map_err(|_| err("bad index"))?, rule)
                    }
                    None => (0, *rest),
                };
                chain
                    .rules
                    .insert(at.min(chain.rules.len()), script_rule(rule));
            }
            _ => return Err(err("not a command istio-vm writes")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_rules_take_the_kernels_spelling() {
        let same = [
            (
                "meta l4proto tcp tcp dport 15008 counter return",
                "tcp dport 15008 return",
            ),
            (
                "oifname lo ip saddr 127.0.0.6/32 counter return",
                "ip saddr 127.0.0.6 oifname \"lo\" counter return",
            ),
            (
                "ip daddr 127.0.0.1/8 counter return",
                "ip daddr 127.0.0.0/8 return",
            ),
            (
                "meta l4proto tcp mark 1337 counter ct mark set mark",
                "meta l4proto tcp meta mark 0x00000539 counter ct mark set meta mark",
            ),
            (
                "tcp dport != { 15008, 53 } skuid 1337 counter jump x",
                "tcp dport != { 53, 15008 } meta skuid 1337 jump x",
            ),
            (
                "ct state related,established counter accept",
                "ct state established,related accept",
            ),
            ("ip6 daddr ::1/128 counter return", "ip6 daddr ::1 return"),
        ];
        for (a, b) in same {
            assert_eq!(script_rule(a), script_rule(b), "{a} vs {b}");
        }
        let differ = [
            ("ip daddr 127.0.0.1 return", "ip daddr != 127.0.0.1 return"),
            ("tcp dport 53 return", "udp dport 53 return"),
            ("meta skuid 1 return", "meta skgid 1 return"),
            ("counter redirect to :15001", "counter redirect to :15006"),
            ("jump a", "goto a"),
            ("meta mark set 1 accept", "accept meta mark set 1"),
        ];
        for (a, b) in differ {
            assert_ne!(script_rule(a), script_rule(b), "{a} vs {b}");
        }
    }

    #[test]
    fn unknown_statements_never_match() {
        assert_ne!(script_rule("log prefix x accept"), script_rule("accept"));
        let l: Listing = serde_json::from_str(
            r#"{"nftables": [{"table": {"family": "inet", "name": "t"}},
            {"chain": {"family": "inet", "table": "t", "name": "c"}},
            {"rule": {"family": "inet", "table": "t", "chain": "c", "expr": [{"log": {"prefix": "x"}}, {"accept": null}]}}]}"#,
        )
        .unwrap();
        let t = from_json(&l, &["t"]);
        assert_ne!(t["t"].chains["c"].rules, vec!["accept".to_string()]);
    }

    #[test]
    fn scripts_that_are_not_ours_are_refused() {
        assert!(from_script("add rule inet t c accept\n").is_err());
        assert!(from_script("list ruleset\n").is_err());
    }
}
