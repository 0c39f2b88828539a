//! The network lock: while an established TCP connection is checkpointed,
//! the segments its peer sends are dropped, so that the host, which no
//! longer has the socket, does not answer them with a reset. The peer
//! sees a silent path and retransmits; once the connection is restored
//! and the lock removed, a retransmission is delivered and the
//! connection goes on.
//!
//! The lock is an nf_tables table of family `inet`, spoken to over a
//! NETLINK_NETFILTER socket (CAP_NET_ADMIN): one chain on the input hook,
//! ahead of conntrack and the usual filter chains, and one rule per
//! connection dropping the segments from its peer's address and port to
//! its own. Dump adds the rules of all the tree's connections, in a few
//! transactions, before it reads any (one it finds unlocked still gets
//! its rule before it is read), so nothing arrives between the read and
//! the kill; it
//! removes the table again when the tree runs on (`--leave-running`, or a
//! failed dump). Otherwise the table's name goes into the inventory and
//! a restore removes it once every process runs. A failed restore leaves
//! it, so that a second try still finds the peer waiting;
//! `nft delete table inet <name>` lets the connection go.

use nix::sys::socket::{self as sock, MsgFlags, NetlinkAddr};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>,
// <linux/netfilter.h>.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
/// Ahead of conntrack (-200) and of the filter chains (0).
const PRIORITY: i32 = -300;
const CHAIN: &str = "input";

/// Rules per nf_tables transaction: their messages (about 400 bytes
/// each) and acknowledgements stay well inside a netlink socket's default
/// buffers.
const RULES_PER_BATCH: usize = 64;

/// The lock of one dump: its table, made with the first connection, and
/// the connections it holds.
pub struct Netlock {
    name: String,
    made: bool,
    locked: HashSet<(SocketAddr, SocketAddr)>,
}

impl Default for Netlock {
    /// A lock named after rcr's pid and a count, unique on the host.
    fn default() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        Netlock {
            name: format!(
                "rcr_{}_{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ),
            made: false,
            locked: HashSet::new(),
        }
    }
}

impl Netlock {
    /// The table's name once it holds a connection.
    pub fn table(&self) -> Option<&str> {
        self.made.then_some(self.name.as_str())
    }

    /// Drops what each peer sends to its local end from now on, given as
    /// (local, peer) pairs. The rules go in a few transactions of
    /// [`RULES_PER_BATCH`] each rather than one per connection, since
    /// each commit costs time in proportion to the chain's rules.
    pub fn add_all(&mut self, conns: &[(SocketAddr, SocketAddr)]) -> std::io::Result<()> {
        let fresh: Vec<_> = conns
            .iter()
            .map(|&(l, p)| (canonical(l), canonical(p)))
            .filter(|c| !self.locked.contains(c))
            .collect();
        for chunk in fresh.chunks(RULES_PER_BATCH) {
            let mut batch = Batch::default();
            if !self.made {
                self.push_table(&mut batch);
            }
            for &(local, peer) in chunk {
                batch.push(
                    NFT_MSG_NEWRULE,
                    libc::NLM_F_CREATE | libc::NLM_F_APPEND,
                    [
                        nul(NFTA_RULE_TABLE, &self.name),
                        nul(NFTA_RULE_CHAIN, CHAIN),
                        nest(NFTA_RULE_EXPRESSIONS, &drop_from(peer, local)),
                    ],
                );
            }
            batch.send()?;
            self.made = true;
            self.locked.extend(chunk);
        }
        Ok(())
    }

    /// Drops what `peer` sends to `local` from now on.
    pub fn add(&mut self, local: SocketAddr, peer: SocketAddr) -> std::io::Result<()> {
        self.add_all(&[(local, peer)])
    }

