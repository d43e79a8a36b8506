//! The rule model: Istio's capture rules as data, in the order
//! istio-iptables emits them, for either backend (the generator is
//! [`super::generate`]).
//!
//! Istio reference (istio/istio): `tools/istio-iptables/pkg/capture/run.go`
//! (`Run`, `SetupDNSRedir`, `handleInboundIpv6Rules` …) and the nftables twin
//! `tools/istio-nftables/pkg/capture/run.go`. The two differ in a few places
//! (DNS jumps, drop-invalid, owner-group spelling); `Backend` selects which.

pub use super::generate::generate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Mangle,
    Nat,
    Raw,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }
    pub const ALL: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    Redirect,
    InRedirect,
    IstioOutput,
    OutputDns,
    Divert,
    Tproxy,
    Drop,
}

impl Chain {
    pub fn builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }
    pub fn iptables(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::Inbound => "ISTIO_INBOUND",
            Chain::Redirect => "ISTIO_REDIRECT",
            Chain::InRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::OutputDns => "ISTIO_OUTPUT_DNS",
            Chain::Divert => "ISTIO_DIVERT",
            Chain::Tproxy => "ISTIO_TPROXY",
            Chain::Drop => "ISTIO_DROP",
        }
    }
    pub fn nft(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
            Chain::Inbound => "istio-inbound",
            Chain::Redirect => "istio-redirect",
            Chain::InRedirect => "istio-in-redirect",
            Chain::IstioOutput => "istio-output",
            Chain::OutputDns => "istio-output-dns",
            Chain::Divert => "istio-divert",
            Chain::Tproxy => "istio-tproxy",
            Chain::Drop => "istio-drop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One match of a rule. Address matches take the family of their rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    InIface(String),
    OutIface(String),
    Src {
        cidr: String,
        neg: bool,
    },
    Dst {
        cidr: String,
        neg: bool,
    },
    Proto(Proto),
    Dport {
        proto: Proto,
        port: String,
        neg: bool,
    },
    Sport {
        proto: Proto,
        port: String,
    },
    /// `-m multiport ! --dports a,b`.
    DportsNot {
        proto: Proto,
        ports: Vec<String>,
    },
    Uid {
        id: String,
        neg: bool,
    },
    Gid {
        id: String,
        neg: bool,
    },
    /// Several negated gid owners in one rule (owner-group include list).
    GidsNot(Vec<String>),
    CtState(&'static [&'static str]),
    Mark {
        mark: String,
        neg: bool,
    },
    Connmark(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Jump(Chain),
    Return,
    Accept,
    Drop,
    /// REDIRECT `--to-ports`; `dns_udp` keeps Istio's `--to-port` spelling.
    Redirect {
        port: String,
        dns_udp: bool,
    },
    Tproxy {
        port: String,
        mark: String,
    },
    SetMark(String),
    ConnmarkSave,
    ConnmarkRestore,
    CtZone(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pos {
    Append,
    /// 1-based, as `iptables -I CHAIN N`.
    Insert(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: Chain,
    pub pos: Pos,
    /// None: the rule has no address match and applies to both families.
    pub family: Option<Family>,
    pub matches: Vec<Match>,
    pub target: Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// The whole rule set in emission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub ipv6: bool,
}

impl RuleSet {
    /// Rules of one iptables family, in emission order.
    pub fn family(&self, f: Family) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |r| r.family.is_none() || r.family == Some(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAINS: [Chain; 10] = [
        Chain::Prerouting,
        Chain::Output,
        Chain::Inbound,
        Chain::Redirect,
        Chain::InRedirect,
        Chain::IstioOutput,
        Chain::OutputDns,
        Chain::Divert,
        Chain::Tproxy,
        Chain::Drop,
    ];

    #[test]
    fn names_are_the_kernels_and_istios() {
        // Kernel table and protocol names.
        assert_eq!(Table::ALL.map(Table::name), ["mangle", "nat", "raw"]);
        assert_eq!([Proto::Tcp.name(), Proto::Udp.name()], ["tcp", "udp"]);
        // Chain names as Istio creates them, so that rules Istio left are
        // recognised: tools/istio-iptables/pkg/constants/constants.go and
        // tools/istio-nftables/pkg/constants/constants.go (1.29.6).
        assert_eq!(
            CHAINS.map(Chain::iptables),
            [
                "PREROUTING",
                "OUTPUT",
                "ISTIO_INBOUND",
                "ISTIO_REDIRECT",
                "ISTIO_IN_REDIRECT",
                "ISTIO_OUTPUT",
                "ISTIO_OUTPUT_DNS",
                "ISTIO_DIVERT",
                "ISTIO_TPROXY",
                "ISTIO_DROP",
            ]
        );
        assert_eq!(
            CHAINS.map(Chain::nft),
            [
                "prerouting",
                "output",
                "istio-inbound",
                "istio-redirect",
                "istio-in-redirect",
                "istio-output",
                "istio-output-dns",
                "istio-divert",
                "istio-tproxy",
                "istio-drop",
            ]
        );
    }

    #[test]
    fn only_prerouting_and_output_are_builtin() {
        let builtin: Vec<Chain> = CHAINS.into_iter().filter(|c| c.builtin()).collect();
        assert_eq!(builtin, [Chain::Prerouting, Chain::Output]);
    }

    #[test]
    fn a_family_gets_its_own_and_the_familyless_rules_in_order() {
        let r = |family, port: &str| Rule {
            table: Table::Nat,
            chain: Chain::IstioOutput,
            pos: Pos::Append,
            family,
            matches: vec![Match::Sport {
                proto: Proto::Tcp,
                port: port.into(),
            }],
            target: Target::Return,
        };
        let set = RuleSet {
            rules: vec![
                r(Some(Family::V6), "1"),
                r(None, "2"),
                r(Some(Family::V4), "3"),
                r(None, "4"),
            ],
            ipv6: true,
        };
        let v4: Vec<&Rule> = set.family(Family::V4).collect();
        assert_eq!(v4, [&set.rules[1], &set.rules[2], &set.rules[3]]);
        let v6: Vec<&Rule> = set.family(Family::V6).collect();
        assert_eq!(v6, [&set.rules[0], &set.rules[1], &set.rules[3]]);
    }
}
