//! The one comparison between the Istio rules istio-vm means to have (the
//! rendered set, or the record under `/var/lib/istio-vm/capture/`) and the
//! Istio rules in the kernel. `capture apply`'s read-back, `capture status`
//! and verify's `capture.rules` check all call [`compare`], so "the rules
//! are in place" means one thing everywhere.
//!
//! iptables rules are compared in-process: both sides are put into one
//! canonical spelling (the one `iptables-save` prints: `-m tcp` implied by
//! `-p tcp --dport`, `/32` on host addresses, masked networks, hex marks,
//! the default masks of MARK/CONNMARK/TPROXY), so no scratch network
//! namespace is needed on the hot path. Native nft tables are compared the
//! same way: the script and the kernel's `nft -j list` are both read into
//! the normal form of [`super::nftjson`] (the kernel's spelling: implied
//! protocols dropped, numeric priorities, ids for names, sorted sets).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::iptables::{Tables, is_istio_chain, jump_target};
use super::model::Family;
use super::nftjson::{NftChain, NftTable, NftTables};

/// What differs, in words a person can act on. Empty: an exact match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Difference {
    /// In the expected set, not in the kernel ("nat ISTIO_OUTPUT: -j RETURN").
    pub missing: Vec<String>,
    /// In the kernel, not in the expected set (or in another backend).
    pub extra: Vec<String>,
    /// Same rules, another order.
    pub reordered: Vec<String>,
}

impl Difference {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.reordered.is_empty()
    }

    pub fn extend(&mut self, other: Difference) {
        self.missing.extend(other.missing);
        self.extra.extend(other.extra);
        self.reordered.extend(other.reordered);
    }

    /// One line for a report: counts and the first few entries.
    pub fn summary(&self) -> String {
        fn part(label: &str, v: &[String]) -> Option<String> {
            if v.is_empty() {
                return None;
            }
            let shown: Vec<&str> = v.iter().take(4).map(String::as_str).collect();
            let more = if v.len() > shown.len() {
                format!(" (and {} more)", v.len() - shown.len())
            } else {
                String::new()
            };
            Some(format!("{label} {}: {}{more}", v.len(), shown.join("; ")))
        }
        [
            part("missing", &self.missing),
            part("extra", &self.extra),
            part("out of order", &self.reordered),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" | ")
    }
}

/// Hex spelling of a mark (`1337` and `0x539` are the same mark).
fn hex(v: &str) -> String {
    let n = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse::<u64>().ok(),
    };
    n.map(|n| format!("{n:#x}"))
        .unwrap_or_else(|| v.to_string())
}

/// `value[/mask]` with a full mask left out, both in hex.
fn hex_masked(v: &str) -> String {
    match v.split_once('/') {
        Some((val, mask)) if hex(mask) == "0xffffffff" => hex(val),
        Some((val, mask)) => format!("{}/{}", hex(val), hex(mask)),
        None => hex(v),
    }
}

