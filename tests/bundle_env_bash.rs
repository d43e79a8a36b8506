//! cluster.env is read exactly as bash (which istio-start.sh uses) reads it:
//! differential tests against a real bash.

use std::process::Command;

use istio_vm::bundle::ClusterEnv;
use proptest::prelude::*;

/// What bash assigns to each of `keys` after `set -a; . FILE`.
fn bash_values(text: &str, keys: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.env");
    std::fs::write(&file, text).unwrap();
    let mut script = String::from("set -a; . \"$1\" || exit 9; set +a;");
    for k in keys {
        script.push_str(&format!(" printf '%s\\0' \"${k}\";"));
    }
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script, "bash"])
        .arg(&file)
        .env_clear()
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "bash refused {text:?}");
    let mut vals: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    vals.pop();
    vals
}

fn agree(text: &str) {
    let env = ClusterEnv::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let map = env.to_map();
    let keys: Vec<String> = map.keys().cloned().collect();
    let ours: Vec<String> = map.values().cloned().collect();
    assert_eq!(bash_values(text, &keys), ours, "{text:?}");
}

#[test]
fn accepted_forms_match_bash() {
    for text in [
        "ISTIO_INBOUND_PORTS='*'\nISTIO_META_MESH_ID=''\n",
        "A='it'\"'\"'s'\n",
        "export A=1 B=\"two words\"\n",
        "  # comment\n\nA=a#b # trailing comment\n",
        "A=\"q\\\"\\$\\\\\\n\\a\"\n",
        "A=a\\ b\\'c\n",
        "A='multi\nline'\nB=2\n",
        "A=1\\\n2\n",
        "export A\nA=\n",
        "A=*\nB=?\nC=[x]\nD={a,b}\n",
        "A=x=y:z,w@%+./-\n",
        "A=1\nA=2\n",
        "\tA=tab\t# c\n",
        "A='{\"app\":\"x\",\"class\":\"vm\"}'\n",
        "A=\"\"\"\"''\n",
        "A='a''b'\"c\"d\n",
        "A=café\n",
        "export=1\n",
        "A=#\n",
        "A=1 B=2 C=3\n",
        "A='\\'\n",
        "A=\"'\"\n",
    ] {
        agree(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever we write with Istio's quoting, bash reads back unchanged.
    #[test]
    fn rendered_values_read_back_in_bash(map in proptest::collection::btree_map(
        // Prefixed: bash gives `_`, `RANDOM`, `UID`... special meanings.
        "X_[A-Z0-9_]{0,10}",
        "[^\u{0}]{0,20}",
        1..6,
    )) {
        let env = ClusterEnv {
            lines: vec![0; map.len()],
            entries: map.clone().into_iter().collect(),
        };
        let text = env.render();
        let keys: Vec<String> = map.keys().cloned().collect();
        let vals: Vec<String> = map.values().cloned().collect();
        prop_assert_eq!(bash_values(&text, &keys), vals);
    }
}