    /// Makes the table and its input chain.
    fn push_table(&self, batch: &mut Batch) {
        batch.push(
            NFT_MSG_NEWTABLE,
            libc::NLM_F_CREATE,
            [nul(NFTA_TABLE_NAME, &self.name)],
        );
        let hook = nest(
            NFTA_CHAIN_HOOK,
            &[
                be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_IN),
                be32(NFTA_HOOK_PRIORITY, PRIORITY as u32),
            ],
        );
        batch.push(
            NFT_MSG_NEWCHAIN,
            libc::NLM_F_CREATE,
            [
                nul(NFTA_CHAIN_TABLE, &self.name),
                nul(NFTA_CHAIN_NAME, CHAIN),
                hook,
                be32(NFTA_CHAIN_POLICY, NF_ACCEPT),
                nul(NFTA_CHAIN_TYPE, "filter"),
            ],
        );
    }

    /// Removes the table, if made.
    pub fn remove(&mut self) -> std::io::Result<()> {
        self.locked.clear();
        if std::mem::take(&mut self.made) {
            unlock(&self.name)?;
        }
        Ok(())
    }
}

/// Removes the lock table `name`; one already gone is not an error.
pub fn unlock(name: &str) -> std::io::Result<()> {
    let mut batch = Batch::default();
    batch.push(NFT_MSG_DELTABLE, 0, [nul(NFTA_TABLE_NAME, name)]);
    match batch.send() {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// `a` with an IPv4-mapped address as the IPv4 address it is on the wire.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// The expressions of a rule dropping TCP segments from `from` to `to`.
fn drop_from(from: SocketAddr, to: SocketAddr) -> Vec<Vec<u8>> {
    let ip = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    // Source then destination address, each header's order.
    let (nfproto, offset) = if from.is_ipv4() {
        (NFPROTO_IPV4, 12)
    } else {
        (NFPROTO_IPV6, 8)
    };
    let addrs = [ip(from.ip()), ip(to.ip())].concat();
    let ports = [from.port().to_be_bytes(), to.port().to_be_bytes()].concat();
    vec![
        meta(NFT_META_NFPROTO),
        cmp_eq(&[nfproto]),
        meta(NFT_META_L4PROTO),
        cmp_eq(&[libc::IPPROTO_TCP as u8]),
        payload(NFT_PAYLOAD_NETWORK_HEADER, offset, addrs.len() as u32),
        cmp_eq(&addrs),
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 4),
        cmp_eq(&ports),
        expr(
            "immediate",
            &[
                be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
                nest(
                    NFTA_IMMEDIATE_DATA,
                    &[nest(NFTA_DATA_VERDICT, &[be32(NFTA_VERDICT_CODE, NF_DROP)])],
                ),
            ],
        ),
    ]
}

fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
    nest(
        NFTA_LIST_ELEM,
        &[nul(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, data)],
    )
}

fn meta(key: u32) -> Vec<u8> {
    expr(
        "meta",
        &[be32(NFTA_META_DREG, NFT_REG_1), be32(NFTA_META_KEY, key)],
    )
}

fn payload(base: u32, offset: u32, len: u32) -> Vec<u8> {
    expr(
        "payload",
        &[
            be32(NFTA_PAYLOAD_DREG, NFT_REG_1),
            be32(NFTA_PAYLOAD_BASE, base),
            be32(NFTA_PAYLOAD_OFFSET, offset),
            be32(NFTA_PAYLOAD_LEN, len),
        ],
    )
}

fn cmp_eq(value: &[u8]) -> Vec<u8> {
    expr(
        "cmp",
        &[
            be32(NFTA_CMP_SREG, NFT_REG_1),
            be32(NFTA_CMP_OP, NFT_CMP_EQ),
            nest(NFTA_CMP_DATA, &[attr(NFTA_DATA_VALUE, value)]),
        ],
    )
}

/// A netlink attribute, padded to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(len.next_multiple_of(4), 0);
    a
}

fn nest(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, &parts.concat())
}

/// A string attribute, NUL-terminated.
fn nul(kind: u16, s: &str) -> Vec<u8> {
    attr(kind, &[s.as_bytes(), &[0]].concat())
}

/// nf_tables numbers are big-endian.
fn be32(kind: u16, v: u32) -> Vec<u8> {
    attr(kind, &v.to_be_bytes())
}

