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

/// Every finding code the bundle checks produce, with its severity (for the
/// codes `--allow-env` turns into warnings, the severity without it): the
/// contract's list (docs/DESIGN.md "Finding codes", compared by
/// tests/design_doc.rs). A code that is not listed here is a bug: debug
/// builds panic on it, so every test that produces a finding checks this.
pub const FINDING_CODES: &[(&str, Severity)] = &[
    ("bundle.archive", Severity::Error),
    ("bundle.checksum", Severity::Error),
    ("bundle.fetch", Severity::Error),
    ("bundle.missing_file", Severity::Error),
    ("bundle.too_large", Severity::Error),
    ("bundle.unsafe_path", Severity::Error),
    ("cert.expired", Severity::Error),
    ("cert.expires_soon", Severity::Warning),
    ("cert.no_cert_sign", Severity::Error),
    ("cert.not_ca", Severity::Error),
    ("cert.not_yet_valid", Severity::Error),
    ("cert.parse", Severity::Error),
    ("env.agent_port_captured", Severity::Warning),
    ("env.exec_user", Severity::Error),
    ("env.invalid_value", Severity::Error),
    ("env.legacy_label", Severity::Warning),
    ("env.missing_key", Severity::Error),
    ("env.shell_unsafe", Severity::Error),
    ("env.ssh_captured", Severity::Warning),
    ("env.syntax", Severity::Error),
    ("env.unknown_key", Severity::Warning),
    ("env.unsafe_key", Severity::Error),
    ("hosts.discovery_unresolved", Severity::Warning),
    ("hosts.empty", Severity::Error),
    ("hosts.marker", Severity::Error),
    ("hosts.syntax", Severity::Error),
    ("mesh.discovery_address", Severity::Error),
    ("mesh.mismatch", Severity::Warning),
    ("mesh.parse", Severity::Error),
    ("token.audience", Severity::Error),
    ("token.expired", Severity::Error),
    ("token.expires_soon", Severity::Warning),
    ("token.format", Severity::Error),
    ("token.not_yet_valid", Severity::Error),
    ("token.subject_mismatch", Severity::Error),
    ("token.unsigned", Severity::Error),
];

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
        debug_assert!(
            FINDING_CODES.iter().any(|(c, _)| *c == code),
            "finding code {code} is not in report::FINDING_CODES: \
             add it there and to docs/DESIGN.md"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes written as the first argument of a finding constructor
    /// (`Finding::error`, `Finding::warning`, or a helper named `…finding`)
    /// anywhere under src/ but this file.
    fn codes_in_source() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("src/report.rs")
                {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut found = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for call in ["Finding::error(", "Finding::warning(", "finding("] {
                for (at, _) in text.match_indices(call) {
                    let rest = text[at + call.len()..].trim_start();
                    let Some(lit) = rest.strip_prefix('"') else {
                        continue;
                    };
                    let code = &lit[..lit.find('"').unwrap()];
                    found.push((code.to_string(), f.display().to_string()));
                }
            }
            // `Finding::new(severity, "code", …)`: the first literal.
            for (at, _) in text.match_indices("Finding::new(") {
                let rest = &text[at..];
                let Some(open) = rest.find('"') else { continue };
                let lit = &rest[open + 1..];
                let code = &lit[..lit.find('"').unwrap()];
                if code.contains('.') && !code.contains(' ') {
                    found.push((code.to_string(), f.display().to_string()));
                }
            }
        }
        found
    }

    #[test]
    fn every_finding_code_in_the_source_is_listed() {
        let found = codes_in_source();
        // The scan itself must see the constructors, or it proves nothing.
        assert!(found.len() >= FINDING_CODES.len(), "scan found {found:?}");
        for (code, file) in &found {
            assert!(
                FINDING_CODES.iter().any(|(c, _)| c == code),
                "{file}: finding code {code} is not in FINDING_CODES"
            );
        }
        for (code, _) in FINDING_CODES {
            assert!(
                found.iter().any(|(c, _)| c == code),
                "FINDING_CODES lists {code}, which no constructor in src/ produces"
            );
        }
    }

    fn sample() -> Report {
        let mut r = Report::new("install");
        r.changed = true;
        r.findings = vec![
            Finding::warning("cert.expires_soon", Some("root-cert.pem"), "soon", "renew"),
            Finding::error("hosts.empty", None, "empty", ""),
            Finding::warning("env.unknown_key", Some("cluster.env"), "FOO", "drop it"),
        ];
        r.steps = vec![
            Step {
                id: "file:/a".into(),
                status: StepStatus::Changed,
                detail: "created".into(),
                diff: Some("+x".into()),
            },
            Step {
                id: "dir:/b".into(),
                status: StepStatus::Ok,
                detail: "as desired".into(),
                diff: Some("-y\n".into()),
            },
            Step {
                id: "hook:c".into(),
                status: StepStatus::Failed,
                detail: "boom".into(),
                diff: None,
            },
            Step {
                id: "hook:d".into(),
                status: StepStatus::Skipped,
                detail: "later".into(),
                diff: None,
            },
        ];
        r.checks = vec![
            Check {
                id: "tls.handshake".into(),
                status: CheckStatus::Pass,
                detail: "ok".into(),
                elapsed_ms: 4,
                hint: None,
            },
            Check {
                id: "ca.token".into(),
                status: CheckStatus::Fail,
                detail: "denied".into(),
                elapsed_ms: 7,
                hint: Some("new token".into()),
            },
            Check {
                id: "agent.dns".into(),
                status: CheckStatus::Warn,
                detail: "slow".into(),
                elapsed_ms: 0,
                hint: Some("h".into()),
            },
            Check {
                id: "xds.stream".into(),
                status: CheckStatus::Skip,
                detail: "blocked".into(),
                elapsed_ms: 0,
                hint: Some("fix ca.token first".into()),
            },
        ];
        r.rules = Some("*nat\n".into());
        r.error = Some("it broke".into());
        r
    }

    #[test]
    fn text_has_every_part_in_order() {
        let want = concat!(
            "*nat\n",
            "warning[cert.expires_soon]: root-cert.pem: soon\n",
            "    hint: renew\n",
            "error[hosts.empty]: empty\n",
            "warning[env.unknown_key]: cluster.env: FOO\n",
            "    hint: drop it\n",
            " changed  file:/a  created\n",
            "+x\n",
            "      ok  dir:/b  as desired\n",
            "-y\n",
            "  FAILED  hook:c  boom\n",
            " skipped  hook:d  later\n",
            "PASS  tls.handshake          ok (4 ms)\n",
            "FAIL  ca.token               denied (7 ms)\n",
            "      hint: new token\n",
            "WARN  agent.dns              slow (0 ms)\n",
            "      hint: h\n",
            "skip  xds.stream             blocked (0 ms)\n",
            "      hint: fix ca.token first\n",
            "error: it broke\n",
            "install: ok (changed), 1 error(s), 2 warning(s)\n",
        );
        assert_eq!(sample().to_text(), want);
    }

    #[test]
    fn text_summary_says_what_happened() {
        let summary = |ok, changed, check| {
            let mut r = Report::new("install");
            (r.ok, r.changed, r.check_mode) = (ok, changed, check);
            r.to_text()
        };
        assert_eq!(summary(true, false, false), "install: ok\n");
        assert_eq!(summary(true, false, true), "install: ok\n");
        assert_eq!(summary(true, true, false), "install: ok (changed)\n");
        assert_eq!(summary(true, true, true), "install: ok (would change)\n");
        assert_eq!(summary(false, true, true), "install: not ok\n");
    }

    #[test]
    fn has_errors_only_for_error_findings() {
        let mut r = Report::new("validate");
        assert!(!r.has_errors());
        r.findings
            .push(Finding::warning("env.unknown_key", None, "m", "h"));
        assert!(!r.has_errors());
        r.findings
            .push(Finding::error("env.syntax", None, "m", "h"));
        assert!(r.has_errors());
    }

    #[test]
    fn json_is_the_documented_document() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(v["command"], "install");
        assert_eq!(v["ok"], true);
        assert_eq!(v["changed"], true);
        assert_eq!(v["check_mode"], false);
        assert_eq!(v["findings"][0]["severity"], "warning");
        assert_eq!(v["findings"][0]["file"], "root-cert.pem");
        assert!(v["findings"][1].get("file").is_none());
        assert_eq!(v["steps"][0]["status"], "changed");
        assert_eq!(v["steps"][2].get("diff"), None);
        assert_eq!(v["checks"][1]["hint"], "new token");
        assert!(v["checks"][0].get("hint").is_none());
        assert_eq!(v["error"], "it broke");
        let empty: serde_json::Value =
            serde_json::from_str(&Report::new("verify").to_json()).unwrap();
        assert!(empty.get("error").is_none() && empty.get("rules").is_none());
    }

    #[test]
    fn finding_codes_are_unique_and_sorted() {
        let codes: Vec<&str> = FINDING_CODES.iter().map(|(c, _)| *c).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(codes, sorted);
    }

    #[test]
    #[should_panic(expected = "not in report::FINDING_CODES")]
    #[cfg(debug_assertions)]
    fn an_unlisted_code_is_refused() {
        let _ = Finding::error("bundle.no_such_code", None, "m", "h");
    }
}
