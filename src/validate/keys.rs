//! Which cluster.env names something on the VM reads, and "did you mean".

/// Every variable something on the VM reads, reference/istio-vm.md §4.6 A-D
/// (HEAD and 1.10). Free-form prefixes are handled separately.
pub const KNOWN_KEYS: &[&str] = &[
    // A. istio-start.sh
    "ISTIO_BIN_BASE",
    "ISTIO_LOG_DIR",
    "ISTIO_NAMESPACE",
    "ISTIO_SERVICE",
    "ISTIO_SYSTEM_NAMESPACE",
    "ISTIO_CP_AUTH",
    "ISTIO_SVC_IP",
    "POD_NAME",
    "ISTIO_CUSTOM_IP_TABLES",
    "EXEC_USER",
    "ISTIO_INBOUND_INTERCEPTION_MODE",
    "PILOT_ADDRESS",
    "ISTIO_PILOT_PORT",
    "CA_ADDR",
    "PROV_CERT",
    "OUTPUT_CERTS",
    "ISTIO_AGENT_FLAGS",
    "PROXY_CONFIG",
    // B. istio-iptables
    "ISTIO_INBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_EXCLUDE_INTERFACES",
    "ISTIO_SERVICE_CIDR",
    "ISTIO_SERVICE_EXCLUDE_CIDR",
    "ISTIO_OUTBOUND_PORTS",
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
    "ISTIO_INBOUND_TPROXY_MARK",
    "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
    "INBOUND_CAPTURE_PORT",
    "INBOUND_TUNNEL_PORT",
    "PROXY_UID",
    "PROXY_GID",
    "ENVOY_USER",
    "KUBE_VIRT_INTERFACES",
    "REDIRECT_DNS",
    "ISTIO_META_DNS_CAPTURE",
    "CAPTURE_ALL_DNS",
    "DROP_INVALID",
    "INVALID_DROP",
    "DUAL_STACK",
    "ISTIO_DUAL_STACK",
    "ISTIO_OUTBOUND_OWNER_GROUPS",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
    "NATIVE_NFTABLES",
    "FORCE_IPTABLES_BINARY",
    "RECONCILE",
    "FORCE_APPLY",
    "DRY_RUN",
    "SKIP_RULE_APPLY",
    "RUN_VALIDATION",
    "IPTABLES_PROBE_PORT",
    "PROBE_TIMEOUT",
    "NETWORK_NAMESPACE",
    "CNI_MODE",
    "CLEANUP_ONLY",
    "ENVOY_PORT",
    "RESTORE_FORMAT",
    "ISTIO_META_DNS_CONNTRACK_ZONE",
    // C. pilot-agent
    "INSTANCE_IP",
    "POD_NAMESPACE",
    "SERVICE_ACCOUNT",
    "ISTIO_META_CLUSTER_ID",
    "XDS_AUTH_PROVIDER",
    "JWT_POLICY",
    "XDS_ROOT_CA",
    "CA_ROOT_CA",
    "CA_PROVIDER",
    "TRUST_DOMAIN",
    "SECRET_TTL",
    "FILE_DEBOUNCE_DURATION",
    "SECRET_GRACE_PERIOD_RATIO",
    "SECRET_GRACE_PERIOD_RATIO_JITTER",
    "WORKLOAD_RSA_KEY_SIZE",
    "PKCS8_KEY",
    "ECC_SIGNATURE_ALGORITHM",
    "ECC_CURVE",
    "FILE_MOUNTED_CERTS",
    "CREDENTIAL_FETCHER_TYPE",
    "CREDENTIAL_IDENTITY_PROVIDER",
    "WORKLOAD_IDENTITY_SOCKET_FILE",
    "ISTIO_META_ENABLE_DNS_SERVER",
    "ISTIO_META_ENABLE_SELF_DISCOVERY",
    "ISTIO_META_CERT_SIGNER",
    "DNS_PROXY_ADDR",
    "DNS_FORWARD_PARALLEL",
    "DNS_FORWARD_TIMEOUT",
    "PROXY_CONFIG_XDS_AGENT",
    "WASM_INSECURE_REGISTRIES",
    "WASM_MODULE_EXPIRY",
    "WASM_PURGE_INTERVAL",
    "WASM_HTTP_REQUEST_TIMEOUT",
    "WASM_HTTP_REQUEST_MAX_RETRIES",
    "PEER_METADATA_DISCOVERY",
    "ENVOY_STATUS_PORT",
    "ENVOY_PROMETHEUS_PORT",
    "ENVOY_SECURE_METRICS_PORT",
    "ENVOY_SECURE_MERGED_METRICS_PORT",
    "GRPC_XDS_BOOTSTRAP",
    "DISABLE_ENVOY",
    "ISTIOD_SAN",
    "MINIMUM_DRAIN_DURATION",
    "EXIT_ON_ZERO_ACTIVE_CONNECTIONS",
    "ENVOY_SKIP_DEPRECATED_LOGS",
    "ISTIO_KUBE_APP_PROBERS",
    "REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION",
    "TOKEN_AUDIENCES",
    "ISTIO_BOOTSTRAP",
    "ISTIO_BOOTSTRAP_OVERRIDE",
    "ISTIO_ENVOY_ENABLE_CORE_DUMP",
    "ISTIO_PROMETHEUS_ANNOTATIONS",
    "ISTIO_CPU_LIMIT",
    "ENABLE_PROBE_KEEPALIVE_CONNECTIONS",
    "ISTIO_ENABLE_HTTP2_PROBING",
    "CLOUD_PLATFORM",
    "GCP_METADATA",
    "GCP_ZONE",
    "GCP_QUOTA_PROJECT",
    "ENVOY_PATH",
    "XDS_AUTH_PLAINTEXT",
    // C, 1.10 only
    "PILOT_CERT_PROVIDER",
    "PROXY_XDS_VIA_AGENT",
    "REQUIRE_3P_TOKEN",
    "GKE_CLUSTER_URL",
    // D. written by istioctl, informational
    "CANONICAL_SERVICE",
    "CANONICAL_REVISION",
    "ISTIO_META_WORKLOAD_NAME",
    "ISTIO_META_MESH_ID",
    "ISTIO_META_NETWORK",
];

