//! The native nft half of an apply: one `nft -f` transaction that
//! replaces Istio's tables, read back with `nft -j` and compared
//! in-process in the normal form of [`super::super::nftjson`]; on a
//! difference the prior tables go back (`nft -j -f`, their listing
//! objects).

use anyhow::{Result, anyhow, bail};

use super::super::kernel::{nft_state, run};
use super::super::{compare, failpoint, nft, nftjson};
use super::{Outcome, Snapshot, readback_problem, step};
use crate::error::Failure;
use crate::report::StepStatus;

pub(super) fn apply_nft(script: &str, snap: &Snapshot) -> Result<Outcome> {
    let mut out = Outcome::default();
    if let Some(e) = &snap.nft_error {
        // Without the prior tables there is nothing to roll back to.
        bail!("reading Istio's nft tables: {e}; nothing was changed");
    }
    let before = &snap.nft_tables;
    let desired =
        nftjson::from_script(script).map_err(|e| anyhow!("reading the rendered nft rules: {e}"))?;
    if compare::compare_nft(&desired, &before.tables, "nftables").is_empty() {
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
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let diff = nft_state().map(|now| compare::compare_nft(&desired, &now.tables, "nftables"));
    let problem = readback_problem(&diff);
    if let Some(problem) = problem {
        rollback(&before.objects);
        return Err(Failure::RolledBack {
            message: format!(
                "read-back of `nft -j list` differs from the rules just applied ({problem}); the \
                 prior tables were restored"
            ),
            step: None,
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

/// Istio's tables as they were: every one deleted (`add` first, so a
/// missing one is no error), then the saved listing objects added back,
/// in one `nft -j -f` transaction.
fn rollback(objects: &[serde_json::Value]) {
    let mut cmds: Vec<serde_json::Value> = Vec::new();
    for t in nft::TABLES {
        let table = serde_json::json!({"table": {"family": "inet", "name": t}});
        cmds.push(serde_json::json!({ "add": table }));
        cmds.push(serde_json::json!({ "delete": table }));
    }
    cmds.extend(objects.iter().cloned());
    let doc = serde_json::json!({ "nftables": cmds }).to_string();
    if let Err(e) = run("nft", &["-j", "-f", "-"], Some(&doc)) {
        tracing::error!("rollback of nftables failed: {e:#}");
    }
}
