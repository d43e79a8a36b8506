//! docs/DESIGN.md is the contract as built: its tables of finding codes,
//! check ids, log codes and placed paths must list exactly what the code
//! has. And the README's links and first commands must work.

mod common;
#[path = "common/pinned.rs"]
mod pinned;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use istio_vm::report::{FINDING_CODES, Severity};
use istio_vm::verify::{CHECK_IDS, logs::KNOWN};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn design() -> String {
    std::fs::read_to_string(repo().join("docs/DESIGN.md")).expect("docs/DESIGN.md")
}

/// The body rows of the first table under the `## {heading}` heading, as
/// cells with surrounding backticks and spaces removed.
fn table(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .lines()
        .position(|l| l.trim() == format!("## {heading}"))
        .unwrap_or_else(|| panic!("docs/DESIGN.md has no `## {heading}` section"));
    let rows: Vec<Vec<String>> = doc
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect();
    assert!(!rows.is_empty(), "`## {heading}` has no table rows");
    rows
}

fn diff(what: &str, code: &BTreeSet<String>, doc: &BTreeSet<String>) {
    let only_code: Vec<_> = code.difference(doc).collect();
    let only_doc: Vec<_> = doc.difference(code).collect();
    assert!(
        only_code.is_empty() && only_doc.is_empty(),
        "{what}: in the code but not in docs/DESIGN.md: {only_code:?}; \
         in docs/DESIGN.md but not in the code: {only_doc:?}"
    );
}

#[test]
fn finding_codes_and_severities_match_the_code() {
    let sev = |s: Severity| match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let code: BTreeSet<String> = FINDING_CODES
        .iter()
        .map(|(c, s)| format!("{c} {}", sev(*s)))
        .collect();
    let doc: BTreeSet<String> = table(&design(), "Finding codes")
        .iter()
        .map(|r| format!("{} {}", r[0], r[1]))
        .collect();
    diff("finding codes (code severity)", &code, &doc);
}

#[test]
fn check_ids_match_the_code_in_order() {
    let doc: Vec<String> = table(&design(), "Check ids")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let code: Vec<String> = CHECK_IDS.iter().map(|s| s.to_string()).collect();
    diff(
        "check ids",
        &code.iter().cloned().collect(),
        &doc.iter().cloned().collect(),
    );
    assert_eq!(
        code, doc,
        "check ids are listed in another order than verify reports them"
    );
}

#[test]
fn log_codes_match_the_code() {
    let code: BTreeSet<String> = KNOWN.iter().map(|k| k.code.to_string()).collect();
    let doc: BTreeSet<String> = table(&design(), "Log codes")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    diff("log codes", &code, &doc);
}

#[test]
fn the_pinned_owner_mode_table_is_designs() {
    let doc: Vec<String> = table(&design(), "Where things go")
        .iter()
        .map(|r| format!("{} {} {} {}", r[0], r[1], r[2], r[3]))
        .collect();
    let pinned: Vec<String> = pinned::PINNED
        .iter()
        .map(|(p, k, o, m)| format!("{p} {} {o} {m:04o}", pinned::kind_name(*k)))
        .collect();
    assert_eq!(
        pinned, doc,
        "tests/common/pinned.rs differs from docs/DESIGN.md \"Where things go\""
    );
}

/// The target of every relative markdown link `[text](target)` in `text`.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        let target = target.split('#').next().unwrap_or("");
        let external = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !external {
            out.push(target.to_string());
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            v.push(p);
        }
    }
    v
}

#[test]
fn readme_and_docs_links_resolve_to_files_in_the_repository() {
    let mut checked = 0;
    for md in markdown_files() {
        let text = std::fs::read_to_string(&md).unwrap();
        for target in relative_links(&text) {
            let p = md.parent().unwrap().join(&target);
            assert!(
                p.exists(),
                "{}: link `{target}` resolves to nothing ({})",
                md.display(),
                p.display()
            );
            assert!(
                std::fs::canonicalize(&p).unwrap().starts_with(repo()),
                "{}: link `{target}` leaves the repository",
                md.display()
            );
            checked += 1;
        }
    }
    // README names the contract and the map as links, so there is something to check.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for must in ["docs/DESIGN.md", "docs/ARCHITECTURE.md"] {
        assert!(
            relative_links(&readme).iter().any(|l| l == must),
            "README does not link {must}"
        );
    }
    assert!(checked >= 2);
}

