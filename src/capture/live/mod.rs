//! Live netfilter operations on the current network namespace: apply (one
//! transaction per family, read back, roll back on mismatch), removal by
//! state, status, the record. What istio-vm owns (the record, [`Owned`])
//! is here; the iptables transaction, read-back and rollback are
//! [`ipt`], the native nft ones [`nft`]. Reading the kernel is
//! [`super::kernel`]; TPROXY policy routing is [`super::routing`].
//!
//! Comparisons go through [`super::compare`], in-process for every
//! backend: iptables rules in the kernel's `iptables-save` spelling, nft
//! tables in the normal form of `nft -j` ([`super::nftjson`]).

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};

mod ipt;
mod nft;

use super::compare;
use super::iptables::{self as iptables, Tables};
use super::model::Family;
use super::{Rendered, nftjson};
use crate::report::{Step, StepStatus};

pub use super::kernel::{
    PrestartGuard, Probe, Resolved, Snapshot, Variant, detect, normalize_save, prestart_restore,
};
use super::kernel::{restore, run};
pub use super::routing::{
    TproxyRouting, apply_tproxy_routing, remove_tproxy_routing, tproxy_routing_present,
};
use ipt::{foreign_chains, owned_part};

/// What is wrong with a read-back, if anything: the one verdict both
/// backends roll back on (the failpoint lets tests force a mismatch).
fn readback_problem(diff: &Result<compare::Difference>) -> Option<String> {
    match diff {
        Ok(d) if d.is_empty() && !super::failpoint("capture.readback_mismatch") => None,
        Ok(d) if d.is_empty() => Some("failpoint capture.readback_mismatch".to_string()),
        Ok(d) => Some(d.summary()),
        Err(e) => Some(format!("{e:#}")),
    }
}

pub(super) fn step(id: &str, status: StepStatus, detail: impl Into<String>) -> Step {
    Step {
        id: id.to_string(),
        status,
        detail: detail.into(),
        diff: None,
    }
}

/// Outcome of a live operation.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changed: bool,
    pub steps: Vec<Step>,
}

pub(super) fn desired_for(rendered: &Rendered, f: Family) -> Option<String> {
    match rendered {
        Rendered::Iptables { v4, v6 } => match f {
            Family::V4 => Some(v4.clone()).filter(|s| !s.is_empty()),
            Family::V6 => v6.clone(),
        },
        Rendered::Nftables { .. } => None,
    }
}

/// The parsed rules of `rendered` for one family (empty when none).
pub(super) fn desired_tables(rendered: &Rendered, f: Family) -> Result<Tables> {
    match desired_for(rendered, f) {
        Some(t) => Tables::parse(&t).map_err(|e| anyhow!("reading the rendered rules: {e}")),
        None => Ok(Tables::default()),
    }
}

/// Which Istio-named chains and nft tables the record says istio-vm made:
/// (table, chain) for iptables (any variant), table names for nft.
#[derive(Debug, Default)]
pub struct Owned {
    chains: BTreeSet<(String, String)>,
    nft_tables: BTreeSet<String>,
    /// Istio's rules in built-in chains that do not jump to `ISTIO_*`,
    /// per family, as recorded.
    builtin: [Tables; 2],
}

impl Owned {
    pub fn from_records(records: &[Rendered]) -> Owned {
        let mut o = Owned::default();
        for r in records {
            match r {
                Rendered::Iptables { .. } => {
                    for f in [Family::V4, Family::V6] {
                        let Ok(t) = desired_tables(r, f) else {
                            continue;
                        };
                        for (tn, ts) in &t.tables {
                            for cn in ts.chains.keys() {
                                if iptables::is_istio_chain(cn) {
                                    o.chains.insert((tn.clone(), cn.clone()));
                                }
                            }
                        }
                        let b = &mut o.builtin[f as usize];
                        for (tn, ts) in t.tables {
                            for (cn, rules) in ts.chains {
                                if !iptables::is_istio_chain(&cn) {
                                    b.tables
                                        .entry(tn.clone())
                                        .or_default()
                                        .chains
                                        .entry(cn)
                                        .or_default()
                                        .extend(rules);
                                }
                            }
                        }
                    }
                }
                Rendered::Nftables { script } => {
                    for t in super::nft::TABLES {
                        if script.contains(&format!("table inet {t}\n")) {
                            o.nft_tables.insert(t.to_string());
                        }
                    }
                }
            }
        }
        o
    }
}