/// An address or network as the kernel stores it: host bits cleared and
/// an explicit prefix length (`10.1.2.3/8` is `10.0.0.0/8`).
fn network(v: &str) -> String {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()),
        None => (v, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return v.to_string();
    };
    match ip {
        IpAddr::V4(a) => {
            let len = len.unwrap_or(32).min(32);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let len = len.unwrap_or(128).min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// One option group: `[!] -x value…`.
fn groups(words: &[&str]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut neg = false;
    for w in words {
        if *w == "!" {
            neg = true;
            continue;
        }
        if w.starts_with('-') || out.is_empty() {
            let mut g = Vec::new();
            if neg {
                g.push("!".to_string());
                neg = false;
            }
            g.push(w.to_string());
            out.push(g);
        } else if let Some(g) = out.last_mut() {
            if neg {
                g.push("!".to_string());
                neg = false;
            }
            g.push(w.to_string());
        }
    }
    out
}

/// The canonical form of one iptables rule spec (the part after
/// `-A CHAIN`): match groups sorted, target and its options last, every
/// value in the spelling `iptables-save` prints. Two specs the kernel
/// stores alike have the same canonical form.
pub fn canonical_rule(spec: &str) -> String {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let jpos = words
        .iter()
        .position(|w| *w == "-j" || *w == "--jump")
        .unwrap_or(words.len());
    let mut matches: Vec<String> = Vec::new();
    for mut g in groups(&words[..jpos]) {
        let neg = g.first().is_some_and(|w| w == "!");
        let opt = if neg { g.get(1) } else { g.first() }.cloned();
        let val_at = usize::from(neg) + 1;
        match opt.as_deref() {
            // `-p tcp --dport` loads the tcp match implicitly.
            Some("-m") if matches!(g.get(val_at).map(String::as_str), Some("tcp" | "udp")) => {
                continue;
            }
            Some("-s" | "-d" | "--source" | "--destination") => {
                if let Some(v) = g.get_mut(val_at) {
                    *v = network(v);
                }
            }
            Some("--mark") => {
                if let Some(v) = g.get_mut(val_at) {
                    *v = hex_masked(v);
                }
            }
            _ => {}
        }
        matches.push(g.join(" "));
    }
    matches.sort();
    // Target: its name, then its options as a sorted set with defaults
    // the kernel fills in removed.
    let mut target = Vec::new();
    if let Some(name) = words.get(jpos + 1) {
        target.push(format!("-j {name}"));
        let mut opts: Vec<String> = Vec::new();
        for g in groups(&words[(jpos + 2).min(words.len())..]) {
            let opt = g[0].as_str();
            let val = g.get(1).map(String::as_str).unwrap_or("");
            let s = match (*name, opt) {
                ("MARK", "--set-mark" | "--set-xmark") => format!("--set-mark {}", hex_masked(val)),
                ("TPROXY", "--tproxy-mark") => format!("--tproxy-mark {}", hex_masked(val)),
                ("TPROXY", "--on-ip") if val == "0.0.0.0" || val == "::" => continue,
                ("CONNMARK", "--nfmask" | "--ctmask") if hex(val) == "0xffffffff" => continue,
                ("REDIRECT", "--to-port") => format!("--to-ports {val}"),
                _ => g.join(" "),
            };
            opts.push(s);
        }
        opts.sort();
        target.extend(opts);
    }
    matches.extend(target);
    matches.join(" ")
}

/// Rules of one chain: (canonical form, as shown).
type Chain = Vec<(String, String)>;

/// The Istio part of `t` in canonical form: every `ISTIO_*` chain, and of
/// the built-in chains the rules that jump to `ISTIO_*` or whose canonical
/// form is one of `builtin` (Istio's own rules there, e.g. an
/// exclude-interface RETURN). Empty built-in chains are left out.
fn istio_chains(
    t: &Tables,
    builtin: &BTreeSet<(String, String, String)>,
) -> BTreeMap<(String, String), Chain> {
    let mut out = BTreeMap::new();
    for (tname, ts) in &t.tables {
        for (cname, rules) in &ts.chains {
            let istio = is_istio_chain(cname);
            let mine: Chain = rules
                .iter()
                .map(|r| (canonical_rule(r), r.clone()))
                .filter(|(c, r)| {
                    istio
                        || jump_target(r).is_some_and(is_istio_chain)
                        || builtin.contains(&(tname.clone(), cname.clone(), c.clone()))
                })
                .collect();
            if istio || !mine.is_empty() {
                out.insert((tname.clone(), cname.clone()), mine);
            }
        }
    }
    out
}

/// Canonical (table, built-in chain, rule) of every built-in-chain rule.
fn builtin_canon(t: &Tables) -> BTreeSet<(String, String, String)> {
    t.builtin_rules()
        .into_iter()
        .map(|(t, c, r)| (t, c, canonical_rule(&r)))
        .collect()
}

/// Compare the Istio rules of one iptables family: `expected` parsed from
/// restore text (rendered or recorded), `live` from `iptables-save`.
/// `label` prefixes every entry (e.g. "iptables-nft ipv4").
pub fn compare_tables(expected: &Tables, live: &Tables, label: &str) -> Difference {
    let builtin = builtin_canon(expected);
    let want = istio_chains(expected, &builtin);
    let have = istio_chains(live, &builtin);
    let mut d = Difference::default();
    let keys: BTreeSet<&(String, String)> = want.keys().chain(have.keys()).collect();
    for key @ (t, c) in keys {
        let at = format!("{label} {t} {c}");
        match (want.get(key), have.get(key)) {
            (Some(_), None) if is_istio_chain(c) => d.missing.push(format!("{at}: chain")),
            (None, Some(_)) if is_istio_chain(c) => d.extra.push(format!("{at}: chain")),
            _ => {}
        }
        let w = want.get(key).map(Vec::as_slice).unwrap_or_default();
        let h = have.get(key).map(Vec::as_slice).unwrap_or_default();
        if w.iter().map(|x| &x.0).eq(h.iter().map(|x| &x.0)) {
            continue;
        }
        let mut left: Vec<&(String, String)> = h.iter().collect();
        let mut missing = false;
        for r in w {
            match left.iter().position(|x| x.0 == r.0) {
                Some(i) => {
                    left.remove(i);
                }
                None => {
                    missing = true;
                    d.missing.push(format!("{at}: {}", r.1));
                }
            }
        }
        for r in &left {
            d.extra.push(format!("{at}: {}", r.1));
        }
        if !missing && left.is_empty() {
            d.reordered.push(at);
        }
    }
    d
}

/// Any Istio rule or chain in a backend that should hold none (a stale
/// or another tool's set), as "extra" entries.
pub fn unexpected_tables(live: &Tables, label: &str) -> Difference {
    compare_tables(&Tables::default(), live, label)
}

/// Rules in order: missing, extra, or the same rules reordered.
fn diff_rules(at: &str, want: &[String], have: &[String], d: &mut Difference) {
    if want == have {
        return;
    }
    let mut left: Vec<&String> = have.iter().collect();
    let mut missing = false;
    for r in want {
        match left.iter().position(|x| *x == r) {
            Some(i) => {
                left.remove(i);
            }
            None => {
                missing = true;
                d.missing.push(format!("{at}: {r}"));
            }
        }
    }
    for r in &left {
        d.extra.push(format!("{at}: {r}"));
    }
    if !missing && left.is_empty() {
        d.reordered.push(at.to_string());
    }
}

/// Compare Istio's nft tables, both sides in the normal form of
/// [`super::nftjson`]: the expected set from the rendered or recorded
/// script, the live one from `nft -j list`.
pub fn compare_nft(expected: &NftTables, live: &NftTables, label: &str) -> Difference {
    let mut d = Difference::default();
    let names: BTreeSet<&String> = expected.keys().chain(live.keys()).collect();
    let empty = NftTable::default();
    for n in names {
        let at = format!("{label} table inet {n}");
        let (w, h) = match (expected.get(n), live.get(n)) {
            (Some(_), None) => {
                d.missing.push(format!("{at}: table"));
                continue;
            }
            (None, Some(_)) => {
                d.extra.push(format!("{at}: table"));
                continue;
            }
            (w, h) => (w.unwrap_or(&empty), h.unwrap_or(&empty)),
        };
        let chains: BTreeSet<&String> = w.chains.keys().chain(h.chains.keys()).collect();
        let none = NftChain::default();
        for c in chains {
            let at = format!("{at} chain {c}");
            let (wc, hc) = (w.chains.get(c), h.chains.get(c));
            match (wc, hc) {
                (Some(_), None) => d.missing.push(format!("{at}: chain")),
                (None, Some(_)) => d.extra.push(format!("{at}: chain")),
                _ => {}
            }
            let (wc, hc) = (wc.unwrap_or(&none), hc.unwrap_or(&none));
            if wc.base != hc.base {
                if let Some(b) = &wc.base {
                    d.missing.push(format!("{at}: {b}"));
                }
                if let Some(b) = &hc.base {
                    d.extra.push(format!("{at}: {b}"));
                }
            }
            diff_rules(&at, &wc.rules, &hc.rules, &mut d);
        }
    }
    d
}

/// Label of one iptables family for messages.
pub fn family_label(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_rule_takes_the_kernels_spelling() {
        let same = [
            (
                "-p tcp --dport 22 -j RETURN",
                "-p tcp -m tcp --dport 22 -j RETURN",
            ),
            ("-d 127.0.0.1 -j RETURN", "-d 127.0.0.1/32 -j RETURN"),
            ("-d 10.1.2.3/8 -j RETURN", "-d 10.0.0.0/8 -j RETURN"),
            (
                "-o lo -s 127.0.0.6/32 -j RETURN",
                "-s 127.0.0.6/32 -o lo -j RETURN",
            ),
            ("-d ::1 -j RETURN", "-d ::1/128 -j RETURN"),
            (
                "-p tcp -m mark --mark 1337 -j RETURN",
                "-p tcp -m mark --mark 0x539 -j RETURN",
            ),
            (
                "-p tcp -j MARK --set-mark 1338",
                "-p tcp -j MARK --set-xmark 0x53a/0xffffffff",
            ),
            (
                "-p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006",
                "-p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
            ),
            (
                "-p tcp -j CONNMARK --save-mark",
                "-p tcp -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff",
            ),
            (
                "-p udp --dport 53 -j REDIRECT --to-port 15053",
                "-p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
            ),
        ];
        for (a, b) in same {
            assert_eq!(canonical_rule(a), canonical_rule(b), "{a} vs {b}");
        }
        let differ = [
            ("! -d 1.1.1.1/32 -j RETURN", "-d 1.1.1.1/32 -j RETURN"),
            ("-p tcp --dport 22 -j RETURN", "-p tcp --dport 23 -j RETURN"),
            (
                "-m mark --mark 1 -j RETURN",
                "-m connmark --mark 1 -j RETURN",
            ),
            (
                "-j REDIRECT --to-ports 15001",
                "-j REDIRECT --to-ports 15006",
            ),
            (
                "-m owner --uid-owner 1 -j RETURN",
                "-m owner ! --uid-owner 1 -j RETURN",
            ),
        ];
        for (a, b) in differ {
            assert_ne!(canonical_rule(a), canonical_rule(b), "{a} vs {b}");
        }
    }

    #[test]
    fn compare_names_missing_extra_and_foreign_rules() {
        let want = Tables::parse(
            "*nat\n-N ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -o eth9 -j RETURN\n\
             -A ISTIO_OUTPUT -d 127.0.0.1 -j RETURN\n-A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n",
        )
        .unwrap();
        let same = Tables::parse(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -m comment --comment x -j ACCEPT\n\
             -A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -o eth9 -j RETURN\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n\
             -A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n",
        )
        .unwrap();
        assert!(compare_tables(&want, &same, "x").is_empty());

        let flushed = Tables::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").unwrap();
        let d = compare_tables(&want, &flushed, "iptables-nft ipv4");
        assert_eq!(d.missing.len(), 5, "{d:?}");
        assert!(
            d.summary().contains("nat ISTIO_OUTPUT: chain"),
            "{}",
            d.summary()
        );

        let other = Tables::parse(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n\
             -A OUTPUT -o eth9 -j RETURN\n-A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n\
             -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n-A ISTIO_OUTPUT -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        let d = compare_tables(&want, &other, "x");
        assert_eq!(d.extra, vec!["x nat ISTIO_OUTPUT: -j ACCEPT"]);
        assert!(d.missing.is_empty());

        let swapped = Tables::parse(&same_text_swapped()).unwrap();
        let d = compare_tables(&want, &swapped, "x");
        assert_eq!(d.reordered, vec!["x nat ISTIO_OUTPUT"]);

        let d = unexpected_tables(&same, "iptables-legacy ipv4");
        assert_eq!(d.extra.len(), 4, "{d:?}");
    }

    fn same_text_swapped() -> String {
        "*nat\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -o eth9 -j RETURN\n\
         -A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\nCOMMIT\n"
            .to_string()
    }

    #[test]
    fn nft_tables_compare_by_chain_and_rule() {
        let script = "add table inet istio-proxy-nat\n\
             add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }\n\
             add chain inet istio-proxy-nat istio-output\n\
             add rule inet istio-proxy-nat output counter jump istio-output\n\
             add rule inet istio-proxy-nat istio-output skuid 1337 counter return\n\
             add rule inet istio-proxy-nat istio-output counter redirect to :15001\n";
        let a = crate::capture::nftjson::from_script(script).unwrap();
        assert!(compare_nft(&a, &a, "nftables").is_empty());
        let d = compare_nft(&a, &NftTables::new(), "nftables");
        assert_eq!(
            d.missing,
            vec!["nftables table inet istio-proxy-nat: table"]
        );
        let moved = crate::capture::nftjson::from_script(
            &script.replace("output counter jump", "istio-output counter jump"),
        )
        .unwrap();
        let d = compare_nft(&a, &moved, "nftables");
        assert_eq!(d.missing.len(), 1, "{d:?}");
        assert_eq!(d.extra.len(), 1, "{d:?}");
        let prio = crate::capture::nftjson::from_script(&script.replace("-100", "-150")).unwrap();
        assert!(!compare_nft(&a, &prio, "nftables").is_empty());
        let swapped = crate::capture::nftjson::from_script(&script.replace(
            "istio-output skuid 1337 counter return\nadd rule inet istio-proxy-nat istio-output counter redirect to :15001",
            "istio-output counter redirect to :15001\nadd rule inet istio-proxy-nat istio-output skuid 1337 counter return",
        ))
        .unwrap();
        let d = compare_nft(&a, &swapped, "x");
        assert_eq!(
            d.reordered,
            vec!["x table inet istio-proxy-nat chain istio-output"]
        );
    }
}
