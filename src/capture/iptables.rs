//! iptables: the `iptables-restore --noflush` renderer (Istio's own layout,
//! `tools/istio-iptables/pkg/builder/iptables_builder_impl.go`), a reader of
//! `iptables-save` / restore text, and removal by state.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Chain, Family, Match, Pos, Rule, RuleSet, Table, Target};

fn render_match(m: &Match, out: &mut Vec<String>) {
    let mut push = |s: &str| out.extend(s.split(' ').map(str::to_string));
    match m {
        Match::InIface(i) => push(&format!("-i {i}")),
        Match::OutIface(i) => push(&format!("-o {i}")),
        Match::Src { cidr, neg } => push(&format!("{}-s {cidr}", bang(*neg))),
        Match::Dst { cidr, neg } => push(&format!("{}-d {cidr}", bang(*neg))),
        Match::Proto(p) => push(&format!("-p {}", p.name())),
        Match::Dport { port, neg, .. } => push(&format!("{}--dport {port}", bang(*neg))),
        Match::Sport { port, .. } => push(&format!("--sport {port}")),
        Match::DportsNot { ports, .. } => {
            push(&format!("-m multiport ! --dports {}", ports.join(",")))
        }
        Match::Uid { id, neg } => push(&format!("-m owner {}--uid-owner {id}", bang(*neg))),
        Match::Gid { id, neg } => push(&format!("-m owner {}--gid-owner {id}", bang(*neg))),
        Match::GidsNot(ids) => {
            for id in ids {
                push(&format!("-m owner ! --gid-owner {id}"));
            }
        }
        Match::CtState(s) => push(&format!("-m conntrack --ctstate {}", s.join(","))),
        Match::Mark { mark, neg } => push(&format!("-m mark {}--mark {mark}", bang(*neg))),
        Match::Connmark(m) => push(&format!("-m connmark --mark {m}")),
    }
}

fn bang(neg: bool) -> &'static str {
    if neg { "! " } else { "" }
}

fn render_target(t: &Target) -> String {
    match t {
        Target::Jump(c) => format!("-j {}", c.iptables()),
        Target::Return => "-j RETURN".into(),
        Target::Accept => "-j ACCEPT".into(),
        Target::Drop => "-j DROP".into(),
        Target::Redirect { port, dns_udp } => {
            // Istio spells the UDP DNS redirect `--to-port`; both are accepted.
            let opt = if *dns_udp { "--to-port" } else { "--to-ports" };
            format!("-j REDIRECT {opt} {port}")
        }
        Target::Tproxy { port, mark } => {
            format!("-j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {port}")
        }
        Target::SetMark(m) => format!("-j MARK --set-mark {m}"),
        Target::ConnmarkSave => "-j CONNMARK --save-mark".into(),
        Target::ConnmarkRestore => "-j CONNMARK --restore-mark".into(),
        Target::CtZone(z) => format!("-j CT --zone {z}"),
    }
}

/// The rule's spec after `-A CHAIN` (matches then target).
pub fn rule_spec(r: &Rule) -> String {
    let mut parts = Vec::new();
    for m in &r.matches {
        render_match(m, &mut parts);
    }
    parts.push(render_target(&r.target));
    parts.join(" ")
}