/// What an apply may take over besides its own record.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Replace `ISTIO_*` chains (and Istio-named nft tables) that the
    /// record does not say istio-vm made.
    pub replace_foreign: bool,
}

/// Apply `rendered` with `backend`: a no-op when the live Istio rules
/// already equal it; otherwise one transaction per family that removes the
/// previous Istio state and adds the new rules, then a read-back compared
/// in-process ([`compare`]). A failed read-back (or a family failing after
/// another was applied) restores the saved prior state and returns
/// `Failure::RolledBack` (exit 3). A transaction the kernel rejects
/// changes nothing (exit 1). Another tool's `ISTIO_*` chain (not in
/// `records`, content not this rendering's) is refused (exit 1) unless
/// `opts.replace_foreign`.
pub fn apply_live(
    rendered: &Rendered,
    backend: Resolved,
    snap: &Snapshot,
    records: &[Rendered],
    opts: ApplyOptions,
) -> Result<Outcome> {
    let owned = Owned::from_records(records);
    let foreign = foreign_everywhere(rendered, backend, snap, &owned)?;
    if !foreign.is_empty() && !opts.replace_foreign {
        bail!(
            "Istio-named chains that istio-vm did not create are in the way: {}. Another tool \
             (or Istio's own istio-iptables run by hand) made them; istio-vm will not delete \
             them. Remove them yourself, or run `istio-vm capture apply --replace-foreign` to \
             replace them; nothing was changed",
            foreign.join("; ")
        );
    }
    let mut out = match (backend, rendered) {
        (Resolved::Iptables(v), Rendered::Iptables { .. }) => {
            ipt::apply_iptables(v, rendered, snap, &owned, opts)?
        }
        (Resolved::Nftables, Rendered::Nftables { script }) => nft::apply_nft(script, snap)?,
        _ => bail!("internal: rules rendered for another backend"),
    };
    // Istio state left in the other backend(s) from an earlier run.
    let stale = remove_from(Some(backend), snap, &owned, opts.replace_foreign)?;
    out.changed |= stale.changed;
    out.steps.extend(stale.steps);
    Ok(out)
}

fn foreign_everywhere(
    rendered: &Rendered,
    backend: Resolved,
    snap: &Snapshot,
    owned: &Owned,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in &snap.probes {
        for f in [Family::V4, Family::V6] {
            let Some(live) = snap.tables(p.variant, f) else {
                continue;
            };
            let chosen = backend == Resolved::Iptables(p.variant);
            let desired = if chosen {
                desired_tables(rendered, f)?
            } else {
                Tables::default()
            };
            let label = format!("{} {}", p.variant.name(), fam(f));
            out.extend(foreign_chains(&live?, &desired, owned, &label));
        }
    }
    if backend != Resolved::Nftables {
        for t in snap.nft_tables.names() {
            if !owned.nft_tables.contains(t) {
                out.push(format!("table inet {t} (nftables)"));
            }
        }
    }
    Ok(out)
}

pub(super) fn fam(f: Family) -> &'static str {
    compare::family_label(f)
}

/// Remove the Istio rules istio-vm made, by state, from every backend:
/// the `ISTIO_*` chains named in `records` (the last-applied record, and
/// the current rendering where the caller trusts it), the built-in rules
/// jumping to them, the recorded built-in rules (exclude-interface
/// RETURNs, TPROXY marks), and the recorded nft tables. Istio-named
/// chains the record does not name are left alone and reported.
///
/// Also removes TPROXY policy routing that looks up `route_tables`, or
/// Istio's default table 133 when the record holds TPROXY rules.
pub fn remove_live(records: &[Rendered], route_tables: &[String]) -> Result<Outcome> {
    let snap = Snapshot::take();
    let owned = Owned::from_records(records);
    let mut out = remove_from(None, &snap, &owned, false)?;
    // Policy routing only where istio-vm set it up: TPROXY rules in the
    // record (Istio's default table 133 when the caller knows no other).
    let tproxy = records.iter().any(|r| match r {
        Rendered::Iptables { v4, v6 } => {
            v4.contains("-j TPROXY") || v6.as_deref().is_some_and(|t| t.contains("-j TPROXY"))
        }
        Rendered::Nftables { script } => script.contains(" tproxy "),
    });
    if tproxy || !route_tables.is_empty() {
        let mut tables = route_tables.to_vec();
        if tables.is_empty() {
            tables.push("133".to_string());
        }
        let routing = remove_tproxy_routing(&tables)?;
        out.changed |= routing.changed;
        out.steps.extend(routing.steps);
    }
    Ok(out)
}

