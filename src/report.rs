//! The result every command produces: steps (install), findings (validate),
//! checks (verify). Rendered as human text or as the stable JSON document of
//! DESIGN.md ("add fields, never rename").

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One validation result about the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable code such as `token.expired`.
    pub code: String,
    /// Bundle file the finding is about (`istio-token`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub message: String,
    /// What the user should do about it.
    pub hint: String,
}

impl Finding {
    pub fn error(
        code: &str,
        file: Option<&str>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Error, code, file, message, hint)
    }

    pub fn warning(
        code: &str,
        file: Option<&str>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Warning, code, file, message, hint)
    }

    pub fn new(
        severity: Severity,
        code: &str,
        file: Option<&str>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            code: code.to_string(),
            file: file.map(str::to_string),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Already as desired.
    Ok,
    Changed,
    Failed,
    Skipped,
}

/// One action of a plan, as executed (or as it would be, in check mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Stable id such as `file:/etc/certs/root-cert.pem`.
    pub id: String,
    pub status: StepStatus,
    pub detail: String,
    /// Unified diff of a text file (`--diff`), secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// One verify check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: String,
    pub status: CheckStatus,
    pub detail: String,
    pub elapsed_ms: u64,
    /// Likely cause and fix, present whenever the status is not `pass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The one JSON document a command prints with `--output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub command: String,
    pub ok: bool,
    pub changed: bool,
    pub check_mode: bool,
    pub steps: Vec<Step>,
    pub findings: Vec<Finding>,
    pub checks: Vec<Check>,
    /// Set when the command stopped on an error rather than a finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rendered rule text (`capture render`), printed first in text mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
}

impl Report {
    pub fn new(command: &str) -> Self {
        Report {
            command: command.to_string(),
            ok: true,
            changed: false,
            check_mode: false,
            steps: Vec::new(),
            findings: Vec::new(),
            checks: Vec::new(),
            error: None,
            rules: None,
        }
    }

    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// Human text: one line per finding, step and check.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.rules {
            out.push_str(r);
        }
        for f in &self.findings {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let file = f
                .file
                .as_deref()
                .map(|f| format!(" {f}:"))
                .unwrap_or_default();
            out.push_str(&format!("{sev}[{}]:{file} {}\n", f.code, f.message));
            if !f.hint.is_empty() {
                out.push_str(&format!("    hint: {}\n", f.hint));
            }
        }
        for s in &self.steps {
            let st = match s.status {
                StepStatus::Ok => "ok",
                StepStatus::Changed => "changed",
                StepStatus::Failed => "FAILED",
                StepStatus::Skipped => "skipped",
            };
            out.push_str(&format!("{st:>8}  {}  {}\n", s.id, s.detail));
            if let Some(d) = &s.diff {
                out.push_str(d);
                if !d.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        for c in &self.checks {
            let st = match c.status {
                CheckStatus::Pass => "PASS",
                CheckStatus::Warn => "WARN",
                CheckStatus::Fail => "FAIL",
                CheckStatus::Skip => "skip",
            };
            out.push_str(&format!(
                "{st}  {:<22} {} ({} ms)\n",
                c.id, c.detail, c.elapsed_ms
            ));
            if let Some(h) = &c.hint {
                out.push_str(&format!("      hint: {h}\n"));
            }
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("error: {e}\n"));
        }
        let summary = match (self.ok, self.changed, self.check_mode) {
            (false, _, _) => "not ok",
            (true, true, true) => "ok (would change)",
            (true, true, false) => "ok (changed)",
            (true, false, _) => "ok",
        };
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = self.findings.len() - errors;
        out.push_str(&format!("{}: {summary}", self.command));
        if !self.findings.is_empty() {
            out.push_str(&format!(", {errors} error(s), {warnings} warning(s)"));
        }
        out.push('\n');
        out
    }
}