/// A bare mention of a markdown file in the README, like `DESIGN.md`, must
/// also be a file of the repository (README cited a DESIGN.md that was not there).
#[test]
fn readme_names_only_markdown_files_that_exist() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for word in readme.split(|c: char| c.is_whitespace() || "`()[]\"',;:".contains(c)) {
        let word = word.trim_end_matches('.');
        if word.ends_with(".md") && !word.contains("://") {
            assert!(
                repo().join(word).exists(),
                "README names {word}, which is not a file at that path in the repository"
            );
        }
    }
}

const FIRST_COMMANDS: [&str; 2] = [
    "cargo run -- install --bundle examples/bundle --root \"$(mktemp -d)\"",
    "scripts/test.sh",
];

/// README starts with exactly the two set-up commands, and CI runs the second.
#[test]
fn readme_starts_with_the_two_commands_ci_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut lines = readme.lines().filter(|l| !l.trim().is_empty());
    assert!(
        lines.next().unwrap().starts_with("# "),
        "README starts with its title"
    );
    assert_eq!(lines.next(), Some("```sh"), "then the commands' code block");
    let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
    assert_eq!(block, FIRST_COMMANDS, "README's first commands");

    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let runs: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.starts_with("set ") && !l.starts_with("cd "))
        .collect();
    assert_eq!(
        runs,
        [format!("exec {}", FIRST_COMMANDS[1])],
        ".ci/run must run README's test command and nothing else"
    );
}

/// The first command needs no root: run it as nobody into a scratch root.
#[test]
fn readme_first_command_works_without_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to nobody and needs root (CI runs as root)"
    );
    // nobody may not reach this checkout (e.g. under /root): give it a copy
    // of the binary and of examples/bundle in a directory of its own.
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    std::fs::create_dir_all(s.join("tmp")).unwrap();
    std::fs::create_dir_all(s.join("checkout/examples/bundle")).unwrap();
    for e in std::fs::read_dir(common::example_bundle()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(
            e.path(),
            s.join("checkout/examples/bundle").join(e.file_name()),
        )
        .unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_istio-vm"), s.join("istio-vm")).unwrap();
    for (p, mode) in [("", 0o755), ("tmp", 0o777), ("checkout", 0o755)] {
        std::fs::set_permissions(
            s.join(p),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
    }
    for e in std::fs::read_dir(s.join("checkout/examples/bundle")).unwrap() {
        std::fs::set_permissions(
            e.unwrap().path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    for d in ["checkout/examples", "checkout/examples/bundle"] {
        std::fs::set_permissions(
            s.join(d),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    // The command as README has it, with `cargo run --` replaced by the
    // binary cargo built for this test run.
    let bin = s.join("istio-vm");
    let cmd = FIRST_COMMANDS[0].replace("cargo run --", bin.to_str().unwrap());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg("env")
        .arg(format!("TMPDIR={}", s.join("tmp").display()))
        .args(["sh", "-c"])
        .arg(format!(
            "cd {}/checkout && {cmd} --output json",
            s.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["changed"], true, "{v:#}");
}

/// scripts/test.sh as a user who is not root re-executes itself through
/// sudo with this user's toolchain; without sudo it says what to do.
#[test]
fn test_script_uses_sudo_only_when_not_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches to nobody and needs root (CI runs as root)"
    );
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("sudo.log");
    std::fs::write(
        bin.path().join("sudo"),
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.path().join("sudo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = repo().join("scripts/test.sh");
    let as_nobody = |path: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
            .args(["env", "-i", "HOME=/nonexistent"])
            .arg(format!("PATH={path}"))
            .arg(&script)
            .arg("--extra")
            .output()
            .unwrap()
    };
    // Only the tools the script needs before it decides, and no sudo
    // unless the test puts its own first.
    let tools = tempfile::tempdir().unwrap();
    for t in ["bash", "id", "dirname", "basename", "env"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(t))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {t}"));
        std::os::unix::fs::symlink(real, tools.path().join(t)).unwrap();
    }
    std::fs::set_permissions(
        tools.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let tools = tools.path().display().to_string();
    let out = as_nobody(&format!("{}:{tools}", bin.path().display()));
    assert!(out.status.success(), "{out:?}");
    let args = std::fs::read_to_string(&log).expect("scripts/test.sh did not call sudo");
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args[0], "env", "{args:?}");
    assert!(args[1].starts_with("PATH=") && args[1].contains(bin.path().to_str().unwrap()));
    assert!(args.contains(&"CARGO_HOME=/nonexistent/.cargo"), "{args:?}");
    assert!(
        args.contains(&"RUSTUP_HOME=/nonexistent/.rustup"),
        "{args:?}"
    );
    assert_eq!(
        &args[args.len() - 2..],
        [script.to_str().unwrap(), "--extra"]
    );

    let out = as_nobody(&tools);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("as root"), "{err}");
}
