//! The `hosts` file istioctl writes: `<gateway IP> istiod.<ns>.svc`, or nothing
//! at all when it could not find an IP (istioctl/pkg/workload/workload.go
//! `createHosts`). Read with /etc/hosts rules: an address, then names; `#` starts
//! a comment.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub addr: IpAddr,
    pub names: Vec<String>,
    /// 1-based line in the file.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for HostsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for HostsError {}

/// A host name as resolvers accept it: labels of letters, digits, `-`, `_`,
/// separated by dots, at most 253 characters.
pub fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Parse hosts lines. Blank and comment-only lines give no entry; every other
/// line must be an IP address followed by at least one valid name.
pub fn parse(text: &str) -> Result<Vec<HostEntry>, HostsError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("");
        let mut words = content.split_whitespace();
        let Some(first) = words.next() else { continue };
        let err = |message: String| HostsError { line, message };
        let addr: IpAddr = first.parse().map_err(|_| {
            err(format!(
                "`{first}` is not an IP address (a hosts line is `<IP> <name>...`)"
            ))
        })?;
        let names: Vec<String> = words.map(str::to_string).collect();
        if names.is_empty() {
            return Err(err(format!("address {addr} has no host name after it")));
        }
        if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
            return Err(err(format!("`{bad}` is not a valid host name")));
        }
        entries.push(HostEntry { addr, names, line });
    }
    Ok(entries)
}

/// The address `name` maps to, first entry wins as in glibc's files backend.
pub fn lookup<'a>(entries: &'a [HostEntry], name: &str) -> Option<&'a HostEntry> {
    let name = name.strip_suffix('.').unwrap_or(name);
    entries.iter().find(|e| {
        e.names
            .iter()
            .any(|n| n.strip_suffix('.').unwrap_or(n).eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn istioctl_lines() {
        let v = parse("10.10.10.11 istiod-rev-1.istio-system.svc\n").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].addr.to_string(), "10.10.10.11");
        assert_eq!(v[0].names, ["istiod-rev-1.istio-system.svc"]);
        let v = parse("# c\n\nfd00:10:96::2 istiod.istio-system.svc a b # x\n").unwrap();
        assert_eq!(v[0].line, 3);
        assert_eq!(v[0].names.len(), 3);
        assert!(lookup(&v, "ISTIOD.istio-system.svc.").is_some());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_lines() {
        // 1.10 wrote a non-IP --ingressIP (an ELB host name) verbatim.
        let e = parse("a1b2.elb.amazonaws.com istiod.istio-system.svc\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(parse("\n10.0.0.1\n").unwrap_err().line == 2);
        assert!(parse("10.0.0.1 bad/name\n").is_err());
        assert!(parse("10.0.0.256 x\n").is_err());
    }

    #[test]
    fn error_names_its_line() {
        let e = parse("\n10.0.0.1\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2: "), "{e}");
        assert!(e.to_string().len() > "line 2: ".len(), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }
    }
}
