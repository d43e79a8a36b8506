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

/// Every `http://`/`https://` URL in `text` that carries a credential-like
/// part (userinfo, query, fragment), redacted with [`redact_url`]: the last
/// guard before anything is printed, whatever error chain produced the text.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = ["https://", "http://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            // A backslash ends the URL too: in JSON it starts an escape.
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\'))
            .unwrap_or(tail.len());
        let token = &tail[..end];
        let url = token.trim_end_matches(['.', ',', ':', ';', ')', ']', '}']);
        let after_scheme = &url[url.find("://").map_or(0, |j| j + 3)..];
        let authority = after_scheme.split('/').next().unwrap_or("");
        if authority.contains('@') || url.contains(['?', '#']) {
            out.push_str(&redact_url(url));
            out.push_str(&token[url.len()..]);
        } else {
            out.push_str(token);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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

/// A URL fit to print: no user name or password, no query, no fragment
/// (a signed URL's query and a URL's userinfo are credentials; a fragment
/// may be one too). What was removed is shown as `…`.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = reqwest::Url::parse(url) {
        let had_user = !u.username().is_empty() || u.password().is_some();
        let had_query = u.query().is_some();
        let had_fragment = u.fragment().is_some();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        u.set_fragment(None);
        let mut out = u.to_string();
        if had_user && let Some(i) = out.find("://") {
            out.insert_str(i + 3, "…@");
        }
        if had_query {
            out.push_str("?…");
        }
        if had_fragment {
            out.push_str("#…");
        }
        return out;
    }
    // Not a URL the parser takes: cut at the first `?` or `#`, drop userinfo.
    let cut = url.find(['?', '#']).map_or(url, |i| &url[..i]);
    let mut out = match cut.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
                None => cut.to_string(),
            }
        }
        None => cut.to_string(),
    };
    if cut.len() < url.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn urls_in_text() {
        let t = "cannot fetch https://u:pw@h/b.tgz?X-Amz-Signature=s3cr3t: error sending \
                 request for url (https://u:pw@h/b.tgz?X-Amz-Signature=s3cr3t#frag)";
        let r = redact_urls_in(t);
        assert!(
            !r.contains("pw") && !r.contains("s3cr3t") && !r.contains("frag"),
            "{r}"
        );
        assert!(
            r.starts_with("cannot fetch https://…@h/b.tgz?…: error"),
            "{r}"
        );
        // JSON escapes after a URL survive: the document stays valid.
        let j = serde_json::json!({"e": "fetch \"https://u:pw@h/x?s=1\"\nnext"}).to_string();
        let r = redact_urls_in(&j);
        let back: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(back["e"], "fetch \"https://…@h/x?…\"\nnext");
        // Already redacted and plain URLs stay as they are.
        for t in ["see https://…@h/b.tgz?…#… now", "https://h/x, then", "none"] {
            assert_eq!(redact_urls_in(t), t);
        }
    }
}
