//! Log lines on stderr, with their syslog priority when stderr is the
//! journal.
//!
//! Under systemd, stderr is a stream to journald (`$JOURNAL_STREAM` names
//! its device and inode, systemd.exec(5)); journald reads a `<N>` prefix on
//! each line as the line's priority (`SyslogLevelPrefix=`, on by default).
//! So `journalctl -p warning -u istio-vm-verify` shows exactly the lines
//! written at warning or above: the failing checks, one line each.

use std::io::Write as _;
use std::sync::OnceLock;

use crate::report::{Check, CheckStatus};

/// syslog(3) priorities journald understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

/// True when stderr is the journal stream systemd connected (not merely
/// inherited by a child whose stderr was redirected elsewhere).
pub fn stderr_is_journal() -> bool {
    static IS: OnceLock<bool> = OnceLock::new();
    *IS.get_or_init(|| {
        let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
            return false;
        };
        matches_stream(&v.to_string_lossy(), st.st_dev, st.st_ino)
    })
}

/// `$JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn matches_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// `text` with a `<N>` prefix on every line (journald reads each line of a
/// stream as its own entry).
pub fn prefixed(priority: Priority, text: &str) -> String {
    let mut out = String::new();
    for line in text.trim_end_matches('\n').split('\n') {
        out.push_str(&format!("<{}>{line}\n", priority as u8));
    }
    out
}

/// Writes one log line (or several) to stderr, with its priority when the
/// journal reads it.
pub fn line(priority: Priority, text: &str) {
    let text = &crate::report::redact_urls_in(text);
    let s = if stderr_is_journal() {
        prefixed(priority, text)
    } else {
        format!("{}\n", text.trim_end_matches('\n'))
    };
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// The error a command stopped on, at priority err, when the journal reads
/// stderr (the report on stdout carries it otherwise).
pub fn error_line(text: &str) {
    if stderr_is_journal() {
        line(
            Priority::Err,
            &format!("error: {}", text.replace('\n', " ")),
        );
    }
}

/// A `tracing` writer adding the priority of each event's level.
pub struct JournalWriter {
    priority: Priority,
}

impl std::io::Write for JournalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // URL credentials redacted as on stdout (one event, one write).
        let text = crate::report::redact_urls_in(&String::from_utf8_lossy(buf));
        let s = prefixed(self.priority, &text);
        std::io::stderr().lock().write_all(s.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `MakeWriter` for the journal: one [`JournalWriter`] per event, at the
/// event's level (ERROR err, WARN warning, INFO info, DEBUG/TRACE debug).
pub struct JournalMakeWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for JournalMakeWriter {
    type Writer = JournalWriter;

    fn make_writer(&'a self) -> JournalWriter {
        JournalWriter {
            priority: Priority::Info,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> JournalWriter {
        let priority = match *meta.level() {
            tracing::Level::ERROR => Priority::Err,
            tracing::Level::WARN => Priority::Warning,
            tracing::Level::INFO => Priority::Info,
            _ => Priority::Debug,
        };
        JournalWriter { priority }
    }
}

/// The line verify logs for a check when the journal reads stderr: failing
/// checks at warning (one line each, naming the check id), warnings at
/// notice, nothing for the others (the report on stdout has every check).
pub fn check_line(c: &Check) -> Option<(Priority, String)> {
    let (p, word) = match c.status {
        CheckStatus::Fail => (Priority::Warning, "failed"),
        CheckStatus::Warn => (Priority::Notice, "warns"),
        CheckStatus::Pass | CheckStatus::Skip => return None,
    };
    let mut text = format!("check {} {word}: {}", c.id, c.detail);
    if let Some(h) = &c.hint {
        text.push_str(&format!(" (hint: {h})"));
    }
    // One journal entry per check.
    Some((p, text.replace('\n', " ")))
}

/// Logs the failing and warning checks when the journal reads stderr; an
/// interactive run has them in its report already.
pub fn log_checks(checks: &[Check]) {
    if !stderr_is_journal() {
        return;
    }
    for c in checks {
        if let Some((p, text)) = check_line(c) {
            line(p, &text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_prefix() {
        assert_eq!(prefixed(Priority::Warning, "a\nb\n"), "<4>a\n<4>b\n");
        assert_eq!(prefixed(Priority::Info, "x"), "<6>x\n");
    }

    #[test]
    fn journal_stream_is_device_and_inode() {
        assert!(matches_stream("64769:1234", 64769, 1234));
        assert!(!matches_stream("64769:1234", 64769, 1235));
        assert!(!matches_stream("garbage", 1, 2));
    }

    #[test]
    fn failing_checks_are_warnings_naming_their_id() {
        let mut c = Check {
            id: "xds.stream".into(),
            status: CheckStatus::Fail,
            detail: "closed\nby istiod".into(),
            elapsed_ms: 0,
            hint: Some("look".into()),
        };
        let (p, t) = check_line(&c).unwrap();
        assert_eq!(p, Priority::Warning);
        assert_eq!(t, "check xds.stream failed: closed by istiod (hint: look)");
        c.status = CheckStatus::Warn;
        assert_eq!(check_line(&c).unwrap().0, Priority::Notice);
        c.status = CheckStatus::Pass;
        assert!(check_line(&c).is_none());
    }
}
