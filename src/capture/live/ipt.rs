//! The iptables half of an apply: what istio-vm may remove from a family
//! (its recorded chains and rules), one `iptables-restore --noflush`
//! transaction per family, the read-back compared in-process
//! ([`compare::compare_tables`]), and the rollback to the saved state.

use std::collections::BTreeSet;

use anyhow::{Result, anyhow, bail};

use super::super::compare;
use super::super::iptables::{self as ipt, Tables};
use super::super::kernel::{finish, normalize_save, restore, run, save, start};
use super::super::model::Family;
use super::super::{Rendered, failpoint};
use super::{
    ApplyOptions, Outcome, Owned, Snapshot, Variant, desired_for, desired_tables, fam,
    readback_problem, step,
};
use crate::error::Failure;
use crate::report::StepStatus;

/// The part of `live` istio-vm may remove: the recorded `ISTIO_*` chains,
/// the built-in rules jumping to them, and the recorded built-in rules.
pub(super) fn owned_part(live: &Tables, owned: &Owned, f: Family) -> Tables {
    let canon: BTreeSet<(String, String, String)> = owned.builtin[f as usize]
        .builtin_rules()
        .into_iter()
        .map(|(t, c, r)| (t, c, compare::canonical_rule(&r)))
        .collect();
    let mut out = Tables::default();
    for (tn, ts) in &live.tables {
        let mut part = ipt::TableState::default();
        for (cn, rules) in &ts.chains {
            if ipt::is_istio_chain(cn) {
                if owned.chains.contains(&(tn.clone(), cn.clone())) {
                    part.chains.insert(cn.clone(), rules.clone());
                }
                continue;
            }
            let mine: Vec<String> = rules
                .iter()
                .filter(|r| {
                    ipt::jump_target(r)
                        .is_some_and(|j| owned.chains.contains(&(tn.clone(), j.to_string())))
                        || canon.contains(&(tn.clone(), cn.clone(), compare::canonical_rule(r)))
                })
                .cloned()
                .collect();
            if !mine.is_empty() {
                part.chains.insert(cn.clone(), mine);
            }
        }
        if !part.chains.is_empty() {
            out.tables.insert(tn.clone(), part);
        }
    }
    out
}

/// `ISTIO_*` chains in `live` that istio-vm did not make: not in the
/// record, and not exactly the chain `desired` (this apply) has.
pub(super) fn foreign_chains(
    live: &Tables,
    desired: &Tables,
    owned: &Owned,
    label: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for (tn, ts) in &live.tables {
        for (cn, rules) in &ts.chains {
            if !ipt::is_istio_chain(cn) || owned.chains.contains(&(tn.clone(), cn.clone())) {
                continue;
            }
            let canon = |v: &[String]| -> Vec<String> {
                v.iter().map(|r| compare::canonical_rule(r)).collect()
            };
            let same = desired
                .tables
                .get(tn)
                .and_then(|d| d.chains.get(cn))
                .is_some_and(|d| canon(d) == canon(rules));
            if !same {
                out.push(format!("{cn} ({label}, table {tn}, {} rules)", rules.len()));
            }
        }
    }
    out
}

struct FamilyPlan {
    f: Family,
    before: String,
    desired_text: Option<String>,
    desired: Tables,
}

