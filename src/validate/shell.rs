//! cluster.env values that Istio's start script pastes into a shell command
//! line, and variables that change how a shell or the dynamic loader behaves.
//!
//! `istio-start.sh` sources cluster.env with `set -a` (every variable is
//! exported to every process it starts), then runs the agent through a
//! second shell whose command line is built by plain string interpolation:
//!
//! - Istio 1.10 (`tools/packaging/common/istio-start.sh` at tag 1.10.0),
//!   line 132: `exec su -s /bin/bash -c "INSTANCE_IP=${ISTIO_SVC_IP}
//!   POD_NAME=${POD_NAME} POD_NAMESPACE=${NS} exec
//!   ${ISTIO_BIN_BASE}/pilot-agent proxy ${ISTIO_AGENT_FLAGS_ARRAY[*]} 2>
//!   ${ISTIO_LOG_DIR}/istio.err.log > ${ISTIO_LOG_DIR}/istio.log" ${EXEC_USER}`
//! - current Istio (same path at master), line 135: the same string run by
//!   `exec sudo -E -u "${EXEC_USER}" -s /bin/bash -c "..."` with `2>>`/`>>`.
//!
//! `NS` is `${ISTIO_NAMESPACE:-default}` (1.10 line 45, master line 41);
//! `ISTIO_AGENT_FLAGS_ARRAY` is `ISTIO_AGENT_FLAGS` split on spaces by
//! `IFS=' ' read -r -a` (1.10 line 117, master line 114) and joined again by
//! `[*]`. The bash behind `-c` parses the whole string again, so `;`, `$( )`,
//! backquotes, redirections, quotes and globs in any of these values run or
//! change commands as root (the unit starts the script as root).
//!
//! So each of these variables is checked as data of its own type, from an
//! allow-list of characters: anything else is `env.shell_unsafe`, an error no
//! flag turns off. The loader and shell variables below are exported by the
//! same `set -a` into every process the script runs as root (`hostname`,
//! `pilot-agent`, the inner bash): they are `env.unsafe_key` errors unless the
//! operator names them with `--allow-env`. So is an `EXEC_USER` other than
//! istio-proxy (`env.exec_user`): the agent would run as that user, and the
//! capture rules exempt only istio-proxy's traffic.

use std::net::IpAddr;

use super::Options;
use crate::bundle::{CLUSTER_ENV, ClusterEnv};
use crate::layout;
use crate::report::{Finding, Severity};

/// The type a shell-pasted value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An IPv4 or IPv6 address.
    Ip,
    /// A DNS-1123 label: a Kubernetes namespace.
    DnsLabel,
    /// A host name (labels of letters, digits, `-`, separated by dots).
    HostName,
    /// A file system path (absolute, or relative as master's defaults are).
    Path,
    /// Space-separated command-line flags.
    FlagList,
    /// A user name as `useradd` accepts it.
    UserName,
}

/// One variable that reaches the shell command line.
#[derive(Debug, Clone, Copy)]
pub struct ShellVar {
    pub key: &'static str,
    pub kind: Kind,
    /// Where the start script pastes it (for the message).
    pub used: &'static str,
}

/// Every cluster.env variable the start script (1.10.0 and master) pastes
/// into the `bash -c`/`su -c` string, line numbers as in the module doc.
pub const SHELL_VARS: &[ShellVar] = &[
    ShellVar {
        key: "ISTIO_SVC_IP",
        kind: Kind::Ip,
        used: "`INSTANCE_IP=${ISTIO_SVC_IP}` in the agent's bash -c line (1.10 l.132, master l.135)",
    },
    ShellVar {
        key: "POD_NAME",
        kind: Kind::HostName,
        used: "`POD_NAME=${POD_NAME}` in the agent's bash -c line (1.10 l.132, master l.135)",
    },
    ShellVar {
        key: "ISTIO_NAMESPACE",
        kind: Kind::DnsLabel,
        used: "`POD_NAMESPACE=${NS}` in the agent's bash -c line (NS: 1.10 l.45, master \
               l.41; pasted at 1.10 l.132, master l.135)",
    },
    ShellVar {
        key: "ISTIO_BIN_BASE",
        kind: Kind::Path,
        used: "`exec ${ISTIO_BIN_BASE}/pilot-agent` in the agent's bash -c line (1.10 l.132, \
               master l.135)",
    },
    ShellVar {
        key: "ISTIO_LOG_DIR",
        kind: Kind::Path,
        used: "`> ${ISTIO_LOG_DIR}/istio.log` in the agent's bash -c line (1.10 l.132, \
               master l.135)",
    },
    ShellVar {
        key: "ISTIO_AGENT_FLAGS",
        kind: Kind::FlagList,
        used: "`${ISTIO_AGENT_FLAGS_ARRAY[*]}` in the agent's bash -c line (split at 1.10 \
               l.117, master l.114; pasted at 1.10 l.132, master l.135)",
    },
    ShellVar {
        key: "EXEC_USER",
        kind: Kind::UserName,
        used: "`su ... ${EXEC_USER}` unquoted (1.10 l.132, and `[ ${EXEC_USER} == ...]` \
               l.125), `sudo -u \"${EXEC_USER}\"` (master l.135)",
    },
];

