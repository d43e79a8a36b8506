//! TPROXY policy routing, as Istio's `tools/common/tproxy/run_linux.go`
//! sets it up: marked packets are routed to the local stack (`ip rule
//! fwmark MARK lookup TABLE`, `local default dev lo` in TABLE), and for
//! IPv6 the inbound-passthrough source `::6/128` on `lo`. State is read
//! with `ip -j` (JSON), never by scraping text.

use anyhow::{Context, Result};
use serde::Deserialize;

use super::kernel::{finish, run, start};
use super::live::Outcome;
use super::model::Family;
use crate::report::{Step, StepStatus};

/// The routing TPROXY interception needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TproxyRouting {
    pub mark: String,
    pub table: String,
    pub ipv6: bool,
}

fn ip_family(f: Family) -> &'static str {
    match f {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

fn fam(f: Family) -> &'static str {
    super::compare::family_label(f)
}

fn step(id: &str, status: StepStatus, detail: impl Into<String>) -> Step {
    Step {
        id: id.to_string(),
        status,
        detail: detail.into(),
        diff: None,
    }
}

/// Marks as `ip` prints them (hex); `1337` and `0x539` are one mark.
fn same_mark(a: &str, b: &str) -> bool {
    let n = |v: &str| match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse::<u32>().ok(),
    };
    n(a).is_some_and(|x| Some(x) == n(b))
}

/// One `ip -j rule show` entry.
#[derive(Debug, Deserialize)]
struct IpRule {
    fwmark: Option<String>,
    table: Option<String>,
}

/// One `ip -j route show` entry.
#[derive(Debug, Deserialize)]
struct IpRoute {
    #[serde(rename = "type")]
    kind: Option<String>,
    dst: Option<String>,
    dev: Option<String>,
}

/// One `ip -j addr show` interface.
#[derive(Debug, Deserialize)]
struct IpLink {
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Debug, Deserialize)]
struct IpAddrInfo {
    local: Option<String>,
    prefixlen: Option<u8>,
}

/// `ip -j` output as a list (`ip` prints nothing, not `[]`, for an empty
/// table on some versions; unreadable output counts as empty).
fn parse<T: for<'de> Deserialize<'de>>(out: Option<String>) -> Vec<T> {
    out.filter(|o| !o.trim().is_empty())
        .and_then(|o| serde_json::from_str(&o).ok())
        .unwrap_or_default()
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Option<Vec<T>> {
    Some(parse(run("ip", args, None).ok()))
}

fn is_local_default(r: &IpRoute) -> bool {
    r.kind.as_deref() == Some("local")
        && r.dst.as_deref() == Some("default")
        && r.dev.as_deref() == Some("lo")
}

fn passthrough_in(links: &[IpLink]) -> bool {
    links
        .iter()
        .flat_map(|l| &l.addr_info)
        .any(|a| a.local.as_deref() == Some("::6") && a.prefixlen == Some(128))
}

/// (fwmark, table) of every policy rule with a mark.
fn marked_rules(f: Family) -> Vec<(String, String)> {
    ip_json::<IpRule>(&["-j", "-f", ip_family(f), "rule", "show"])
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Some((r.fwmark?, r.table?)))
        .collect()
}

fn has_rule(f: Family, mark: &str, table: &str) -> bool {
    marked_rules(f)
        .iter()
        .any(|(m, t)| same_mark(m, mark) && t == table)
}

fn has_local_route(f: Family, table: &str) -> bool {
    ip_json::<IpRoute>(&["-j", "-f", ip_family(f), "route", "show", "table", table])
        .unwrap_or_default()
        .iter()
        .any(is_local_default)
}

fn has_v6_passthrough() -> bool {
    passthrough_in(
        &ip_json::<IpLink>(&["-j", "-6", "addr", "show", "dev", "lo"]).unwrap_or_default(),
    )
}

/// Whether the TPROXY routing `t` is fully in place.
pub fn tproxy_routing_present(t: &TproxyRouting) -> bool {
    let fams: &[Family] = if t.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    fams.iter()
        .all(|f| has_rule(*f, &t.mark, &t.table) && has_local_route(*f, &t.table))
        && (!t.ipv6 || has_v6_passthrough())
}