fn remove_from(
    keep: Option<Resolved>,
    snap: &Snapshot,
    owned: &Owned,
    replace_foreign: bool,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    let mut left = Vec::new();
    for probe in &snap.probes {
        let v = probe.variant;
        if keep == Some(Resolved::Iptables(v)) {
            continue;
        }
        for f in [Family::V4, Family::V6] {
            let Some(live) = snap.tables(v, f) else {
                continue;
            };
            let live = live?;
            let label = format!("{} {}", v.name(), fam(f));
            let part = if replace_foreign {
                live.istio_part(&live.builtin_rules_matching(&owned.builtin[f as usize]))
            } else {
                owned_part(&live, owned, f)
            };
            left.extend(foreign_chains(&live, &Tables::default(), owned, &label));
            if part.is_empty() {
                continue;
            }
            let txn = iptables::transaction(&part, None);
            restore(v, f, &txn, true)
                .with_context(|| format!("removing Istio {} rules from {}", fam(f), v.name()))?;
            out.changed = true;
            out.steps.push(step(
                &format!("capture:{}:{}", v.name(), fam(f)),
                StepStatus::Changed,
                format!("removed {} Istio rules", part.rule_count()),
            ));
        }
    }
    if keep != Some(Resolved::Nftables) {
        let (ours, theirs): (Vec<&String>, Vec<&String>) = snap
            .nft_tables
            .names()
            .partition(|t| replace_foreign || owned.nft_tables.contains(*t));
        left.extend(theirs.iter().map(|t| format!("table inet {t} (nftables)")));
        if !ours.is_empty() {
            let script: String = ours
                .iter()
                .map(|t| format!("delete table inet {t}\n"))
                .collect();
            run("nft", &["-f", "-"], Some(&script)).context("removing Istio's nft tables")?;
            out.changed = true;
            out.steps.push(step(
                "capture:nftables",
                StepStatus::Changed,
                format!(
                    "deleted {}",
                    ours.iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if !left.is_empty() && !replace_foreign {
        out.steps.push(step(
            "capture:foreign",
            StepStatus::Skipped,
            format!(
                "left alone (istio-vm's record does not name them): {}",
                left.join("; ")
            ),
        ));
    }
    Ok(out)
}

/// Compare the Istio rules in the kernel (`snap`, every backend) with
/// `expected` in `backend`: the one comparison behind `capture status`,
/// apply's idempotence check and verify's `capture.rules`. Rules in the
/// other backends count as extra.
pub fn compare_with_kernel(
    expected: &Rendered,
    backend: Resolved,
    snap: &Snapshot,
) -> Result<compare::Difference> {
    let mut d = compare::Difference::default();
    for probe in &snap.probes {
        let v = probe.variant;
        for f in [Family::V4, Family::V6] {
            let label = format!("{} {}", v.name(), fam(f));
            let chosen = backend == Resolved::Iptables(v);
            let want = if chosen {
                desired_tables(expected, f)?
            } else {
                Tables::default()
            };
            match snap.tables(v, f) {
                Some(live) => d.extend(compare::compare_tables(&want, &live?, &label)),
                None if !want.is_empty() => d
                    .missing
                    .push(format!("{label}: the family is not usable here")),
                None => {}
            }
        }
    }
    if chosen_iptables_missing(backend, snap) {
        d.missing.push(format!(
            "{}: the binaries are not installed",
            backend.name()
        ));
    }
    let want_nft = match (backend, expected) {
        (Resolved::Nftables, Rendered::Nftables { script }) => nftjson::from_script(script)
            .map_err(|e| anyhow!("reading the recorded nft rules: {e}"))?,
        _ => Default::default(),
    };
    if let Some(e) = &snap.nft_error {
        bail!("reading Istio's nft tables: {e}");
    }
    d.extend(compare::compare_nft(
        &want_nft,
        &snap.nft_tables.tables,
        "nftables",
    ));
    Ok(d)
}

fn chosen_iptables_missing(backend: Resolved, snap: &Snapshot) -> bool {
    matches!(backend, Resolved::Iptables(v) if snap.probe(v).is_none())
}

/// The iptables variant that holds Istio chains now (for a record that
/// does not say which), else the one `detect` would pick.
pub fn holding_variant(snap: &Snapshot) -> Option<Variant> {
    snap.probes
        .iter()
        .find(|p| {
            [Family::V4, Family::V6].iter().any(|f| {
                snap.tables(p.variant, *f)
                    .and_then(Result::ok)
                    .is_some_and(|t| !t.istio_part(&BTreeSet::new()).is_empty())
            })
        })
        .map(|p| p.variant)
}

/// Which backend holds which Istio rules, and whether the chosen backend's
/// rules equal `rendered`. Returns (steps, matches).
pub fn status(
    rendered: Option<&Rendered>,
    backend: Resolved,
    snap: &Snapshot,
) -> Result<(Vec<Step>, bool)> {
    let mut steps = Vec::new();
    let empty = match backend {
        Resolved::Nftables => Rendered::Nftables {
            script: String::new(),
        },
        Resolved::Iptables(_) => Rendered::Iptables {
            v4: String::new(),
            v6: None,
        },
    };
    let d = compare_with_kernel(rendered.unwrap_or(&empty), backend, snap)?;
    let ok = d.is_empty() && rendered.is_some();
    steps.push(step(
        &format!("capture:{}", backend.name()),
        if ok {
            StepStatus::Ok
        } else {
            StepStatus::Failed
        },
        if d.is_empty() {
            if rendered.is_some() {
                "live Istio rules match the rendered set".to_string()
            } else {
                "no Istio rules (nothing rendered to compare with)".to_string()
            }
        } else {
            format!(
                "live Istio rules differ from the rendered set: {}",
                d.summary()
            )
        },
    ));
    Ok((steps, ok))
}

/// Write the rules just applied to `dir` (`/var/lib/istio-vm/capture/`,
/// root-only): `rules-v4`/`rules-v6` or `rules.nft`, and drop the files of
/// the other backend. Unchanged files are not rewritten (no mtime change),
/// so a re-apply at boot stays a no-op. `capture remove` reads them back to
/// recognise Istio's built-in-chain rules that do not jump to `ISTIO_*`.
pub fn write_record(dir: &std::path::Path, rendered: &Rendered) -> Result<Vec<Step>> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut steps = Vec::new();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let files = rendered.record_files();
    for name in ["rules-v4", "rules-v6", "rules.nft"] {
        let path = dir.join(name);
        let id = format!("file:{}", path.display());
        let Some((_, content)) = files.iter().find(|(n, _)| *n == name) else {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                steps.push(step(&id, StepStatus::Changed, "removed (other backend)"));
            }
            continue;
        };
        if std::fs::read(&path).ok().as_deref() == Some(content.as_bytes()) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(content.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        steps.push(step(&id, StepStatus::Changed, "recorded the applied rules"));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::capture::kernel::on_path;

    #[test]
    fn binary_names() {
        assert_eq!(Variant::Nft.bin(Family::V4, "save"), "iptables-nft-save");
        assert_eq!(
            Variant::Nft.bin(Family::V6, "restore"),
            "ip6tables-nft-restore"
        );
        if on_path("iptables-legacy") {
            assert_eq!(Variant::Legacy.bin(Family::V6, ""), "ip6tables-legacy");
        }
    }

    #[test]
    fn save_dumps_compare_without_counters_and_comments() {
        let a = "# Generated by x on Mon\n*nat\n:OUTPUT ACCEPT [12:720]\n-A OUTPUT -j X\nCOMMIT\n";
        let b = "# Generated by x on Tue\n*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j X\nCOMMIT\n";
        assert_eq!(normalize_save(a), normalize_save(b));
        assert_ne!(
            normalize_save(a),
            normalize_save(&b.replace("-j X", "-j Y"))
        );
    }
}
