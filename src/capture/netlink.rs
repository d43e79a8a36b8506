//! nf_tables over netlink, in-process: which tables exist (what `nft list
//! tables` prints). Every apply, remove, status and heal check needs this
//! list before anything else; asked of the kernel directly it costs a
//! round trip instead of an `nft` start (about 3 ms of CPU and the
//! slowest of the reads istio-vm runs side by side), and it tells which
//! iptables-nft families hold anything at all, so an `*-save` of an empty
//! family is not run.
//!
//! The same dumps of chains and rules tell whether an iptables-nft family
//! holds anything at all (a rule, or a chain without a hook): where it does
//! not, its `*-save` would print empty tables, and is not run either.
//!
//! Requests are `NFT_MSG_GET{TABLE,CHAIN,RULE}` dumps
//! (linux/netfilter/nf_tables.h, nfnetlink.h); answers are read attribute
//! by attribute, only the names, the family and whether a chain has a hook.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_CHAIN_HOOK: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFTA_TABLE_NAME: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// An nft family number as `nft` names it.
fn family_name(f: u8) -> String {
    match f {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        n => format!("family-{n}"),
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// One object of a dump: its family and its top-level attributes.
struct Object {
    family: u8,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Object {
    fn string(&self, kind: u16) -> Option<String> {
        let v = &self.attrs.iter().find(|a| a.0 == kind)?.1;
        let s = v.split(|b| *b == 0).next().unwrap_or_default();
        Some(String::from_utf8_lossy(s).into_owned())
    }
    fn has(&self, kind: u16) -> bool {
        self.attrs.iter().any(|a| a.0 == kind)
    }
}

/// Read the messages in one datagram: true at NLMSG_DONE.
fn parse(buf: &[u8], seq: u32, out: &mut Vec<Object>) -> Result<bool> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32_at(buf, off).unwrap_or(0) as usize;
        let kind = u16_at(buf, off + 4).unwrap_or(0);
        if len < 16 || off + len > buf.len() {
            bail!("a malformed netlink message from the kernel");
        }
        let msg = &buf[off..off + len];
        off += (len + 3) & !3;
        if u32_at(msg, 8) != Some(seq) {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(msg, 16).map_or(0, |e| -(e as i32));
                if errno == 0 {
                    continue;
                }
                return Err(std::io::Error::from_raw_os_error(errno))
                    .context("reading nf_tables objects");
            }
            _ => {}
        }
        // nfgenmsg: family, version, res_id; then the attributes.
        let mut obj = Object {
            family: msg.get(16).copied().unwrap_or(0),
            attrs: Vec::new(),
        };
        let mut a = 20;
        while a + 4 <= msg.len() {
            let alen = u16_at(msg, a).unwrap_or(0) as usize;
            let atype = u16_at(msg, a + 2).unwrap_or(0) & NLA_TYPE_MASK;
            if alen < 4 || a + alen > msg.len() {
                break;
            }
            obj.attrs.push((atype, msg[a + 4..a + alen].to_vec()));
            a += (alen + 3) & !3;
        }
        out.push(obj);
    }
    Ok(false)
}

/// A netfilter netlink socket and one receive buffer for several dumps
/// in a row (one socket and one 32 KiB buffer instead of one each: the
/// buffer's first touch was a measurable part of an apply).
pub struct Dumper {
    fd: std::os::fd::OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

impl Dumper {
    pub fn open() -> Result<Dumper> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .context("opening a netfilter netlink socket")?;
        // A kernel that never answers must not hang apply.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))
            .context("setting the netlink timeout")?;
        Ok(Dumper {
            fd,
            // Dump replies come in datagrams of at most a page or two
            // (NLMSG_GOODSIZE); 32 KiB is what libmnl's users allocate.
            buf: vec![0u8; 32 * 1024],
            seq: std::process::id().wrapping_mul(16),
        })
    }

    /// One `NFT_MSG_GET*` dump of `family` (`NFPROTO_UNSPEC`: every one).
    fn dump(&mut self, msg: u16, family: u8) -> Result<Vec<Object>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut req = Vec::with_capacity(20);
        req.extend_from_slice(&20u32.to_ne_bytes());
        req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: the family, version 0, resource id 0.
        req.extend_from_slice(&[family, 0, 0, 0]);
        sendto(
            self.fd.as_raw_fd(),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .context("asking the kernel for its nf_tables objects")?;
        let mut out = Vec::new();
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())
                .context("reading the kernel's nf_tables objects")?;
            if n == 0 || parse(&self.buf[..n], seq, &mut out)? {
                return Ok(out);
            }
        }
    }

    /// Every nf_tables table in this network namespace: (family, name).
    pub fn tables(&mut self) -> Result<Vec<(String, String)>> {
        Ok(self
            .dump(NFT_MSG_GETTABLE, NFPROTO_UNSPEC)?
            .into_iter()
            .filter_map(|o| Some((family_name(o.family), o.string(NFTA_TABLE_NAME)?)))
            .collect())
    }

    /// Which of the iptables-nft families (`ip`, `ip6`) hold a rule or a
    /// chain without a hook (a user chain) in any table. A family outside
    /// this set holds nothing `iptables-nft-save` would print but empty
    /// tables. Rules are dumped (every one, with its expressions) only for
    /// a family that has no user chain, where that is still unknown.
    pub fn families_with_content(&mut self) -> Result<Vec<String>> {
        let chains = self.dump(NFT_MSG_GETCHAIN, NFPROTO_UNSPEC)?;
        let mut out = Vec::new();
        for family in [NFPROTO_IPV4, NFPROTO_IPV6] {
            let user_chain = chains
                .iter()
                .any(|c| c.family == family && !c.has(NFTA_CHAIN_HOOK));
            if user_chain || !self.dump(NFT_MSG_GETRULE, family)?.is_empty() {
                out.push(family_name(family));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn table_messages_are_read_by_attribute() {
        let mut body = vec![1, 0, 0, 0];
        // NFTA_TABLE_FLAGS first (another attribute), then the name.
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&2u16.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        let name = b"istio-proxy-nat\0";
        body.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&1u16.to_ne_bytes());
        body.extend_from_slice(name);
        let mut buf = msg(0x0a00, 7, &body);
        buf.extend(msg(0x0a00, 9, &body)); // another request's: ignored
        buf.extend(msg(NLMSG_DONE, 7, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse(&buf, 7, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(family_name(out[0].family), "inet");
        assert_eq!(
            out[0].string(NFTA_TABLE_NAME).as_deref(),
            Some("istio-proxy-nat")
        );
        assert!(out[0].has(2) && !out[0].has(NFTA_CHAIN_HOOK));

        let err = msg(NLMSG_ERROR, 7, &(-1i32).to_ne_bytes());
        assert!(parse(&err, 7, &mut Vec::new()).is_err());
        assert!(parse(&[1, 2, 3], 7, &mut Vec::new()).is_ok_and(|d| !d));
    }
}
