//! The man pages and shell completions shipped in the packages are generated
//! from `src/cli.rs` (the single source of the command contract) and
//! committed under `packaging/`, so that packaging needs no build step that
//! runs the binary (which a cross build could not). This test fails when the
//! committed files no longer match the CLI; regenerate them with
//!
//! ```sh
//! PACKAGING_BLESS=1 cargo test --test packaging_docs
//! ```

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use istio_vm::cli::Cli;

/// Section 8: istio-vm is a system administration tool run as root.
const MAN_SECTION: &str = "8";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every generated file, as (path relative to the repository, content).
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();

    // One page for the command and one per subcommand, like `git-commit(1)`;
    // clap_mangen's SUBCOMMANDS section refers to them as istio-vm-<sub>(8).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        let man = clap_mangen::Man::new(page).section(MAN_SECTION);
        let mut buf = Vec::new();
        man.render(&mut buf)
            .expect("rendering a man page into memory");
        out.push((Path::new("packaging/man").join(man.get_filename()), buf));
    }

    for (shell, file) in [
        (Shell::Bash, "istio-vm.bash"),
        (Shell::Zsh, "_istio-vm"),
        (Shell::Fish, "istio-vm.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "istio-vm", &mut buf);
        out.push((Path::new("packaging/completions").join(file), buf));
    }
    out
}

#[test]
fn committed_man_pages_and_completions_match_the_cli() {
    let files = generated();
    let bless = std::env::var_os("PACKAGING_BLESS").is_some();
    let mut stale = Vec::new();
    for (rel, want) in &files {
        let path = repo().join(rel);
        let have = std::fs::read(&path).ok();
        if have.as_deref() == Some(want.as_slice()) {
            continue;
        }
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, want).unwrap();
        } else {
            stale.push(rel.display().to_string());
        }
    }
    // A page for a removed subcommand must not linger in the packages.
    for dir in ["packaging/man", "packaging/completions"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let entry = entry.unwrap();
            let rel = Path::new(dir).join(entry.file_name());
            if !files.iter().any(|(p, _)| *p == rel) {
                if bless {
                    std::fs::remove_file(entry.path()).unwrap();
                } else {
                    stale.push(format!("{} (no longer generated)", rel.display()));
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with src/cli.rs: {stale:?}\n\
         regenerate with: PACKAGING_BLESS=1 cargo test --test packaging_docs"
    );
}

/// The man pages are what `man` shows: groff must format each without a
/// warning (lintian runs the same check on the package).
#[test]
fn man_pages_format_without_warnings() {
    for (rel, _) in generated()
        .iter()
        .filter(|(p, _)| p.starts_with("packaging/man"))
    {
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(repo().join(rel))
            .output()
            .expect("running groff (package groff-base)");
        assert!(out.status.success(), "groff failed on {}", rel.display());
        assert!(
            out.stderr.is_empty(),
            "groff warnings for {}:\n{}",
            rel.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every subcommand and global flag is completed by each shell's script.
#[test]
fn completions_cover_every_subcommand() {
    let cmd = Cli::command();
    let subs: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
    assert!(subs.contains(&"install") && subs.contains(&"uninstall"));
    for (rel, content) in generated()
        .iter()
        .filter(|(p, _)| p.starts_with("packaging/completions"))
    {
        let text = String::from_utf8_lossy(content);
        for sub in &subs {
            assert!(text.contains(sub), "{} lacks {sub}", rel.display());
        }
        // fish spells a long option `-l root`.
        let root_flag = if rel.extension().is_some_and(|e| e == "fish") {
            "-l root"
        } else {
            "--root"
        };
        assert!(text.contains(root_flag), "{} lacks --root", rel.display());
    }
}

/// bash itself accepts the completion script and registers the function.
#[test]
fn bash_completion_loads() {
    let script = repo().join("packaging/completions/istio-vm.bash");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && complete -p istio-vm"#)
        .arg("bash")
        .arg(&script)
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("istio-vm"));
}
