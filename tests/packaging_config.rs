//! `packaging/config.toml` is installed as the conffile
//! `/etc/istio-vm/config.toml`: every key commented out, each showing its
//! real default, and no key of `src/config.rs` missing.

use std::collections::BTreeSet;

use istio_vm::config::Config;

fn shipped() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/config.toml");
    std::fs::read_to_string(path).expect("reading packaging/config.toml")
}

/// The commented `#key = value` lines, uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| {
            l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c == '_' || c.is_ascii_lowercase())
            })
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn keys(toml_text: &str) -> BTreeSet<String> {
    toml_text
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn shipped_file_changes_nothing() {
    let mut c = Config::default();
    c.apply_file(&shipped()).expect("shipped config parses");
    assert_eq!(c, Config::default());
    assert!(
        shipped()
            .lines()
            .all(|l| l.is_empty() || l.starts_with('#')),
        "every line of the shipped config must be a comment"
    );
}

#[test]
fn commented_values_are_the_defaults() {
    let active = uncommented(&shipped());
    let mut c = Config::default();
    // deny_unknown_fields: a misspelled key in the template fails here.
    c.apply_file(&active)
        .unwrap_or_else(|e| panic!("uncommented template is invalid: {e:#}\n{active}"));
    assert_eq!(c, Config::default(), "a commented value is not the default");
}

#[test]
fn every_config_key_is_documented() {
    // The file keys are the field names of `Config` (one struct per layer,
    // same names); its Debug output lists them, so a key added to
    // src/config.rs without a line here fails this test.
    let debug = format!("{:?}", Config::default());
    let inner = debug
        .split_once('{')
        .and_then(|(_, r)| r.rsplit_once('}'))
        .map(|(i, _)| i)
        .expect("Config is a struct");
    let mut fields = BTreeSet::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for ch in inner.chars() {
        match ch {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            ',' if depth == 0 => {
                fields.insert(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    fields.insert(current);
    let fields: BTreeSet<String> = fields
        .iter()
        .filter_map(|f| f.split_once(':').map(|(k, _)| k.trim().to_string()))
        .collect();
    assert!(fields.contains("backend"), "parsed {fields:?} from {debug}");
    assert_eq!(keys(&uncommented(&shipped())), fields);
}