/// `iptables-restore --noflush` input for one family, or None when the
/// family has no rules. Tables in alphabetical order; `-N` for every Istio
/// chain used, in order of first use; rules in emission order.
pub fn render_restore(rs: &RuleSet, family: Family) -> Option<String> {
    if family == Family::V6 && !rs.ipv6 {
        return None;
    }
    let mut out = String::new();
    for table in Table::ALL {
        let rules: Vec<&Rule> = rs.family(family).filter(|r| r.table == table).collect();
        if rules.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n", table.name()));
        let mut declared: Vec<Chain> = Vec::new();
        let mut declare = |c: Chain| {
            if !c.builtin() && !declared.contains(&c) {
                declared.push(c);
            }
        };
        for r in &rules {
            declare(r.chain);
        }
        for r in &rules {
            if let Target::Jump(c) = r.target {
                declare(c);
            }
        }
        for c in &declared {
            out.push_str(&format!("-N {}\n", c.iptables()));
        }
        for r in &rules {
            match r.pos {
                Pos::Append => out.push_str(&format!("-A {} ", r.chain.iptables())),
                Pos::Insert(n) => out.push_str(&format!("-I {} {n} ", r.chain.iptables())),
            }
            out.push_str(&rule_spec(r));
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    Some(out)
}

pub const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

pub fn is_istio_chain(name: &str) -> bool {
    name.starts_with("ISTIO_")
}

/// Netfilter state of one family as text tables: table -> chain -> rules
/// (each rule the spec after `-A CHAIN`), plus which chains exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub tables: BTreeMap<String, TableState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// Every chain declared (`:CHAIN` or `-N`), with its ordered rules.
    pub chains: BTreeMap<String, Vec<String>>,
}

impl Tables {
    /// Read `iptables-save` output or restore input, replaying `-N`, `-A`,
    /// `-I chain N` in sequence (so inserts land where the kernel puts them).
    pub fn parse(text: &str) -> Result<Tables, String> {
        let mut t = Tables::default();
        let mut cur: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let err = |m: &str| format!("line {}: {m}: {line}", i + 1);
            if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                let name = name.trim().to_string();
                t.tables.entry(name.clone()).or_default();
                cur = Some(name);
                continue;
            }
            let table = cur
                .as_ref()
                .and_then(|c| t.tables.get_mut(c))
                .ok_or_else(|| err("rule outside a table"))?;
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or("").to_string();
                table.chains.entry(name).or_default();
                continue;
            }
            let mut words = line.splitn(3, ' ');
            let op = words.next().unwrap_or("");
            let chain = words.next().ok_or_else(|| err("no chain"))?.to_string();
            let rest = words.next().unwrap_or("").trim();
            match op {
                "-N" => {
                    table.chains.entry(chain).or_default();
                }
                "-A" => table
                    .chains
                    .entry(chain)
                    .or_default()
                    .push(rest.to_string()),
                "-I" => {
                    let (pos, spec) = match rest.split_once(' ') {
                        Some((n, s)) if n.parse::<usize>().is_ok() => {
                            (n.parse::<usize>().unwrap_or(1), s)
                        }
                        _ => (1, rest),
                    };
                    let rules = table.chains.entry(chain).or_default();
                    let idx = pos.saturating_sub(1).min(rules.len());
                    rules.insert(idx, spec.to_string());
                }
                _ => return Err(err("unknown operation")),
            }
        }
        Ok(t)
    }

    /// The part of the state that is Istio's: every `ISTIO_*` chain with its
    /// rules, and, of the built-in chains, the rules jumping to `ISTIO_*` or
    /// equal to one of `also` (table, chain, spec).
    pub fn istio_part(&self, also: &BTreeSet<(String, String, String)>) -> Tables {
        let mut out = Tables::default();
        for (tname, ts) in &self.tables {
            let mut part = TableState::default();
            for (cname, rules) in &ts.chains {
                if is_istio_chain(cname) {
                    part.chains.insert(cname.clone(), rules.clone());
                } else {
                    let mine: Vec<String> = rules
                        .iter()
                        .filter(|spec| {
                            jump_target(spec).is_some_and(is_istio_chain)
                                || also.contains(&(tname.clone(), cname.clone(), (*spec).clone()))
                        })
                        .cloned()
                        .collect();
                    if !mine.is_empty() {
                        part.chains.insert(cname.clone(), mine);
                    }
                }
            }
            if !part.chains.is_empty() {
                out.tables.insert(tname.clone(), part);
            }
        }
        out
    }

    /// Every (table, built-in chain, spec) of this state; used to recognise
    /// Istio's own rules in built-in chains that do not jump to `ISTIO_*`
    /// (exclude-interface RETURNs, TPROXY marks).
    pub fn builtin_rules(&self) -> BTreeSet<(String, String, String)> {
        let mut s = BTreeSet::new();
        for (t, ts) in &self.tables {
            for (c, rules) in &ts.chains {
                if !is_istio_chain(c) {
                    for r in rules {
                        s.insert((t.clone(), c.clone(), r.clone()));
                    }
                }
            }
        }
        s
    }

    /// The built-in-chain rules of `self` whose canonical form is one of
    /// `other`'s built-in-chain rules (in `self`'s spelling, for
    /// [`Tables::istio_part`]).
    pub fn builtin_rules_matching(&self, other: &Tables) -> BTreeSet<(String, String, String)> {
        let want: BTreeSet<(String, String, String)> = other
            .builtin_rules()
            .into_iter()
            .map(|(t, c, r)| (t, c, super::compare::canonical_rule(&r)))
            .collect();
        self.builtin_rules()
            .into_iter()
            .filter(|(t, c, r)| {
                want.contains(&(t.clone(), c.clone(), super::compare::canonical_rule(r)))
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(|t| t.chains.is_empty())
    }

    /// Number of rules and user chains: "does this backend hold anything".
    pub fn has_content(&self) -> bool {
        self.tables.values().any(|t| {
            t.chains
                .iter()
                .any(|(c, rules)| !rules.is_empty() || !BUILTIN_CHAINS.contains(&c.as_str()))
        })
    }

    /// `iptables-restore --noflush` lines that remove this Istio part:
    /// delete the built-in rules, flush then delete every `ISTIO_*` chain.
    /// Grouped per table, without `*table`/`COMMIT` (the caller frames them).
    pub fn removal_lines(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (t, ts) in &self.tables {
            let mut lines = Vec::new();
            for (c, rules) in &ts.chains {
                if !is_istio_chain(c) {
                    for r in rules {
                        lines.push(format!("-D {c} {r}"));
                    }
                }
            }
            for c in ts.chains.keys().filter(|c| is_istio_chain(c)) {
                lines.push(format!("-F {c}"));
            }
            for c in ts.chains.keys().filter(|c| is_istio_chain(c)) {
                lines.push(format!("-X {c}"));
            }
            if !lines.is_empty() {
                out.insert(t.clone(), lines);
            }
        }
        out
    }

    /// Total rule count (for reports).
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.chains.values())
            .map(Vec::len)
            .sum()
    }
}