/// Free-form prefixes: node metadata and extra gRPC headers.
pub const KNOWN_PREFIXES: &[&str] = &[
    "ISTIO_META_",
    "ISTIO_METAJSON_",
    "CA_HEADER_",
    "XDS_HEADER_",
];

/// Keys the VM cannot do without. istio-start.sh falls back to namespace
/// `default` without ISTIO_NAMESPACE; the agent needs POD_NAMESPACE and
/// SERVICE_ACCOUNT for its identity; istio-iptables captures nothing without
/// the port and CIDR keys.
pub const REQUIRED_KEYS: &[&str] = &[
    "ISTIO_NAMESPACE",
    "ISTIO_SERVICE",
    "POD_NAMESPACE",
    "SERVICE_ACCOUNT",
    "ISTIO_INBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_SERVICE_CIDR",
];

/// Levenshtein distance, for "did you mean".
pub(super) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known key, if it is close enough to be a typo.
pub fn suggest(key: &str) -> Option<&'static str> {
    let limit = (key.len() / 4).clamp(1, 3);
    KNOWN_KEYS
        .iter()
        .map(|k| (distance(&key.to_ascii_uppercase(), k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

pub(super) fn is_known(key: &str) -> bool {
    KNOWN_KEYS.contains(&key) || KNOWN_PREFIXES.iter().any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("ISTIO_INBOUND_PORT"), Some("ISTIO_INBOUND_PORTS"));
        assert_eq!(suggest("SERVICE_ACOUNT"), Some("SERVICE_ACCOUNT"));
        assert_eq!(suggest("istio_namespace"), Some("ISTIO_NAMESPACE"));
        assert_eq!(suggest("MY_APP_SETTING"), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn typo_limit_grows_with_the_key() {
        // 8 characters: two edits away still counts as a typo.
        assert_eq!(distance("PRXY_GIX", "PROXY_GID"), 2);
        assert_eq!(suggest("PRXY_GIX"), Some("PROXY_GID"));
        // 5 characters: one edit only.
        assert_eq!(distance("CA_AD", "CA_ADDR"), 2);
        assert_eq!(suggest("CA_AD"), None);
        assert_eq!(suggest("CA_ADD"), Some("CA_ADDR"));
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("abc", "axc"), 1);
        // One deletion from the first word, one insertion into it.
        assert_eq!(distance("ab", "a"), 1);
        assert_eq!(distance("a", "ab"), 1);
        assert_eq!(suggest("ISTIO_INBOUNDD_PORTS"), Some("ISTIO_INBOUND_PORTS"));
    }

    #[test]
    fn known_by_name_or_prefix() {
        assert!(is_known("ISTIO_INBOUND_PORTS"));
        assert!(is_known("ISTIO_META_CLUSTER_ID"));
        assert!(is_known("XDS_HEADER_X"));
        assert!(!is_known("ISTIO_MET"));
        assert!(!is_known("MY_APP"));
    }

    #[test]
    fn every_known_key_is_unique_and_known() {
        let set: BTreeSet<_> = KNOWN_KEYS.iter().collect();
        assert_eq!(set.len(), KNOWN_KEYS.len());
        for k in KNOWN_KEYS {
            assert_eq!(suggest(k), Some(*k));
        }
    }
}
