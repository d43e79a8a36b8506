//! Live netfilter operations on the current network namespace: backend
//! detection, apply (one transaction per family, read back, roll back on
//! mismatch), removal by state, status.
//!
//! Comparisons use the kernel's own spelling: the desired rules are loaded
//! into a throw-away network namespace (`unshare --net`) and read back with
//! the same `*-save` / `nft list`, so `-m tcp`, hex marks and masked CIDRs
//! never cause a false "changed".

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use super::iptables::{self as ipt, Tables};
use super::model::Family;
use super::nft;
use super::{Rendered, failpoint};
use crate::error::Failure;
use crate::report::{Step, StepStatus};

/// Which iptables binaries: the nf_tables or the legacy x_tables flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Nft,
    Legacy,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Nft => "iptables-nft",
            Variant::Legacy => "iptables-legacy",
        }
    }
    fn bin(self, f: Family, tool: &str) -> String {
        let base = match f {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let v = match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        };
        let join = |parts: &[&str]| {
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("-")
        };
        let named = join(&[base, v, tool]);
        // iptables before 1.8 (RHEL/CentOS 7) has only the plain names, and
        // they are legacy x_tables.
        if self == Variant::Legacy && !on_path(&named) && plain_is_legacy() {
            return join(&[base, tool]);
        }
        named
    }
}

/// The unsuffixed `iptables` is the legacy flavour (iptables < 1.8 has no
/// `-legacy`/`-nft` names; 1.8+ says `(nf_tables)` or `(legacy)`).
fn plain_is_legacy() -> bool {
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLAIN.get_or_init(|| {
        on_path("iptables-restore")
            && !on_path("iptables-legacy-restore")
            && run("iptables", &["--version"], None).is_ok_and(|v| !v.contains("nf_tables"))
    })
}

/// The backend that will hold the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Iptables(Variant),
    Nftables,
}

impl Resolved {
    pub fn name(self) -> &'static str {
        match self {
            Resolved::Iptables(v) => v.name(),
            Resolved::Nftables => "nftables",
        }
    }
    pub fn model(self) -> super::Backend {
        match self {
            Resolved::Iptables(_) => super::Backend::Iptables,
            Resolved::Nftables => super::Backend::Nftables,
        }
    }
}