/// `-j TARGET` of a rule spec.
pub fn jump_target(spec: &str) -> Option<&str> {
    let mut it = spec.split_whitespace();
    while let Some(w) = it.next() {
        if w == "-j" || w == "--jump" || w == "-g" || w == "--goto" {
            return it.next();
        }
    }
    None
}

/// Restore input that removes `old` and adds `new` in one transaction per
/// table (tables only in `old` get their removal only).
pub fn transaction(old: &Tables, new_restore: Option<&str>) -> String {
    let removal = old.removal_lines();
    let mut sections: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (t, lines) in removal {
        sections.entry(t).or_default().0 = lines;
    }
    let mut cur: Option<String> = None;
    for line in new_restore.unwrap_or("").lines() {
        if let Some(t) = line.strip_prefix('*') {
            cur = Some(t.trim().to_string());
            sections.entry(t.trim().to_string()).or_default();
        } else if line == "COMMIT" {
            cur = None;
        } else if let Some(t) = &cur {
            sections
                .entry(t.clone())
                .or_default()
                .1
                .push(line.to_string());
        }
    }
    let mut out = String::new();
    for (t, (rm, add)) in sections {
        out.push_str(&format!("*{t}\n"));
        for l in rm.iter().chain(add.iter()) {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Canonical form of one rule spec for comparing text that was not read
/// back from the same kernel (e.g. goldens): option groups as a multiset,
/// target last.
pub fn canonical_spec(spec: &str) -> Vec<String> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let jpos = words.iter().position(|w| *w == "-j").unwrap_or(words.len());
    let mut groups: Vec<String> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut neg = false;
    for w in &words[..jpos] {
        if *w == "!" {
            if !cur.is_empty() {
                groups.push(cur.join(" "));
                cur.clear();
            }
            neg = true;
            continue;
        }
        if w.starts_with('-') {
            if !cur.is_empty() {
                groups.push(cur.join(" "));
                cur.clear();
            }
            if neg {
                cur.push("!");
                neg = false;
            }
        }
        cur.push(w);
    }
    if !cur.is_empty() {
        groups.push(cur.join(" "));
    }
    groups.sort();
    groups.push(words[jpos..].join(" "));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::model::Proto;

    #[test]
    fn replay_puts_inserts_where_the_kernel_does() {
        let t = Tables::parse(
            "* nat\n-N X\n-I PREROUTING 1 -i eth0 -j RETURN\n-I PREROUTING 1 -i eth1 -j RETURN\n\
             -A PREROUTING -j X\n-A X -j RETURN\n-I X 1 -p tcp -j RETURN\nCOMMIT\n",
        )
        .unwrap();
        let nat = &t.tables["nat"].chains;
        assert_eq!(
            nat["PREROUTING"],
            vec!["-i eth1 -j RETURN", "-i eth0 -j RETURN", "-j X"]
        );
        assert_eq!(nat["X"], vec!["-p tcp -j RETURN", "-j RETURN"]);
    }

    #[test]
    fn istio_part_and_removal_leave_others_alone() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n\
            :ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n-A PREROUTING -j DOCKER\n\
            -A OUTPUT -j ISTIO_OUTPUT\n-A DOCKER -i docker0 -j RETURN\n\
            -A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n\
            *filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n";
        let t = Tables::parse(save).unwrap();
        let part = t.istio_part(&BTreeSet::new());
        assert_eq!(part.tables.len(), 1);
        let rm = part.removal_lines();
        assert_eq!(
            rm["nat"],
            vec![
                "-D OUTPUT -j ISTIO_OUTPUT",
                "-F ISTIO_OUTPUT",
                "-F ISTIO_REDIRECT",
                "-X ISTIO_OUTPUT",
                "-X ISTIO_REDIRECT"
            ]
        );
    }

    #[test]
    fn canonical_spec_ignores_option_order() {
        assert_eq!(
            canonical_spec("-o lo -s 127.0.0.6/32 -j RETURN"),
            canonical_spec("-s 127.0.0.6/32 -o lo -j RETURN")
        );
        assert_ne!(
            canonical_spec("! -d 1.1.1.1/32 -j RETURN"),
            canonical_spec("-d 1.1.1.1/32 -j RETURN")
        );
    }

    fn rule(table: Table, chain: Chain, pos: Pos, family: Option<Family>) -> Rule {
        Rule {
            table,
            chain,
            pos,
            family,
            matches: Vec::new(),
            target: Target::Return,
        }
    }

    /// Rules in nat (both families, one v4-only) and one v6-only mangle rule.
    fn small_rule_set(ipv6: bool) -> RuleSet {
        let mut prerouting = rule(Table::Nat, Chain::Prerouting, Pos::Append, None);
        prerouting.matches = vec![Match::Proto(Proto::Tcp)];
        prerouting.target = Target::Jump(Chain::Inbound);
        let mut ssh = rule(Table::Nat, Chain::Inbound, Pos::Append, None);
        ssh.matches = vec![Match::Dport {
            proto: Proto::Tcp,
            port: "22".into(),
            neg: false,
        }];
        let mut v4 = rule(Table::Nat, Chain::Inbound, Pos::Append, Some(Family::V4));
        v4.matches = vec![Match::Src {
            cidr: "10.0.0.0/8".into(),
            neg: true,
        }];
        v4.target = Target::Jump(Chain::InRedirect);
        let mut output = rule(Table::Nat, Chain::Output, Pos::Insert(1), None);
        output.target = Target::Jump(Chain::IstioOutput);
        let v6 = rule(
            Table::Mangle,
            Chain::Prerouting,
            Pos::Append,
            Some(Family::V6),
        );
        RuleSet {
            rules: vec![prerouting, ssh, v4, output, v6],
            ipv6,
        }
    }

    #[test]
    fn restore_declares_each_istio_chain_once_and_keeps_tables_apart() {
        // Built-in chains are never declared (`-N PREROUTING` fails the
        // whole restore); a chain both used and jumped to is declared once.
        assert_eq!(
            render_restore(&small_rule_set(true), Family::V4).unwrap(),
            "*nat\n\
             -N ISTIO_INBOUND\n\
             -N ISTIO_IN_REDIRECT\n\
             -N ISTIO_OUTPUT\n\
             -A PREROUTING -p tcp -j ISTIO_INBOUND\n\
             -A ISTIO_INBOUND --dport 22 -j RETURN\n\
             -A ISTIO_INBOUND ! -s 10.0.0.0/8 -j ISTIO_IN_REDIRECT\n\
             -I OUTPUT 1 -j ISTIO_OUTPUT\n\
             COMMIT\n"
        );
        assert_eq!(
            render_restore(&small_rule_set(true), Family::V6).unwrap(),
            "*mangle\n\
             -A PREROUTING -j RETURN\n\
             COMMIT\n\
             *nat\n\
             -N ISTIO_INBOUND\n\
             -N ISTIO_OUTPUT\n\
             -A PREROUTING -p tcp -j ISTIO_INBOUND\n\
             -A ISTIO_INBOUND --dport 22 -j RETURN\n\
             -I OUTPUT 1 -j ISTIO_OUTPUT\n\
             COMMIT\n"
        );
        assert_eq!(render_restore(&small_rule_set(false), Family::V6), None);
    }

    #[test]
    fn parse_reads_iptables_save_with_comments_and_blank_lines() {
        let save = "# Generated by iptables-save v1.8.9 (nf_tables) on Sat Dec  5 13:00:00 2026\n\
                    *nat\n\
                    :PREROUTING ACCEPT [0:0]\n\
                    \n\
                    -A PREROUTING -j RETURN\n\
                    COMMIT\n\
                    # Completed on Sat Dec  5 13:00:00 2026\n";
        let t = Tables::parse(save).unwrap();
        assert_eq!(t.tables["nat"].chains["PREROUTING"], vec!["-j RETURN"]);
        assert_eq!(t.tables.len(), 1);
    }

    #[test]
    fn insert_without_a_position_goes_first_with_its_whole_spec() {
        let t =
            Tables::parse("*nat\n-A OUTPUT -j X\n-I OUTPUT -p tcp -j RETURN\nCOMMIT\n").unwrap();
        assert_eq!(
            t.tables["nat"].chains["OUTPUT"],
            vec!["-p tcp -j RETURN", "-j X"]
        );
    }

    #[test]
    fn builtin_rules_matching_returns_own_spelling_of_the_others_builtin_rules() {
        let live = Tables::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_X - [0:0]\n\
             -A PREROUTING -s 127.0.0.6/32 -i lo -j RETURN\n\
             -A PREROUTING -j DOCKER\n-A ISTIO_X -j RETURN\nCOMMIT\n",
        )
        .unwrap();
        let desired = Tables::parse(
            "*nat\n-A PREROUTING -i lo -s 127.0.0.6 -j RETURN\n-A ISTIO_X -j RETURN\n\
             -A OUTPUT -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        let want: BTreeSet<(String, String, String)> = [(
            "nat".to_string(),
            "PREROUTING".to_string(),
            "-s 127.0.0.6/32 -i lo -j RETURN".to_string(),
        )]
        .into();
        assert_eq!(live.builtin_rules_matching(&desired), want);
    }

    #[test]
    fn empty_and_content_tell_a_fresh_kernel_from_a_used_one() {
        let fresh = Tables::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*raw\nCOMMIT\n",
        )
        .unwrap();
        assert!(Tables::default().is_empty());
        assert!(Tables::parse("*nat\nCOMMIT\n").unwrap().is_empty());
        assert!(!fresh.is_empty());
        // Empty built-in chains are what every kernel has: no content.
        assert!(!Tables::default().has_content());
        assert!(!fresh.has_content());
        let with_rule = Tables::parse("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ACCEPT\nCOMMIT\n");
        assert!(with_rule.unwrap().has_content());
        let user_chain = Tables::parse("*filter\n:INPUT ACCEPT [0:0]\n:DOCKER - [0:0]\nCOMMIT\n");
        assert!(user_chain.unwrap().has_content());
    }

    #[test]
    fn rule_count_counts_rules_of_every_chain_and_table() {
        let t = Tables::parse(
            "*nat\n:ISTIO_X - [0:0]\n-A OUTPUT -j ISTIO_X\n-A ISTIO_X -j RETURN\nCOMMIT\n\
             *mangle\n-A PREROUTING -j RETURN\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(t.rule_count(), 3);
        assert_eq!(Tables::default().rule_count(), 0);
    }

    #[test]
    fn jump_target_reads_every_spelling_of_jump_and_goto() {
        assert_eq!(jump_target("-p tcp -j ISTIO_A"), Some("ISTIO_A"));
        assert_eq!(jump_target("-p tcp --jump ISTIO_B"), Some("ISTIO_B"));
        assert_eq!(jump_target("-p tcp -g ISTIO_C"), Some("ISTIO_C"));
        assert_eq!(jump_target("-p tcp --goto ISTIO_D"), Some("ISTIO_D"));
        assert_eq!(jump_target("-p tcp --dport 22"), None);
    }

    #[test]
    fn transaction_removes_old_then_adds_new_in_one_commit_per_table() {
        let old = Tables::parse(
            "*nat\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n\
             *raw\n-A PREROUTING -j ISTIO_INBOUND\n-N ISTIO_INBOUND\nCOMMIT\n",
        )
        .unwrap();
        let new = "*mangle\n-N ISTIO_DIVERT\nCOMMIT\n\
                   *nat\n-N ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n";
        assert_eq!(
            transaction(&old, Some(new)),
            "*mangle\n-N ISTIO_DIVERT\nCOMMIT\n\
             *nat\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\n\
             -N ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n\
             *raw\n-D PREROUTING -j ISTIO_INBOUND\n-F ISTIO_INBOUND\n-X ISTIO_INBOUND\nCOMMIT\n"
        );
        assert_eq!(
            transaction(&old, None),
            "*nat\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n\
             *raw\n-D PREROUTING -j ISTIO_INBOUND\n-F ISTIO_INBOUND\n-X ISTIO_INBOUND\nCOMMIT\n"
        );
    }

    #[test]
    fn canonical_spec_groups_options_with_their_values_and_negation() {
        assert_eq!(
            canonical_spec("-p tcp --dport 80 -j RETURN"),
            vec!["--dport 80", "-p tcp", "-j RETURN"]
        );
        assert_eq!(
            canonical_spec("! -d 1.1.1.1/32 -p tcp ! --dport 22 -j REDIRECT --to-ports 15001"),
            vec![
                "! --dport 22",
                "! -d 1.1.1.1/32",
                "-p tcp",
                "-j REDIRECT --to-ports 15001"
            ]
        );
    }
}
