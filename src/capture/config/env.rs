//! cluster.env read as istio-iptables reads it, one section of
//! `IstioConfig` at a time (split out of `IstioConfig::from_inputs`, which
//! calls these in Istio's order so that the first bad value is the one
//! reported).

use std::collections::BTreeMap;

use super::{
    CaptureError, CidrInclude, InboundPorts, InterceptionMode, OwnerGroups, cidr, invalid, names,
    owner_id, parse_bool, parse_resolv_conf, port, ports, split,
};

/// cluster.env as istio-iptables reads it: a missing key is an empty value,
/// and values are trimmed.
pub(super) struct Env<'e>(pub(super) &'e BTreeMap<String, String>);

/// DNS capture after Istio's "no servers means off" rule.
pub(super) struct DnsCapture {
    pub(super) redirect: bool,
    pub(super) capture_all: bool,
    pub(super) v4: Vec<String>,
    pub(super) v6: Vec<String>,
    /// Why capture is off although cluster.env asks for it.
    pub(super) note: Option<String>,
}

impl<'e> Env<'e> {
    pub(super) fn get(&self, key: &str) -> &'e str {
        self.0.get(key).map(String::as_str).unwrap_or("").trim()
    }

    /// The first of `keys` that is set (Istio's deprecated aliases), with
    /// the key named in an error.
    fn first<'k>(&self, keys: &[&'k str]) -> (&'k str, &'e str) {
        keys.iter()
            .find_map(|k| self.0.get(*k).map(|v| (*k, v.trim())))
            .unwrap_or((keys[0], ""))
    }

    pub(super) fn flag(&self, keys: &[&str]) -> Result<bool, CaptureError> {
        let (k, v) = self.first(keys);
        parse_bool(k, v)
    }

    pub(super) fn port_or(&self, key: &str, default: &str) -> Result<String, CaptureError> {
        match self.get(key) {
            "" => Ok(default.to_string()),
            v => port(key, v),
        }
    }

    fn id_or(&self, key: &str, default: &str) -> Result<String, CaptureError> {
        match self.get(key) {
            "" => Ok(default.to_string()),
            v => owner_id(key, v),
        }
    }

    /// PROXY_UID and PROXY_GID (see the GID deviation on `from_inputs`).
    pub(super) fn proxy_owners(
        &self,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(Vec<String>, Vec<String>), CaptureError> {
        let ids = |key: &str, v: &str| -> Result<Vec<String>, CaptureError> {
            split(v).iter().map(|id| owner_id(key, id)).collect()
        };
        let uids = match self.get("PROXY_UID") {
            "" => vec![uid.unwrap_or(1337).to_string()],
            v => ids("PROXY_UID", v)?,
        };
        let gids = match self.get("PROXY_GID") {
            "" => match gid {
                Some(g) => vec![g.to_string()],
                None => uids.clone(),
            },
            v => ids("PROXY_GID", v)?,
        };
        Ok((uids, gids))
    }

    /// Inbound interception mode, with TPROXY's mark and route table.
    pub(super) fn interception(&self) -> Result<(InterceptionMode, String, String), CaptureError> {
        let mode = match self.get("ISTIO_INBOUND_INTERCEPTION_MODE") {
            "TPROXY" => InterceptionMode::Tproxy,
            "" | "REDIRECT" => InterceptionMode::Redirect,
            v => {
                return Err(invalid(
                    "ISTIO_INBOUND_INTERCEPTION_MODE",
                    v,
                    "expected REDIRECT or TPROXY",
                ));
            }
        };
        let mark = self.id_or("ISTIO_INBOUND_TPROXY_MARK", "1337")?;
        let table = self.id_or("ISTIO_INBOUND_TPROXY_ROUTE_TABLE", "133")?;
        Ok((mode, mark, table))
    }

    pub(super) fn inbound_ports(&self) -> Result<InboundPorts, CaptureError> {
        let raw = self.get("ISTIO_INBOUND_PORTS");
        Ok(if split(raw).is_empty() {
            InboundPorts::None
        } else if raw == "*" {
            InboundPorts::All {
                exclude: ports(
                    "ISTIO_LOCAL_EXCLUDE_PORTS",
                    self.get("ISTIO_LOCAL_EXCLUDE_PORTS"),
                )?,
            }
        } else {
            // Istio ignores the exclude list unless the include is `*`.
            InboundPorts::List(ports("ISTIO_INBOUND_PORTS", raw)?)
        })
    }

    /// ISTIO_SERVICE_CIDR and ISTIO_SERVICE_EXCLUDE_CIDR.
    pub(super) fn service_cidrs(&self) -> Result<(CidrInclude, Vec<String>), CaptureError> {
        let list = |key: &str, v: &str| -> Result<Vec<String>, CaptureError> {
            split(v).iter().map(|c| cidr(key, c).map(|t| t.0)).collect()
        };
        let include = match self.get("ISTIO_SERVICE_CIDR") {
            "*" => CidrInclude::All,
            v => CidrInclude::List(list("ISTIO_SERVICE_CIDR", v)?),
        };
        let exclude = list(
            "ISTIO_SERVICE_EXCLUDE_CIDR",
            self.get("ISTIO_SERVICE_EXCLUDE_CIDR"),
        )?;
        Ok((include, exclude))
    }

    pub(super) fn dns(&self, resolv_conf: &str) -> Result<DnsCapture, CaptureError> {
        let requested = self.flag(&["REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"])?;
        let capture_all = parse_bool("CAPTURE_ALL_DNS", self.get("CAPTURE_ALL_DNS"))?;
        let (v4, v6) = if requested && !capture_all {
            parse_resolv_conf(resolv_conf)
        } else {
            (Vec::new(), Vec::new())
        };
        // capture/run.go: requested, not capture-all and no servers -> off.
        let redirect = requested && (capture_all || !v4.is_empty() || !v6.is_empty());
        let note = (requested && !redirect).then(|| {
            "DNS capture is on in cluster.env but resolv.conf lists no nameserver: \
             DNS capture disabled (as istio-iptables does)"
                .to_string()
        });
        Ok(DnsCapture {
            redirect,
            capture_all,
            v4,
            v6,
            note,
        })
    }

    pub(super) fn owner_groups(&self) -> Result<OwnerGroups, CaptureError> {
        let include = self.get("ISTIO_OUTBOUND_OWNER_GROUPS");
        Ok(if include.is_empty() || include == "*" {
            OwnerGroups::All {
                exclude: names(
                    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                    self.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
                    32,
                )?,
            }
        } else {
            OwnerGroups::Only(names("ISTIO_OUTBOUND_OWNER_GROUPS", include, 32)?)
        })
    }

    pub(super) fn ipv4_loopback_cidr(&self) -> Result<String, CaptureError> {
        const KEY: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
        match self.get(KEY) {
            "" => Ok("127.0.0.1/32".to_string()),
            v => match cidr(KEY, v)? {
                (_, true) => Err(invalid(KEY, v, "must be an IPv4 CIDR")),
                (text, false) => Ok(text),
            },
        }
    }
}