/// Full path of `bin` from PATH, or the sbin directories (a non-root
/// shell's PATH often lacks them; the tools live there).
fn which(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn on_path(bin: &str) -> bool {
    which(bin).is_some()
}

/// Run a program, feeding `stdin`; its stdout, or an error with its stderr.
fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let exe = if prog.contains('/') {
        prog.into()
    } else {
        which(prog).unwrap_or_else(|| prog.into())
    };
    let mut child = Command::new(exe)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {prog}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing to {prog}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-*-save` of one family; None when that family is unusable here
/// (binary missing, or no IPv6 in the kernel).
fn save(v: Variant, f: Family) -> Option<String> {
    let bin = v.bin(f, "save");
    if !on_path(&bin) {
        return None;
    }
    run(&bin, &[], None).ok()
}

fn restore(v: Variant, f: Family, input: &str, noflush: bool) -> Result<()> {
    let bin = v.bin(f, "restore");
    let mut args = vec!["-w"];
    if noflush {
        args.push("--noflush");
    }
    run(&bin, &args, Some(input)).map(|_| ())
}

/// Istio nft tables present now, with their stateless listing.
fn nft_tables() -> Vec<(String, String)> {
    if !on_path("nft") {
        return Vec::new();
    }
    let Ok(list) = run("nft", &["list", "tables"], None) else {
        return Vec::new();
    };
    nft::TABLES
        .iter()
        .filter(|t| list.lines().any(|l| l.trim() == format!("table inet {t}")))
        .filter_map(|t| {
            run("nft", &["-s", "list", "table", "inet", t], None)
                .ok()
                .map(|s| (t.to_string(), s))
        })
        .collect()
}

/// One iptables variant whose binaries exist, with its `*-save` output per
/// family (None: that family is unusable here).
pub struct Probe {
    pub variant: Variant,
    saves: [Option<String>; 2],
}

impl Probe {
    fn save(&self, f: Family) -> Option<&str> {
        self.saves[f as usize].as_deref()
    }

    /// Holds any rule or user chain (Istio's choice of variant and the
    /// mixed-setup check both look at this).
    pub fn holds_rules(&self) -> bool {
        self.saves
            .iter()
            .flatten()
            .any(|s| Tables::parse(s).is_ok_and(|t| t.has_content()))
    }
}

/// The iptables variants present, each read once.
pub fn probe_variants() -> Vec<Probe> {
    [Variant::Nft, Variant::Legacy]
        .into_iter()
        .filter(|v| on_path(&v.bin(Family::V4, "restore")))
        .map(|v| Probe {
            variant: v,
            saves: [save(v, Family::V4), save(v, Family::V6)],
        })
        .collect()
}

/// Pick the backend. `requested`: the CLI/config choice; `native_nft`:
/// cluster.env asks for Istio's nftables mode (NATIVE_NFTABLES).
pub fn detect(requested: crate::cli::Backend, native_nft: bool) -> Result<Resolved> {
    use crate::cli::Backend as B;
    let want_nft = match requested {
        B::Nftables => true,
        B::Iptables => false,
        B::Auto => native_nft,
    };
    if want_nft {
        if !on_path("nft") {
            bail!("the nftables backend needs the `nft` binary: install the nftables package");
        }
        return Ok(Resolved::Nftables);
    }
    let variants: Vec<(Variant, bool)> = probe_variants()
        .iter()
        .map(|p| (p.variant, p.holds_rules()))
        .collect();
    if variants.is_empty() {
        if requested == B::Auto && on_path("nft") {
            return Ok(Resolved::Nftables);
        }
        bail!(
            "no iptables-nft or iptables-legacy binaries found: install the iptables package \
             (or use --backend nftables)"
        );
    }
    let holding: Vec<Variant> = variants
        .iter()
        .filter(|(_, h)| *h)
        .map(|(v, _)| *v)
        .collect();
    if holding.len() > 1 {
        bail!(
            "both iptables-nft and iptables-legacy hold rules on this host (see `iptables-nft-save` \
             and `iptables-legacy-save`): capture rules in one would be bypassed or doubled by the \
             other. Move every rule to one of them (or flush the unused one), then retry"
        );
    }
    // Istio's choice (dependencies/implementation.go): legacy if it holds
    // rules, else nft.
    let v = holding
        .first()
        .copied()
        .or_else(|| {
            variants
                .iter()
                .map(|(v, _)| *v)
                .find(|v| *v == Variant::Nft)
        })
        .unwrap_or(Variant::Legacy);
    Ok(Resolved::Iptables(v))
}

const SCRATCH_HINT: &str = "loading the rendered rules into a throw-away network namespace to read \
     back the kernel's spelling of them (needs `unshare` from util-linux and CAP_SYS_ADMIN; \
     inside a container, run istio-vm with those)";

/// The kernel's spelling of `restore_text` for one family: loaded into a
/// throw-away network namespace and read back.
fn canonical_iptables(v: Variant, f: Family, restore_text: &str) -> Result<Tables> {
    let script = format!(
        "{} -w --noflush && {}",
        v.bin(f, "restore"),
        v.bin(f, "save")
    );
    let out = run(
        "unshare",
        &["--net", "--", "sh", "-c", &script],
        Some(restore_text),
    )
    .context(SCRATCH_HINT)?;
    Tables::parse(&out).map_err(|e| anyhow!("reading back rendered rules: {e}"))
}

fn canonical_nft(script: &str) -> Result<Vec<(String, String)>> {
    let mut lines = vec!["nft -f - >/dev/null".to_string()];
    for t in nft::TABLES {
        lines.push(format!(
            "if nft list tables | grep -qx 'table inet {t}'; then echo '### {t}'; nft -s list table inet {t}; fi"
        ));
    }
    let out = run(
        "unshare",
        &["--net", "--", "sh", "-c", &lines.join("\n")],
        Some(script),
    )
    .context(SCRATCH_HINT)?;
    let mut blocks = Vec::new();
    for part in out.split("### ").skip(1) {
        if let Some((name, body)) = part.split_once('\n') {
            blocks.push((name.trim().to_string(), body.to_string()));
        }
    }
    Ok(blocks)
}

fn norm_blocks(b: &[(String, String)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = b
        .iter()
        .map(|(n, s)| (n.clone(), s.trim().to_string()))
        .collect();
    v.sort();
    v
}

/// Strip volatile parts of an `iptables-save` dump (comments, counters) so
/// two dumps of the same rules compare equal.
pub fn normalize_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                match l.rfind(" [") {
                    Some(i) => l[..i].to_string(),
                    None => l.to_string(),
                }
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn step(id: &str, status: StepStatus, detail: impl Into<String>) -> Step {
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

struct FamilyPlan {
    f: Family,
    before: String,
    current: Tables,
    desired_text: Option<String>,
    desired: Tables,
}

fn desired_for(rendered: &Rendered, f: Family) -> Option<String> {
    match rendered {
        Rendered::Iptables { v4, v6 } => match f {
            Family::V4 => Some(v4.clone()).filter(|s| !s.is_empty()),
            Family::V6 => v6.clone(),
        },
        Rendered::Nftables { .. } => None,
    }
}

/// Apply `rendered` with `backend`: a no-op when the live Istio rules
/// already equal it; otherwise one transaction per family that removes the
/// previous Istio state and adds the new rules, then a read-back. A failed
/// read-back (or a family failing after another was applied) restores the
/// saved prior state and returns `Failure::RolledBack` (exit 3). A
/// transaction the kernel rejects changes nothing (exit 1).
pub fn apply_live(rendered: &Rendered, backend: Resolved) -> Result<Outcome> {
    let mut out = match (backend, rendered) {
        (Resolved::Iptables(v), Rendered::Iptables { .. }) => apply_iptables(v, rendered)?,
        (Resolved::Nftables, Rendered::Nftables { script }) => apply_nft(script)?,
        _ => bail!("internal: rules rendered for another backend"),
    };
    // Istio state left in the other backend(s) from an earlier run.
    let stale = remove_except(backend, &[])?;
    out.changed |= stale.changed;
    out.steps.extend(stale.steps);
    Ok(out)
}

fn apply_iptables(v: Variant, rendered: &Rendered) -> Result<Outcome> {
    let mut plans = Vec::new();
    let mut out = Outcome::default();
    for f in [Family::V4, Family::V6] {
        let desired_text = desired_for(rendered, f);
        let Some(before) = save(v, f) else {
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
        let desired = match &desired_text {
            Some(t) => canonical_iptables(v, f, t)?,
            None => Tables::default(),
        };
        let live =
            Tables::parse(&before).map_err(|e| anyhow!("reading {}: {e}", v.bin(f, "save")))?;
        let current = live.istio_part(&desired.builtin_rules());
        plans.push(FamilyPlan {
            f,
            before,
            current,
            desired_text,
            desired,
        });
    }
    let id = |f: Family| format!("capture:{}:{}", v.name(), fam(f));
    let mut applied: Vec<&FamilyPlan> = Vec::new();
    for p in &plans {
        let desired_part = p.desired.istio_part(&p.desired.builtin_rules());
        if p.current == desired_part {
            out.steps
                .push(step(&id(p.f), StepStatus::Ok, "rules already as rendered"));
            continue;
        }
        let mut txn = ipt::transaction(&p.current, p.desired_text.as_deref());
        if failpoint(&format!("capture.reject_{}", fam(p.f))) {
            // A rule the kernel refuses (owner matches are only valid on
            // locally generated packets), in the last table so the tables
            // before it have already committed.
            if let Some(i) = txn.rfind("COMMIT\n") {
                txn.insert_str(i, "-A PREROUTING -m owner --uid-owner 0 -j RETURN\n");
            }
        }
        if let Err(e) = restore(v, p.f, &txn, true) {
            let msg = format!(
                "applying {} rules with {}: {e:#}",
                fam(p.f),
                v.bin(p.f, "restore")
            );
            // iptables-restore commits table by table: earlier tables of
            // this family may already be in.
            let partial =
                save(v, p.f).is_none_or(|now| normalize_save(&now) != normalize_save(&p.before));
            if applied.is_empty() && !partial {
                return Err(anyhow!("{msg}; nothing was changed"));
            }
            applied.push(p);
            rollback_iptables(v, &applied);
            return Err(Failure::RolledBack { message: msg }.into());
        }
        applied.push(p);
        out.changed = true;
        out.steps.push(step(
            &id(p.f),
            StepStatus::Changed,
            format!(
                "{} Istio rules applied in one transaction ({} removed first)",
                desired_part.rule_count(),
                p.current.rule_count()
            ),
        ));
    }
    // Read back.
    for p in &applied {
        let desired_part = p.desired.istio_part(&p.desired.builtin_rules());
        let now = save(v, p.f)
            .ok_or_else(|| anyhow!("{} stopped working", v.bin(p.f, "save")))
            .and_then(|s| Tables::parse(&s).map_err(|e| anyhow!("{e}")));
        let ok = matches!(&now, Ok(t) if t.istio_part(&p.desired.builtin_rules()) == desired_part)
            && !failpoint("capture.readback_mismatch");
        if !ok {
            rollback_iptables(v, &applied);
            return Err(Failure::RolledBack {
                message: format!(
                    "read-back of {} ({}) differs from the rules just applied; the prior rules \
                     were restored",
                    v.bin(p.f, "save"),
                    fam(p.f)
                ),
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

fn fam(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// Put back the saved nat/mangle/raw tables of the families already changed.
fn rollback_iptables(v: Variant, applied: &[&FamilyPlan]) {
    for p in applied {
        let mut text = String::new();
        let before = Tables::parse(&p.before).unwrap_or_default();
        let mut touched: BTreeSet<String> = ["nat", "mangle", "raw"].map(String::from).into();
        touched.retain(|t| {
            p.current.tables.contains_key(t)
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

fn apply_nft(script: &str) -> Result<Outcome> {
    let mut out = Outcome::default();
    let before = nft_tables();
    let desired = canonical_nft(script)?;
    if norm_blocks(&before) == norm_blocks(&desired) {
        out.steps.push(step(
            "capture:nftables",
            StepStatus::Ok,
            "rules already as rendered",
        ));
        return Ok(out);
    }
    let mut txn = nft::delete_tables_script();
    txn.push_str(script);
    if failpoint("capture.reject_nft") {
        txn.push_str("add rule inet istio-proxy-nat output tcp dport 1 tproxy to :1\n");
    }
    run("nft", &["-f", "-"], Some(&txn))
        .map_err(|e| anyhow!("applying nftables rules: {e:#}; nothing was changed"))?;
    out.changed = true;
    out.steps.push(step(
        "capture:nftables",
        StepStatus::Changed,
        format!(
            "tables {} replaced in one nft transaction",
            desired
                .iter()
                .map(|b| b.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let now = nft_tables();
    if norm_blocks(&now) != norm_blocks(&desired) || failpoint("capture.readback_mismatch") {
        let mut back = nft::delete_tables_script();
        for (_, body) in &before {
            back.push_str(body);
            back.push('\n');
        }
        if let Err(e) = run("nft", &["-f", "-"], Some(&back)) {
            tracing::error!("rollback of nftables failed: {e:#}");
        }
        return Err(Failure::RolledBack {
            message: "read-back of `nft list` differs from the rules just applied; the prior \
                      tables were restored"
                .into(),
        }
        .into());
    }
    out.steps.push(step(
        "capture:readback",
        StepStatus::Ok,
        "live tables equal the rendered set",
    ));
    Ok(out)
}

/// Remove every Istio rule by state from every backend: jumps to `ISTIO_*`
/// from built-in chains, every `ISTIO_*` chain (nat, mangle, raw; both
/// families; iptables-nft and -legacy), Istio's nft tables. `known` are
/// rule sets (e.g. the last-applied record and the current rendering) whose
/// built-in-chain rules also count as Istio's (exclude-interface RETURNs,
/// TPROXY marks), as long as they are present.
///
/// Also removes TPROXY policy routing that looks up `route_tables` (Istio's
/// default table 133 is always included).
pub fn remove_live(known: &[Rendered], route_tables: &[String]) -> Result<Outcome> {
    let mut out = remove_except_impl(None, known)?;
    let mut tables = vec!["133".to_string()];
    tables.extend(route_tables.iter().filter(|t| *t != "133").cloned());
    let routing = remove_tproxy_routing(&tables)?;
    out.changed |= routing.changed;
    out.steps.extend(routing.steps);
    Ok(out)
}

fn remove_except(keep: Resolved, known: &[Rendered]) -> Result<Outcome> {
    remove_except_impl(Some(keep), known)
}

fn remove_except_impl(keep: Option<Resolved>, known: &[Rendered]) -> Result<Outcome> {
    let mut out = Outcome::default();
    for probe in probe_variants() {
        let v = probe.variant;
        if keep == Some(Resolved::Iptables(v)) {
            continue;
        }
        for f in [Family::V4, Family::V6] {
            let Some(before) = probe.save(f) else {
                continue;
            };
            let live =
                Tables::parse(before).map_err(|e| anyhow!("reading {}: {e}", v.bin(f, "save")))?;
            // No ISTIO_* chain or jump: nothing of Istio's here (and no
            // need for the scratch-namespace canonicalisation below).
            if live.istio_part(&BTreeSet::new()).is_empty() {
                continue;
            }
            // The record usually equals the current rendering: load each
            // distinct text once.
            let texts: BTreeSet<String> = known.iter().filter_map(|r| desired_for(r, f)).collect();
            let mut also = BTreeSet::new();
            for t in texts {
                if let Ok(c) = canonical_iptables(v, f, &t) {
                    also.extend(c.builtin_rules());
                }
            }
            let part = live.istio_part(&also);
            if part.is_empty() {
                continue;
            }
            let txn = ipt::transaction(&part, None);
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
        let tables = nft_tables();
        if !tables.is_empty() {
            let script: String = tables
                .iter()
                .map(|(t, _)| format!("delete table inet {t}\n"))
                .collect();
            run("nft", &["-f", "-"], Some(&script)).context("removing Istio's nft tables")?;
            out.changed = true;
            out.steps.push(step(
                "capture:nftables",
                StepStatus::Changed,
                format!(
                    "deleted {}",
                    tables
                        .iter()
                        .map(|t| t.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(out)
}

/// Which backend holds which Istio rules, and whether the chosen backend's
/// rules equal `rendered`. Returns (steps, matches).
pub fn status(rendered: Option<&Rendered>, backend: Resolved) -> Result<(Vec<Step>, bool)> {
    let mut steps = Vec::new();
    let mut matches = true;
    for probe in probe_variants() {
        let v = probe.variant;
        for f in [Family::V4, Family::V6] {
            let Some(before) = probe.save(f) else {
                continue;
            };
            let live = Tables::parse(before).map_err(|e| anyhow!("{e}"))?;
            let chosen = backend == Resolved::Iptables(v);
            let desired_text = rendered.filter(|_| chosen).and_then(|r| desired_for(r, f));
            let desired = match &desired_text {
                Some(t) => canonical_iptables(v, f, t)?,
                None => Tables::default(),
            };
            let also = desired.builtin_rules();
            let part = live.istio_part(&also);
            let id = format!("capture:{}:{}", v.name(), fam(f));
            if chosen && rendered.is_some() {
                let want = desired.istio_part(&also);
                let same = part == want;
                matches &= same;
                steps.push(step(
                    &id,
                    if same {
                        StepStatus::Ok
                    } else {
                        StepStatus::Failed
                    },
                    format!(
                        "{} Istio rules; {}",
                        part.rule_count(),
                        if same {
                            "match the rendered set".to_string()
                        } else {
                            format!("differ from the rendered set ({} rules)", want.rule_count())
                        }
                    ),
                ));
            } else if !part.is_empty() {
                matches = false;
                let detail = if chosen {
                    format!(
                        "{} Istio rules (nothing rendered to compare with)",
                        part.rule_count()
                    )
                } else {
                    format!(
                        "{} Istio rules in a backend other than {}",
                        part.rule_count(),
                        backend.name()
                    )
                };
                steps.push(step(&id, StepStatus::Failed, detail));
            }
        }
    }
    let tables = nft_tables();
    if let (Resolved::Nftables, Some(Rendered::Nftables { script })) = (backend, rendered) {
        let desired = canonical_nft(script)?;
        let same = norm_blocks(&tables) == norm_blocks(&desired);
        matches &= same;
        steps.push(step(
            "capture:nftables",
            if same {
                StepStatus::Ok
            } else {
                StepStatus::Failed
            },
            format!(
                "{} Istio tables; {}",
                tables.len(),
                if same {
                    "match the rendered set"
                } else {
                    "differ from the rendered set"
                }
            ),
        ));
    } else if !tables.is_empty() {
        matches = false;
        steps.push(step(
            "capture:nftables",
            StepStatus::Failed,
            format!(
                "Istio nft tables {} present, but the backend is {}",
                tables
                    .iter()
                    .map(|t| t.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                backend.name()
            ),
        ));
    }
    Ok((steps, matches))
}

/// TPROXY policy routing, as Istio's `tools/common/tproxy/run_linux.go`
/// sets it up: marked packets are routed to the local stack (`ip rule
/// fwmark MARK lookup TABLE`, `local default dev lo` in TABLE), and for
/// IPv6 the inbound-passthrough source `::6/128` on `lo`.
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

fn mark_hex(mark: &str) -> String {
    mark.parse::<u32>()
        .map(|m| format!("{m:#x}"))
        .unwrap_or_else(|_| mark.to_string())
}

fn has_rule(f: Family, mark: &str, table: &str) -> bool {
    run("ip", &["-f", ip_family(f), "rule", "show"], None).is_ok_and(|out| {
        out.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.windows(2)
                .any(|p| p == ["fwmark", mark_hex(mark).as_str()])
                && w.windows(2).any(|p| p == ["lookup", table])
        })
    })
}

