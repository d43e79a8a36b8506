//! cluster.env as bash reads it.

use std::collections::BTreeMap;

/// Variables in file order; a later assignment wins, as in bash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterEnv {
    pub entries: Vec<(String, String)>,
}

impl ClusterEnv {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.entries.iter().cloned().collect()
    }
}