/// Add whatever part of the TPROXY routing is missing (idempotent).
pub fn apply_tproxy_routing(t: &TproxyRouting) -> Result<Outcome> {
    let mut out = Outcome::default();
    let fams: &[Family] = if t.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for f in fams {
        let fam_s = ip_family(*f);
        let mut did = Vec::new();
        if !has_rule(*f, &t.mark, &t.table) {
            run(
                "ip",
                &[
                    "-f", fam_s, "rule", "add", "fwmark", &t.mark, "lookup", &t.table,
                ],
                None,
            )
            .context("adding the TPROXY policy rule")?;
            did.push(format!("rule fwmark {} lookup {}", t.mark, t.table));
        }
        if !has_local_route(*f, &t.table) {
            run(
                "ip",
                &[
                    "-f", fam_s, "route", "add", "local", "default", "dev", "lo", "table", &t.table,
                ],
                None,
            )
            .context("adding the TPROXY local route")?;
            did.push(format!("local default route in table {}", t.table));
        }
        if *f == Family::V6 && !has_v6_passthrough() {
            run("ip", &["-6", "addr", "add", "::6/128", "dev", "lo"], None)
                .context("adding ::6/128 to lo")?;
            did.push("::6/128 on lo".into());
        }
        let id = format!("capture:tproxy-routing:{}", fam(*f));
        if did.is_empty() {
            out.steps
                .push(step(&id, StepStatus::Ok, "policy routing present"));
        } else {
            out.changed = true;
            out.steps.push(step(
                &id,
                StepStatus::Changed,
                format!("added {}", did.join(", ")),
            ));
        }
    }
    Ok(out)
}

/// Remove TPROXY policy routing by state: every `ip rule` with a fwmark
/// that looks up one of `tables`, the routes in those tables, `::6/128` on
/// lo.
pub fn remove_tproxy_routing(tables: &[String]) -> Result<Outcome> {
    let mut out = Outcome::default();
    // Everything is read at once, the `ip` runs side by side: removal runs
    // on every `capture remove` and uninstall, TPROXY or not.
    let fams = [Family::V4, Family::V6];
    let rule_q: Vec<_> = fams
        .iter()
        .map(|f| start("ip", &["-j", "-f", ip_family(*f), "rule", "show"]))
        .collect();
    let route_q: Vec<Vec<_>> = fams
        .iter()
        .map(|f| {
            tables
                .iter()
                .map(|t| {
                    start(
                        "ip",
                        &["-j", "-f", ip_family(*f), "route", "show", "table", t],
                    )
                })
                .collect()
        })
        .collect();
    let addr_q = start("ip", &["-j", "-6", "addr", "show", "dev", "lo"]);
    let rules: Vec<Vec<IpRule>> = rule_q.into_iter().map(|c| parse(finish(c))).collect();
    let routes: Vec<Vec<Vec<IpRoute>>> = route_q
        .into_iter()
        .map(|per| per.into_iter().map(|c| parse(finish(c))).collect())
        .collect();
    let v6_passthrough = passthrough_in(&parse::<IpLink>(finish(addr_q)));
    for (i, f) in fams.iter().enumerate() {
        let fam_s = ip_family(*f);
        let mut removed = 0;
        for r in &rules[i] {
            let (Some(mark), Some(table)) = (&r.fwmark, &r.table) else {
                continue;
            };
            if tables.contains(table) {
                run(
                    "ip",
                    &["-f", fam_s, "rule", "del", "fwmark", mark, "lookup", table],
                    None,
                )
                .context("removing the TPROXY policy rule")?;
                removed += 1;
            }
        }
        for (t, r) in tables.iter().zip(&routes[i]) {
            if r.iter().any(is_local_default) {
                run("ip", &["-f", fam_s, "route", "flush", "table", t], None)
                    .context("removing the TPROXY route table")?;
                removed += 1;
            }
        }
        if *f == Family::V6 && v6_passthrough {
            run("ip", &["-6", "addr", "del", "::6/128", "dev", "lo"], None)
                .context("removing ::6/128 from lo")?;
            removed += 1;
        }
        if removed > 0 {
            out.changed = true;
            out.steps.push(step(
                &format!("capture:tproxy-routing:{}", fam(*f)),
                StepStatus::Changed,
                format!("removed {removed} routing entries"),
            ));
        }
    }
    Ok(out)
}