pub(super) fn apply_iptables(
    v: Variant,
    rendered: &Rendered,
    snap: &Snapshot,
    owned: &Owned,
    opts: ApplyOptions,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    let id = |f: Family| format!("capture:{}:{}", v.name(), fam(f));
    let mut applied: Vec<FamilyPlan> = Vec::new();
    for f in [Family::V4, Family::V6] {
        let desired_text = desired_for(rendered, f);
        let Some(before) = snap.probe(v).and_then(|p| p.save(f)).map(str::to_string) else {
            if desired_text.is_some() {
                match f {
                    Family::V6 => bail!(
                        "{} is not usable here but IPv6 capture is on (DUAL_STACK or a global \
                         IPv6 address): install ip6tables or turn DUAL_STACK off",
                        v.bin(f, "save")
                    ),
                    Family::V4 => bail!(
                        "{} does not work here: is the iptables package installed and the \
                         kernel's netfilter available?",
                        v.bin(f, "save")
                    ),
                }
            }
            continue;
        };
        let desired = desired_tables(rendered, f)?;
        let live =
            Tables::parse(&before).map_err(|e| anyhow!("reading {}: {e}", v.bin(f, "save")))?;
        let label = format!("{} {}", v.name(), fam(f));
        if compare::compare_tables(&desired, &live, &label).is_empty() {
            out.steps
                .push(step(&id(f), StepStatus::Ok, "rules already as rendered"));
            continue;
        }
        // What goes: our recorded chains and rules, the chains this apply
        // is about to create (they match the rendering, see
        // `foreign_chains`), and with --replace-foreign every Istio-named
        // chain.
        let mut take = Owned::from_records(std::slice::from_ref(rendered));
        take.chains.extend(owned.chains.iter().cloned());
        for (i, b) in owned.builtin.iter().enumerate() {
            for (tn, ts) in &b.tables {
                for (cn, rules) in &ts.chains {
                    take.builtin[i]
                        .tables
                        .entry(tn.clone())
                        .or_default()
                        .chains
                        .entry(cn.clone())
                        .or_default()
                        .extend(rules.iter().cloned());
                }
            }
        }
        let current = if opts.replace_foreign {
            live.istio_part(&live.builtin_rules_matching(&take.builtin[f as usize]))
        } else {
            owned_part(&live, &take, f)
        };
        let mut txn = ipt::transaction(&current, desired_text.as_deref());
        if failpoint(&format!("capture.reject_{}", fam(f))) {
            // A rule the kernel refuses (owner matches are only valid on
            // locally generated packets), in the last table so the tables
            // before it have already committed.
            if let Some(i) = txn.rfind("COMMIT\n") {
                txn.insert_str(i, "-A PREROUTING -m owner --uid-owner 0 -j RETURN\n");
            }
        }
        let plan = FamilyPlan {
            f,
            before,
            desired_text,
            desired,
        };
        if let Err(e) = restore(v, f, &txn, true) {
            let msg = format!(
                "applying {} rules with {}: {e:#}",
                fam(f),
                v.bin(f, "restore")
            );
            // iptables-restore commits table by table: earlier tables of
            // this family may already be in.
            let partial =
                save(v, f).is_none_or(|now| normalize_save(&now) != normalize_save(&plan.before));
            if applied.is_empty() && !partial {
                return Err(anyhow!("{msg}; nothing was changed"));
            }
            applied.push(plan);
            rollback_iptables(v, &applied);
            return Err(Failure::RolledBack {
                message: msg,
                step: None,
            }
            .into());
        }
        out.changed = true;
        out.steps.push(step(
            &id(f),
            StepStatus::Changed,
            format!(
                "{} Istio rules applied in one transaction ({} removed first)",
                plan.desired.rule_count(),
                current.rule_count()
            ),
        ));
        applied.push(plan);
    }
    // Read back (the families side by side), compared in-process with the
    // rendered set.
    let reads: Vec<_> = applied
        .iter()
        .map(|p| start(&v.bin(p.f, "save"), &[]))
        .collect();
    for (p, read) in applied.iter().zip(reads) {
        let label = format!("{} {}", v.name(), fam(p.f));
        let diff = finish(read)
            .ok_or_else(|| anyhow!("{} stopped working", v.bin(p.f, "save")))
            .and_then(|s| Tables::parse(&s).map_err(|e| anyhow!("{e}")))
            .map(|now| compare::compare_tables(&p.desired, &now, &label));
        let problem = readback_problem(&diff);
        if let Some(problem) = problem {
            rollback_iptables(v, &applied);
            return Err(Failure::RolledBack {
                message: format!(
                    "read-back of {} ({}) differs from the rules just applied ({problem}); the \
                     prior rules were restored",
                    v.bin(p.f, "save"),
                    fam(p.f)
                ),
                step: None,
            }
            .into());
        }
    }
    if !applied.is_empty() {
        out.steps.push(step(
            "capture:readback",
            StepStatus::Ok,
            "live rules equal the rendered set",
        ));
    }
    Ok(out)
}

/// Put back the saved nat/mangle/raw tables of the families already changed.
fn rollback_iptables(v: Variant, applied: &[FamilyPlan]) {
    for p in applied {
        let mut text = String::new();
        let before = Tables::parse(&p.before).unwrap_or_default();
        let mut touched: BTreeSet<String> = ["nat", "mangle", "raw"].map(String::from).into();
        let txn_tables = p
            .desired_text
            .as_deref()
            .and_then(|t| Tables::parse(t).ok())
            .unwrap_or_default();
        touched.retain(|t| {
            txn_tables.tables.contains_key(t)
                || p.desired.tables.contains_key(t)
                || before.tables.contains_key(t)
        });
        let mut cur: Option<String> = None;
        for line in p.before.lines() {
            if let Some(t) = line.strip_prefix('*') {
                cur = Some(t.trim().to_string());
            }
            if cur.as_ref().is_some_and(|t| touched.contains(t)) {
                text.push_str(line);
                text.push('\n');
            }
            if line == "COMMIT" {
                cur = None;
            }
        }
        for t in &touched {
            if !before.tables.contains_key(t) {
                text.push_str(&format!("*{t}\nCOMMIT\n"));
            }
        }
        if let Err(e) = restore(v, p.f, &text, false) {
            tracing::error!("rollback of {} failed: {e:#}", fam(p.f));
        }
        if v == Variant::Nft {
            // A table iptables-nft created for us did not exist before.
            for t in touched.iter().filter(|t| !before.tables.contains_key(*t)) {
                let family = if p.f == Family::V4 { "ip" } else { "ip6" };
                let _ = run("nft", &["delete", "table", family, t], None);
            }
        }
    }
}
