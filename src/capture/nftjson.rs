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

use serde::Deserialize;
use serde_json::Value;

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

/// `nft -j list …` output.
#[derive(Debug, Deserialize)]
pub struct Listing {
    pub nftables: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct JTable {
    family: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct JChain {
    family: String,
    table: String,
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    hook: Option<String>,
    prio: Option<i64>,
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JRule {
    family: String,
    table: String,
    chain: String,
    #[serde(default)]
    expr: Vec<Value>,
}

/// The normal name and kind of a JSON expression's left side.
fn json_key(v: &Value) -> Option<(String, Kind)> {
    let (name, k) = if let Some(m) = v.get("meta") {
        let k = m.get("key")?.as_str()?;
        match k {
            "iifname" | "oifname" => (k.to_string(), Kind::Plain),
            _ => (format!("meta {k}"), kind_of(&format!("meta {k}"))),
        }
    } else if let Some(p) = v.get("payload") {
        let n = format!(
            "{} {}",
            p.get("protocol")?.as_str()?,
            p.get("field")?.as_str()?
        );
        let k = kind_of(&n);
        (n, k)
    } else if let Some(c) = v.get("ct") {
        let n = format!("ct {}", c.get("key")?.as_str()?);
        let k = kind_of(&n);
        (n, k)
    } else {
        return None;
    };
    Some((name, k))
}

fn json_scalar(kind: Kind, v: &Value) -> String {
    match v {
        Value::String(s) => value(kind, s),
        Value::Number(n) => value(kind, &n.to_string()),
        Value::Array(a) => value(
            kind,
            &a.iter()
                .map(|x| json_scalar(Kind::Plain, x))
                .collect::<Vec<_>>()
                .join(","),
        ),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let a = p.get("addr").and_then(Value::as_str).unwrap_or("");
                let l = p.get("len").map(Value::to_string).unwrap_or_default();
                addr(&format!("{a}/{l}"))
            } else if let Some(Value::Array(r)) = o.get("range") {
                r.iter()
                    .map(|x| json_scalar(kind, x))
                    .collect::<Vec<_>>()
                    .join("-")
            } else if let Some(Value::Array(s)) = o.get("set") {
                let elems: Vec<String> = s.iter().map(|x| json_scalar(Kind::Plain, x)).collect();
                set(kind, &elems)
            } else if let Some((name, _)) = json_key(v) {
                name
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// One rule's `expr` list in the normal form.
fn json_rule(expr: &[Value]) -> String {
    let (mut matches, mut actions) = (Vec::new(), Vec::new());
    for e in expr {
        let Some((k, v)) = e.as_object().and_then(|o| o.iter().next()) else {
            matches.push(format!("?{e}"));
            continue;
        };
        match k.as_str() {
            "counter" => {}
            "return" | "accept" | "drop" => actions.push(k.clone()),
            "jump" | "goto" => actions.push(format!(
                "{k} {}",
                v.get("target").and_then(Value::as_str).unwrap_or("")
            )),
            "redirect" => actions.push(match v.get("port") {
                Some(p) => format!("redirect to :{}", json_scalar(Kind::Port, p)),
                None => "redirect".into(),
            }),
            "tproxy" => {
                let fam = v.get("family").and_then(Value::as_str).unwrap_or("");
                let a = v
                    .get("addr")
                    .map(|a| json_scalar(Kind::Addr, a))
                    .unwrap_or_default();
                let p = v
                    .get("port")
                    .map(|p| json_scalar(Kind::Port, p))
                    .unwrap_or_default();
                actions.push(tproxy_text(fam, &format!("{a}:{p}")));
            }
            "mangle" => {
                let key = v.get("key").and_then(json_key);
                let val = v.get("value");
                match (key, val) {
                    (Some((name, kind)), Some(val)) => {
                        actions.push(format!("{name} set {}", json_scalar(kind, val)));
                    }
                    _ => actions.push(format!("?{e}")),
                }
            }
            "match" => {
                let key = v.get("left").and_then(json_key);
                let op = match v.get("op").and_then(Value::as_str) {
                    Some("==" | "in") => "",
                    Some("!=") => "!= ",
                    _ => "? ",
                };
                match (key, v.get("right")) {
                    (Some((name, kind)), Some(r)) => {
                        matches.push(format!("{name} {op}{}", json_scalar(kind, r)));
                    }
                    _ => matches.push(format!("?{e}")),
                }
            }
            _ => matches.push(format!("?{e}")),
        }
    }
    assemble(matches, actions)
}

/// The `inet` tables named in `names` from an `nft -j list` output, in the
/// normal form.
pub fn from_json(listing: &Listing, names: &[&str]) -> NftTables {
    let mut out = NftTables::new();
    let ours = |family: &str, t: &str| family == "inet" && names.contains(&t);
    for o in &listing.nftables {
        if let Some(t) = o.get("table") {
            if let Ok(t) = JTable::deserialize(t) {
                if ours(&t.family, &t.name) {
                    out.entry(t.name).or_default();
                }
            }
        } else if let Some(c) = o.get("chain") {
            let Ok(c) = JChain::deserialize(c) else {
                continue;
            };
            if !ours(&c.family, &c.table) {
                continue;
            }
            let base = c.hook.as_ref().map(|h| {
                spec_text(
                    c.kind.as_deref().unwrap_or(""),
                    h,
                    &c.prio.unwrap_or(0).to_string(),
                    c.policy.as_deref().unwrap_or("accept"),
                )
            });
            out.entry(c.table)
                .or_default()
                .chains
                .entry(c.name)
                .or_default()
                .base = base;
        } else if let Some(r) = o.get("rule") {
            let Ok(r) = JRule::deserialize(r) else {
                continue;
            };
            if !ours(&r.family, &r.table) {
                continue;
            }
            out.entry(r.table)
                .or_default()
                .chains
                .entry(r.chain)
                .or_default()
                .rules
                .push(json_rule(&r.expr));
        }
    }
    out
}

/// The listing objects (table, chains, rules) of the `inet` tables named
/// in `names`: what `nft -j -f` needs to put them back as they were.
pub fn objects_of(listing: &Listing, names: &[&str]) -> Vec<Value> {
    listing
        .nftables
        .iter()
        .filter(|o| {
            let (fam, table) = if let Some(t) = o.get("table") {
                (t.get("family"), t.get("name"))
            } else if let Some(x) = o.get("chain").or_else(|| o.get("rule")) {
                (x.get("family"), x.get("table"))
            } else {
                return false;
            };
            fam.and_then(Value::as_str) == Some("inet")
                && table
                    .and_then(Value::as_str)
                    .is_some_and(|t| names.contains(&t))
        })
        .cloned()
        .collect()
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
    fn json_rules_read_like_the_script() {
        let listing: Listing = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "istio-proxy-nat", "handle": 1}},
            {"table": {"family": "inet", "name": "firewalld", "handle": 2}},
            {"chain": {"family": "inet", "table": "istio-proxy-nat", "name": "output", "handle": 1, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "istio-proxy-nat", "name": "istio-output", "handle": 2}},
            {"rule": {"family": "inet", "table": "istio-proxy-nat", "chain": "output", "handle": 3, "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"jump": {"target": "istio-output"}}]}},
            {"rule": {"family": "inet", "table": "istio-proxy-nat", "chain": "istio-output", "handle": 4, "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [53, 15008]}}},
                {"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": 1337}},
                {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "istio-in-redirect"}}]}},
            {"rule": {"family": "inet", "table": "istio-proxy-nat", "chain": "istio-output", "handle": 5, "expr": [
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "2001:db8::", "len": 32}}}},
                {"tproxy": {"family": "ip6", "port": 15006}},
                {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1337}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "x", "handle": 5, "expr": []}}
            ]}"#,
        )
        .unwrap();
        let got = from_json(&listing, &["istio-proxy-nat"]);
        let want = from_script(
            "add table inet istio-proxy-nat\nflush table inet istio-proxy-nat\n\
             add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }\n\
             add chain inet istio-proxy-nat istio-output\n\
             add rule inet istio-proxy-nat output counter jump istio-output\n\
             add rule inet istio-proxy-nat istio-output ct state related,established ip6 daddr 2001:db8::1/32 tproxy ip6 to :15006 meta mark set 0x539 counter accept\n\
             insert rule inet istio-proxy-nat istio-output index 0 oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != { 53, 15008 } skuid 1337 counter jump istio-in-redirect\n",
        )
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(got.len(), 1, "another tool's table is not Istio's");
        let objs = objects_of(&listing, &["istio-proxy-nat"]);
        assert_eq!(objs.len(), 6);
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