/// Variables the start script pastes into the YAML of `PROXY_CONFIG` (1.10
/// l.119-123; master l.116-123: `serviceCluster: $SVC`,
/// `controlPlaneAuthPolicy: ${CONTROL_PLANE_AUTH_POLICY}`, `discoveryAddress:
/// istiod.${ISTIO_SYSTEM_NAMESPACE}.svc:${ISTIO_PILOT_PORT}`): a newline there
/// would add proxy config keys, so they are typed too (`env.invalid_value`).
pub const YAML_VARS: &[(&str, YamlKind)] = &[
    ("ISTIO_SERVICE", YamlKind::HostName),
    ("ISTIO_SYSTEM_NAMESPACE", YamlKind::DnsLabel),
    ("ISTIO_PILOT_PORT", YamlKind::Port),
    ("ISTIO_CP_AUTH", YamlKind::AuthPolicy),
];

/// The type of a [`YAML_VARS`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlKind {
    HostName,
    DnsLabel,
    Port,
    /// `MUTUAL_TLS` or `NONE` (meshconfig AuthenticationPolicy).
    AuthPolicy,
}

fn yaml_type_error(kind: YamlKind, v: &str) -> Option<&'static str> {
    let ok = match kind {
        YamlKind::HostName => v.chars().all(word_char) && type_error(Kind::HostName, v).is_none(),
        YamlKind::DnsLabel => dns_label(v),
        YamlKind::Port => v.parse::<u16>().is_ok_and(|p| p > 0),
        YamlKind::AuthPolicy => matches!(v, "MUTUAL_TLS" | "NONE"),
    };
    (!ok).then_some(match kind {
        YamlKind::HostName => "not a service host name (letters, digits, `-`, dots)",
        YamlKind::DnsLabel => "not a namespace name (DNS-1123 label: a-z, 0-9, `-`)",
        YamlKind::Port => "not a port (1-65535)",
        YamlKind::AuthPolicy => "neither MUTUAL_TLS nor NONE",
    })
}

/// Exact names of shell and loader variables that must not come from a
/// bundle: each changes what the root shells and programs of the start
/// script run (BASH_ENV and ENV: a file every non-interactive bash/sh
/// sources; PS4 is expanded under xtrace; USER decides whether master's
/// start script runs the agent as root directly, line 129).
pub const UNSAFE_KEYS: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "PATH",
    "IFS",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "CDPATH",
    "GLOBIGNORE",
    "BASH_XTRACEFD",
    "POSIXLY_CORRECT",
    "HOME",
    "USER",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCPATH",
    "NLSPATH",
    "MALLOC_CONF",
    "SUDO_ASKPASS",
    "SUDO_EDITOR",
];

/// Prefixes of the same: the dynamic loader (`LD_PRELOAD`, `LD_LIBRARY_PATH`,
/// `LD_AUDIT`, ...), exported bash functions.
pub const UNSAFE_PREFIXES: &[&str] = &["LD_", "BASH_FUNC_"];

/// True for a loader or shell variable (see [`UNSAFE_KEYS`]).
pub fn is_unsafe_key(key: &str) -> bool {
    UNSAFE_KEYS.contains(&key) || UNSAFE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Characters that bash -c reads as plain word characters in every position:
/// no quoting, expansion, globbing, redirection, separator or comment.
fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '-' | '_' | '.' | ',' | ':' | '=' | '/' | '@' | '+' | '%')
}

/// The first character of `v` that is not plain data for `kind`.
pub fn unsafe_char(kind: Kind, v: &str) -> Option<char> {
    v.chars()
        .find(|&c| !(word_char(c) || (kind == Kind::FlagList && c == ' ')))
}

fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `v` (already free of unsafe characters) is of type `kind`.
pub fn type_error(kind: Kind, v: &str) -> Option<String> {
    let ok = match kind {
        Kind::Ip => v.parse::<IpAddr>().is_ok(),
        Kind::DnsLabel => dns_label(v),
        Kind::HostName => {
            v.len() <= 253
                && v.split('.').all(|l| {
                    (1..=63).contains(&l.len())
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                })
        }
        // Word characters only (checked before); `-` first would read as an
        // option, `=` or `:` is no path a script means.
        Kind::Path => !v.starts_with('-') && !v.contains(['=', ',', ':', '@', '%', '+']),
        // Each word a flag or a flag's value; nothing else is checked: the
        // agent's own parser judges the flags.
        Kind::FlagList => v.split(' ').filter(|w| !w.is_empty()).count() <= 64,
        Kind::UserName => {
            (1..=32).contains(&v.len())
                && !v.starts_with('-')
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
    };
    if ok {
        return None;
    }
    Some(
        match kind {
            Kind::Ip => "not an IP address",
            Kind::DnsLabel => "not a namespace name (DNS-1123 label: a-z, 0-9, `-`)",
            Kind::HostName => "not a host name (letters, digits, `-`, dots)",
            Kind::Path => "not a plain path",
            Kind::FlagList => "more than 64 flags",
            Kind::UserName => "not a user name",
        }
        .to_string(),
    )
}

fn describe(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\t' => "a tab".into(),
        '\r' => "a carriage return".into(),
        ' ' => "a space".into(),
        c if c.is_control() => format!("control character U+{:04X}", c as u32),
        c => format!("`{c}`"),
    }
}