/// One nf_tables transaction: messages between a batch begin and end,
/// applied by the kernel all or nothing.
#[derive(Default)]
struct Batch {
    messages: Vec<u8>,
    count: u32,
}

impl Batch {
    fn push<const N: usize>(&mut self, kind: u16, flags: i32, attrs: [Vec<u8>; N]) {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags | libc::NLM_F_ACK,
            NFPROTO_INET,
            0,
            &attrs.concat(),
        );
    }

    /// Appends a netlink message with its nfgenmsg header.
    fn message(&mut self, kind: u16, flags: i32, family: u8, res_id: u16, attrs: &[u8]) {
        self.count += 1;
        let len = 16 + 4 + attrs.len();
        let m = &mut self.messages;
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&((flags | libc::NLM_F_REQUEST) as u16).to_ne_bytes());
        m.extend_from_slice(&self.count.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[family, 0]);
        m.extend_from_slice(&res_id.to_be_bytes());
        m.extend_from_slice(attrs);
    }

    /// Sends the batch and waits for the acknowledgement of each message.
    fn send(self) -> std::io::Result<()> {
        let acks = self.count;
        let mut whole = Batch::default();
        let subsys = NFNL_SUBSYS_NFTABLES;
        whole.message(NFNL_MSG_BATCH_BEGIN, 0, 0, subsys, &[]);
        whole.messages.extend_from_slice(&self.messages);
        whole.count += self.count;
        whole.message(NFNL_MSG_BATCH_END, 0, 0, subsys, &[]);
        let nl = sock::socket(
            sock::AddressFamily::Netlink,
            sock::SockType::Raw,
            sock::SockFlag::SOCK_CLOEXEC,
            sock::SockProtocol::NetlinkNetFilter,
        )?;
        let limit = nix::sys::time::TimeVal::new(10, 0);
        sock::setsockopt(&nl, sock::sockopt::ReceiveTimeout, &limit)?;
        sock::sendto(
            nl.as_raw_fd(),
            &whole.messages,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        await_acks(&nl, acks)
    }
}

/// Reads netlink answers until `acks` messages are acknowledged, or one
/// is refused (its errno).
fn await_acks(nl: &OwnedFd, acks: u32) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < acks {
        let n = sock::recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut at = 0;
        while at + 20 <= n {
            let word = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
            let len = word(at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if kind == libc::NLMSG_ERROR as u16 {
                let errno = word(at + 16) as i32;
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                got += 1;
            }
            if len < 16 {
                break;
            }
            at += len.next_multiple_of(4);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn attributes_are_padded_and_nested() {
        assert_eq!(attr(1, b"ab"), [6, 0, 1, 0, b'a', b'b', 0, 0]);
        let n = nest(4, &[be32(1, 7)]);
        assert_eq!(n[..4], [12, 0, 4, 0x80]);
        assert_eq!(n[8..], [0, 0, 0, 7]);
    }

    /// A locked connection's segments are dropped, not answered: data
    /// written while it is locked arrives once the lock is gone.
    #[test]
    fn a_locked_connection_gets_its_data_after_unlock() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        let mut lock = Netlock::default();
        // Behind more connections than one transaction takes, so that the
        // last transaction is the one that locks it.
        let nobody = |port| SocketAddr::from(([127, 0, 0, 2], port));
        let mut conns: Vec<_> = (1..=RULES_PER_BATCH as u16 + 5)
            .map(|p| (nobody(p), nobody(p + 1000)))
            .collect();
        conns.push((a.local_addr().unwrap(), a.peer_addr().unwrap()));
        lock.add_all(&conns).unwrap();
        assert_eq!(lock.locked.len(), conns.len());
        c.write_all(b"held").unwrap();
        a.set_nonblocking(true).unwrap();
        // Not delivered while locked (the lock is what we check here; a
        // late arrival would show as data below).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut got = [0u8; 4];
        assert_eq!(
            a.read(&mut got).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        );
        lock.remove().unwrap();
        a.set_nonblocking(false).unwrap();
        a.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"held");
        unlock(&lock.name).unwrap();
    }
}
