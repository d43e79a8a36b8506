//! The kernel's side of [`super`]: `nft -j list` output (serde) read into
//! the normal form, and the listing objects that put tables back.

use serde::Deserialize;
use serde_json::Value;

use super::{Kind, NftTables, addr, assemble, kind_of, set, spec_text, tproxy_text, value};

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
    use super::super::from_script;
    use super::*;

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
}
