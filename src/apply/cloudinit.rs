//! cloud-init rewrites /etc/hosts from a template at every boot when
//! `manage_etc_hosts` is on; then our block must also be in the template or
//! it is gone after a reboot (cloudinit/config/cc_update_etc_hosts.py).

use anyhow::Result;

use super::Root;

/// Is `manage_etc_hosts` on after reading the documents in order (cloud.cfg,
/// then cloud.cfg.d/*.cfg sorted; later wins)? `true` and `template` render
/// the template; `localhost` edits /etc/hosts in place and keeps our block.
pub fn manage_etc_hosts<'a>(docs: impl IntoIterator<Item = &'a str>) -> bool {
    let mut on = false;
    for d in docs {
        let Ok(v) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(d) else {
            continue;
        };
        match v.get("manage_etc_hosts") {
            Some(serde_yaml_ng::Value::Bool(b)) => on = *b,
            Some(serde_yaml_ng::Value::String(s)) => {
                on = matches!(s.to_ascii_lowercase().as_str(), "true" | "template")
            }
            _ => {}
        }
    }
    on
}

/// cloud-init hosts templates under the root that need our block (absolute
/// VM paths), empty unless cloud-init manages /etc/hosts.
pub fn hosts_templates(root: &Root) -> Result<Vec<String>> {
    // Bounded reads through the root: a FIFO or a link out of the tree at
    // cloud.cfg is an error, not a hang or the host's file.
    let read = |p: &str| -> Result<Option<String>> {
        match root.stat(p)? {
            Some(s) if s.kind == crate::sysroot::Kind::Dir => Ok(None),
            _ => root.read_string(p),
        }
    };
    let list = |dir: &str, prefix: &str, suffix: &str| -> Result<Vec<String>> {
        Ok(root
            .list_dir(dir)?
            .into_iter()
            .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
            .map(|n| format!("{dir}/{n}"))
            .collect())
    };
    let mut docs = Vec::new();
    docs.extend(read("/etc/cloud/cloud.cfg")?);
    for p in list("/etc/cloud/cloud.cfg.d", "", ".cfg")? {
        docs.extend(read(&p)?);
    }
    if !manage_etc_hosts(docs.iter().map(String::as_str)) {
        return Ok(Vec::new());
    }
    list("/etc/cloud/templates", "hosts.", ".tmpl")
}

#[cfg(test)]
mod tests {
    #[test]
    fn later_documents_win() {
        use super::manage_etc_hosts as m;
        assert!(m(["manage_etc_hosts: true\n"]));
        assert!(m(["manage_etc_hosts: template\n"]));
        assert!(!m(["manage_etc_hosts: localhost\n"]));
        assert!(!m([
            "manage_etc_hosts: true\n",
            "manage_etc_hosts: false\n"
        ]));
        assert!(m(["users: []\n", "manage_etc_hosts: True\n"]));
        assert!(!m(["not: [yaml\n"]));
    }
}