/// Findings for the shell-pasted values, the loader/shell variables and
/// EXEC_USER.
pub(super) fn check(env: &ClusterEnv, opts: &Options, f: &mut Vec<Finding>) {
    let allowed = |k: &str| opts.allow_env.iter().any(|a| a == k);
    for var in SHELL_VARS {
        let Some(v) = env.get(var.key) else { continue };
        // Empty: the start script falls back to its default (`:-`).
        if v.is_empty() {
            continue;
        }
        let line = env.line(var.key).unwrap_or(0);
        if let Some(c) = unsafe_char(var.kind, v) {
            f.push(Finding::error(
                "env.shell_unsafe",
                Some(CLUSTER_ENV),
                format!(
                    "line {line}: {} contains {}: Istio's istio-start.sh pastes it into a \
                     shell command run as root ({}), where it would be read as shell syntax",
                    var.key,
                    describe(c),
                    var.used
                ),
                "write the value as plain data: letters, digits and `-_.,:=/@+%` only \
                 (spaces only between ISTIO_AGENT_FLAGS); whoever wrote this bundle could \
                 otherwise run commands as root on this VM",
            ));
        } else if let Some(why) = type_error(var.kind, v) {
            f.push(Finding::error(
                "env.invalid_value",
                Some(CLUSTER_ENV),
                format!("line {line}: {}: `{v}` is {why}", var.key),
                "see the variable in Istio's istio-start.sh; remove the line to get its default",
            ));
        }
    }

    for (key, kind) in YAML_VARS {
        if let Some(v) = env.get(key).filter(|v| !v.is_empty())
            && let Some(why) = yaml_type_error(*kind, v)
        {
            f.push(Finding::error(
                "env.invalid_value",
                Some(CLUSTER_ENV),
                format!(
                    "line {}: {key}: `{}` is {why}; istio-start.sh writes it into the agent's \
                     proxy config (PROXY_CONFIG YAML)",
                    env.line(key).unwrap_or(0),
                    v.escape_debug()
                ),
                "see the variable in Istio's istio-start.sh; remove the line to get its default",
            ));
        }
    }

    if let Some(user) = env.get("EXEC_USER").filter(|u| !u.is_empty())
        && user != layout::PROXY_USER
    {
        let line = env.line("EXEC_USER").unwrap_or(0);
        let (severity, note) = if allowed("EXEC_USER") {
            (Severity::Warning, " (allowed by --allow-env EXEC_USER)")
        } else {
            (Severity::Error, "")
        };
        f.push(Finding::new(
            severity,
            "env.exec_user",
            Some(CLUSTER_ENV),
            format!(
                "line {line}: EXEC_USER={user}: Istio's istio-start.sh would run the agent and \
                 Envoy as `{user}` instead of {}, whose traffic alone the capture rules \
                 exempt{note}",
                layout::PROXY_USER
            ),
            format!(
                "remove the line (the default is {}); if another user is really meant, run \
                 again with --allow-env EXEC_USER",
                layout::PROXY_USER
            ),
        ));
    }

    let mut seen = std::collections::BTreeSet::new();
    for (key, _) in &env.entries {
        if !is_unsafe_key(key) || !seen.insert(key.as_str()) {
            continue;
        }
        let line = env.line(key).unwrap_or(0);
        let (severity, note) = if allowed(key) {
            (
                Severity::Warning,
                format!(" (allowed by --allow-env {key})"),
            )
        } else {
            (Severity::Error, String::new())
        };
        f.push(Finding::new(
            severity,
            "env.unsafe_key",
            Some(CLUSTER_ENV),
            format!(
                "line {line}: {key} is a shell or dynamic-loader variable: istio-start.sh \
                 exports every cluster.env variable (`set -a`) to the programs it runs as \
                 root{note}"
            ),
            format!(
                "remove the line; no Istio component reads {key} from cluster.env. If it is \
                 really needed, run again with --allow-env {key}"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        assert_eq!(type_error(Kind::Ip, "10.0.0.1"), None);
        assert_eq!(type_error(Kind::Ip, "fd00::1"), None);
        assert!(type_error(Kind::Ip, "10.0.0").is_some());
        assert_eq!(type_error(Kind::DnsLabel, "vm-apps"), None);
        assert!(type_error(Kind::DnsLabel, "VM").is_some());
        assert!(type_error(Kind::DnsLabel, "a.b").is_some());
        assert_eq!(type_error(Kind::HostName, "vm-1.example"), None);
        assert_eq!(type_error(Kind::Path, "./var/log/istio"), None);
        assert!(type_error(Kind::Path, "-rf").is_some());
        assert_eq!(
            type_error(
                Kind::FlagList,
                "--log_output_level=default:debug --concurrency 2"
            ),
            None
        );
        assert_eq!(type_error(Kind::UserName, "istio-proxy"), None);
        assert!(type_error(Kind::UserName, "-root").is_some());
    }

    #[test]
    fn yaml_types() {
        assert_eq!(
            yaml_type_error(YamlKind::HostName, "ratings-vm.vm-apps"),
            None
        );
        assert!(yaml_type_error(YamlKind::HostName, "x\ndiscoveryAddress: evil:15012").is_some());
        assert_eq!(yaml_type_error(YamlKind::Port, "15012"), None);
        assert!(yaml_type_error(YamlKind::Port, "0").is_some());
        assert_eq!(yaml_type_error(YamlKind::AuthPolicy, "MUTUAL_TLS"), None);
        assert!(yaml_type_error(YamlKind::DnsLabel, "istio system").is_some());
    }

    #[test]
    fn type_limits_are_exact() {
        let label = |n: usize| "a".repeat(n);
        assert_eq!(type_error(Kind::DnsLabel, &label(63)), None);
        for bad in [label(64), String::new(), "-a".into(), "a-".into()] {
            assert!(type_error(Kind::DnsLabel, &bad).is_some(), "{bad:?}");
        }
        assert_eq!(type_error(Kind::DnsLabel, "a1-b"), None);
        // 4 labels of 63 and a dot between: 255; trim to 253 and 254.
        let long = [label(63), label(63), label(63), label(63)].join(".");
        assert_eq!(type_error(Kind::HostName, &long[..253]), None);
        assert!(type_error(Kind::HostName, &long[..254]).is_some());
        assert_eq!(
            type_error(Kind::HostName, &format!("{}.B-1", label(63))),
            None
        );
        for bad in [
            label(64),
            "a..b".into(),
            "-a.b".into(),
            "a.-b".into(),
            "a_b".into(),
        ] {
            assert!(type_error(Kind::HostName, &bad).is_some(), "{bad:?}");
        }
        assert_eq!(type_error(Kind::UserName, &label(32)), None);
        assert_eq!(type_error(Kind::UserName, "a_b.c-D1"), None);
        for bad in [label(33), String::new(), "a/b".into()] {
            assert!(type_error(Kind::UserName, &bad).is_some(), "{bad:?}");
        }
        let flags = |n: usize| vec!["-v"; n].join("  ");
        assert_eq!(type_error(Kind::FlagList, &flags(64)), None);
        assert!(type_error(Kind::FlagList, &flags(65)).is_some());
        assert_eq!(type_error(Kind::Path, "/usr/local/bin"), None);
        for bad in ["a=b", "a,b", "a:b", "a@b", "a%b", "a+b"] {
            assert!(type_error(Kind::Path, bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn only_flag_lists_may_hold_spaces() {
        assert_eq!(unsafe_char(Kind::FlagList, "--a 1 --b=x,y"), None);
        assert_eq!(unsafe_char(Kind::Path, "/a b"), Some(' '));
        assert_eq!(unsafe_char(Kind::FlagList, "--a\t1"), Some('\t'));
        assert_eq!(unsafe_char(Kind::HostName, "a-_.,:=/@+%Z9"), None);
        for c in [
            '$', '`', ';', '&', '|', '<', '>', '(', ')', '*', '?', '[', '\'', '"', '\\', '#', '~',
            '!', '{',
        ] {
            assert_eq!(
                unsafe_char(Kind::FlagList, &format!("a{c}")),
                Some(c),
                "{c}"
            );
        }
    }

    #[test]
    fn unsafe_characters_are_named() {
        assert_eq!(describe('\n'), "a newline");
        assert_eq!(describe('\t'), "a tab");
        assert_eq!(describe('\r'), "a carriage return");
        assert_eq!(describe(' '), "a space");
        assert_eq!(describe('\u{1b}'), "control character U+001B");
        assert_eq!(describe('$'), "`$`");
    }

    #[test]
    fn yaml_limits() {
        assert_eq!(yaml_type_error(YamlKind::Port, "1"), None);
        assert_eq!(yaml_type_error(YamlKind::Port, "65535"), None);
        assert!(yaml_type_error(YamlKind::Port, "65536").is_some());
        assert_eq!(yaml_type_error(YamlKind::AuthPolicy, "NONE"), None);
        assert!(yaml_type_error(YamlKind::AuthPolicy, "none").is_some());
        assert_eq!(yaml_type_error(YamlKind::DnsLabel, "istio-system"), None);
        assert!(yaml_type_error(YamlKind::HostName, "a_b").is_some());
        assert!(yaml_type_error(YamlKind::HostName, "a b").is_some());
    }

    fn run(text: &str, allow: &[&str]) -> Vec<Finding> {
        let env = ClusterEnv::parse(text.as_bytes()).unwrap();
        let opts = Options {
            allow_env: allow.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let mut f = Vec::new();
        check(&env, &opts, &mut f);
        f
    }

    fn codes(f: &[Finding]) -> Vec<(&str, Severity)> {
        f.iter().map(|f| (f.code.as_str(), f.severity)).collect()
    }

    #[test]
    fn findings_per_value() {
        assert!(
            run(
                "ISTIO_SVC_IP=''\nEXEC_USER=''\nEXEC_USER=istio-proxy\n",
                &[]
            )
            .is_empty()
        );
        let f = run("A=1\nPOD_NAME='a;b'\n", &[]);
        assert_eq!(codes(&f), [("env.shell_unsafe", Severity::Error)]);
        assert!(
            f[0].message.starts_with("line 2: POD_NAME contains `;`"),
            "{}",
            f[0].message
        );
        let f = run("ISTIO_SVC_IP=10.0.0\n", &[]);
        assert_eq!(codes(&f), [("env.invalid_value", Severity::Error)]);
        assert!(
            f[0].message.starts_with("line 1: ISTIO_SVC_IP: `10.0.0`"),
            "{}",
            f[0].message
        );
        let f = run("\nISTIO_PILOT_PORT=0\nISTIO_CP_AUTH=''\n", &[]);
        assert_eq!(codes(&f), [("env.invalid_value", Severity::Error)]);
        assert!(
            f[0].message.starts_with("line 2: ISTIO_PILOT_PORT"),
            "{}",
            f[0].message
        );
        let f = run("EXEC_USER=root\n", &[]);
        assert_eq!(codes(&f), [("env.exec_user", Severity::Error)]);
        let f = run("EXEC_USER=root\n", &["EXEC_USER"]);
        assert_eq!(codes(&f), [("env.exec_user", Severity::Warning)]);
        // One finding per unsafe key, at the line that wins.
        let f = run("LD_PRELOAD=a\nX=1\nLD_PRELOAD=b\nPATH=/x\n", &["PATH"]);
        assert_eq!(
            codes(&f),
            [
                ("env.unsafe_key", Severity::Error),
                ("env.unsafe_key", Severity::Warning)
            ]
        );
        assert!(
            f[0].message.starts_with("line 3: LD_PRELOAD"),
            "{}",
            f[0].message
        );
        assert!(
            f[1].message.contains("allowed by --allow-env PATH"),
            "{}",
            f[1].message
        );
    }

    #[test]
    fn unsafe_keys() {
        for k in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "PATH",
            "IFS",
            "ENV",
        ] {
            assert!(is_unsafe_key(k), "{k}");
        }
        for k in ["ISTIO_META_X", "PATHS", "ENVOY_PORT"] {
            assert!(!is_unsafe_key(k), "{k}");
        }
    }
}