fn has_local_route(f: Family, table: &str) -> bool {
    run(
        "ip",
        &["-f", ip_family(f), "route", "show", "table", table],
        None,
    )
    .is_ok_and(|out| out.lines().any(|l| l.starts_with("local default dev lo")))
}

fn has_v6_passthrough() -> bool {
    run("ip", &["-6", "addr", "show", "dev", "lo"], None)
        .is_ok_and(|out| out.contains("inet6 ::6/128"))
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
    for f in [Family::V4, Family::V6] {
        let fam_s = ip_family(f);
        let Ok(rules) = run("ip", &["-f", fam_s, "rule", "show"], None) else {
            continue;
        };
        let mut removed = 0;
        for line in rules.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let mark = w.windows(2).find(|p| p[0] == "fwmark").map(|p| p[1]);
            let table = w.windows(2).find(|p| p[0] == "lookup").map(|p| p[1]);
            if let (Some(mark), Some(table)) = (mark, table) {
                if tables.iter().any(|t| t == table) {
                    run(
                        "ip",
                        &["-f", fam_s, "rule", "del", "fwmark", mark, "lookup", table],
                        None,
                    )
                    .context("removing the TPROXY policy rule")?;
                    removed += 1;
                }
            }
        }
        for t in tables {
            if has_local_route(f, t) {
                run("ip", &["-f", fam_s, "route", "flush", "table", t], None)
                    .context("removing the TPROXY route table")?;
                removed += 1;
            }
        }
        if f == Family::V6 && has_v6_passthrough() {
            run("ip", &["-6", "addr", "del", "::6/128", "dev", "lo"], None)
                .context("removing ::6/128 from lo")?;
            removed += 1;
        }
        if removed > 0 {
            out.changed = true;
            out.steps.push(step(
                &format!("capture:tproxy-routing:{}", fam(f)),
                StepStatus::Changed,
                format!("removed {removed} routing entries"),
            ));
        }
    }
    Ok(out)
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
