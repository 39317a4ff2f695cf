//! A reference model of the filter in plain Rust, written from docs/SPEC.md and the
//! safety rules of docs/design.md rather than from the kernel code: given the
//! configuration, its own state and a frame, it says what the verdict must be. The
//! differential fuzzer runs it side by side with the XDP program.

use std::collections::HashMap;

use ipnet::IpNet;
use knock_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use xknock::config::{BanPolicy, Config, Sequence};
use xknock::net::Knock;

pub const PASS: u32 = 2;
pub const DROP: u32 = 1;

/// What the headers say, as far as they can be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IP, or neither TCP, UDP nor a whole echo request.
    Other,
    /// A fragment past offset 1.
    LaterFragment,
    /// A fragment at offset 1.
    OffsetOneFragment,
    /// Headers that could not be followed safely.
    Unparsed,
    /// IPv6 from an IPv4-mapped source: Linux never delivers it, so neither does the
    /// filter, whatever it carries.
    MappedSource,
    /// TCP or UDP, or an echo request as `proto` PROTO_ICMP with its data size as
    /// `dport` (sport and flags 0): the ICMP knock `SIZE/icmp`.
    Transport {
        src: [u8; 16],
        sport: u16,
        dport: u16,
        proto: u8,
        flags: u8,
    },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

pub fn parse(f: &[u8]) -> Parsed {
    parse_checked(f).unwrap_or(Parsed::Unparsed)
}

fn parse_checked(f: &[u8]) -> Option<Parsed> {
    let mut ether_type = be16(f, 12)?;
    let mut off = 14;
    let is_vlan = |t| matches!(t, 0x8100 | 0x88a8 | 0x9100);
    for _ in 0..2 {
        if !is_vlan(ether_type) {
            break;
        }
        ether_type = be16(f, off + 2)?;
        off += 4;
    }
    if is_vlan(ether_type) {
        return None;
    }
    match ether_type {
        0x0800 => {
            let ip = f.get(off..off + 20)?;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            if ip[0] >> 4 != 4 || header_len < 20 || total < header_len {
                return None;
            }
            let mut src = [0u8; 16];
            src[10..12].copy_from_slice(&[0xff, 0xff]);
            src[12..].copy_from_slice(&ip[12..16]);
            let frag = be16(ip, 6)?;
            let l4 = L4 {
                off: off + header_len,
                len: total - header_len,
                proto: ip[9],
                whole: frag & 0x2000 == 0,
                v4: true,
            };
            transport(f, l4, frag & 0x1fff, src)
        }
        0x86dd => {
            let ip = f.get(off..off + 40)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            if std::net::Ipv6Addr::from(src).to_ipv4_mapped().is_some() {
                return Some(Parsed::MappedSource);
            }
            let mut remaining = usize::from(be16(ip, 4)?);
            let mut next = ip[6];
            // Any fragment header, even of a packet in one fragment, hides an echo
            // request's size from the knock rules.
            let mut whole = true;
            off += 40;
            for _ in 0..=6 {
                let len = match next {
                    0 | 43 | 60 | 135 | 139 | 140 => {
                        let h = f.get(off..off + 2)?;
                        next = h[0];
                        (usize::from(h[1]) + 1) * 8
                    }
                    51 => {
                        let h = f.get(off..off + 2)?;
                        next = h[0];
                        (usize::from(h[1]) + 2) * 4
                    }
                    44 => {
                        let h = f.get(off..off + 8)?;
                        let frag = be16(h, 2)? >> 3;
                        if frag != 0 {
                            return Some(fragment(frag));
                        }
                        next = h[0];
                        whole = false;
                        8
                    }
                    proto => {
                        let l4 = L4 {
                            off,
                            len: remaining,
                            proto,
                            whole,
                            v4: false,
                        };
                        return transport(f, l4, 0, src);
                    }
                };
                remaining = remaining.checked_sub(len)?;
                off += len;
            }
            None
        }
        _ => Some(Parsed::Other),
    }
}

fn fragment(offset: u16) -> Parsed {
    if offset == 1 {
        Parsed::OffsetOneFragment
    } else {
        Parsed::LaterFragment
    }
}

/// Where the L4 header starts and how long the IP header says the rest is.
struct L4 {
    off: usize,
    len: usize,
    proto: u8,
    /// Not one fragment of several (IPv4), or without a fragment header (IPv6).
    whole: bool,
    v4: bool,
}

fn transport(f: &[u8], l4: L4, frag: u16, src: [u8; 16]) -> Option<Parsed> {
    if frag != 0 {
        return Some(fragment(frag));
    }
    let L4 { off, len, proto, .. } = l4;
    let header = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        1 | 58 => return Some(echo_request(f, &l4, src)),
        _ => return Some(Parsed::Other),
    };
    if len < header {
        return None;
    }
    let h = f.get(off..off + header)?;
    if proto == PROTO_TCP && h[12] >> 4 < 5 {
        return None;
    }
    let flags = if proto == PROTO_TCP { h[13] } else { 0 };
    Some(Parsed::Transport {
        src,
        sport: be16(h, 0)?,
        dport: be16(h, 2)?,
        proto,
        flags,
    })
}

/// An ICMP echo request over IPv4 or an ICMPv6 one over IPv6, unfragmented and with
/// every byte its IP header promises in the frame, is the knock of its data size;
/// anything else over ICMP is none of the filter's business.
fn echo_request(f: &[u8], l4: &L4, src: [u8; 16]) -> Parsed {
    let request = match (l4.proto, l4.v4) {
        (1, true) => 8,
        (58, false) => 128,
        _ => return Parsed::Other,
    };
    let complete = l4.whole && l4.len >= 8 && f.len() >= l4.off + l4.len;
    if !complete || f.get(l4.off) != Some(&request) {
        return Parsed::Other;
    }
    Parsed::Transport {
        src,
        sport: 0,
        dport: (l4.len - 8) as u16,
        proto: PROTO_ICMP,
        flags: 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub step: usize,
    pub first: u64,
    pub last: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, Default)]
struct BanRecord {
    window_start: u64,
    until: u64,
    failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    src: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
}

/// Bans of IPv6 sources are their prefix's: the address cut to `prefix` bits; IPv4
/// sources are banned one by one.
fn ban_key(src: [u8; 16], prefix: u8) -> [u8; 16] {
    let a = std::net::Ipv6Addr::from(src);
    if a.to_ipv4_mapped().is_some() {
        return src;
    }
    let net = ipnet::Ipv6Net::new(a, prefix)
        .expect("a prefix from 1 to 128")
        .trunc();
    net.network().octets()
}

/// Loopback, unspecified, multicast and broadcast sources: no peer knocks from
/// there, so their knocks never count.
pub fn martian(src: [u8; 16]) -> bool {
    match std::net::Ipv6Addr::from(src).to_canonical() {
        std::net::IpAddr::V4(a) => {
            a.octets()[0] == 0 || a.is_loopback() || a.is_multicast() || a.is_broadcast()
        }
        std::net::IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
    }
}

/// The model's state: the same three tables as the kernel's maps.
pub struct Model {
    seqs: Vec<Sequence>,
    pub progress: HashMap<([u8; 16], u8), Progress>,
    pub auth: HashMap<([u8; 16], u8), u64>,
    /// Completed sequences so far.
    pub opens: u64,
    /// Bans made so far.
    pub bans_made: u64,
    ban: BanPolicy,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    bans: HashMap<[u8; 16], BanRecord>,
    flows: HashMap<FlowKey, (u64, u64)>,
    /// With `stealth = true`: the `public` ports and the local ephemeral range (as
    /// /proc/sys/net/ipv4/ip_local_port_range says when the model is made).
    stealth: Option<(Vec<Knock>, (u16, u16))>,
    /// SYNs and datagrams stealth dropped so far.
    pub stealth_drops: u64,
    /// Packets to passing knock ports that passed as knocks (not for being listed).
    pub pass_knocks: u64,
}

/// The local ephemeral port range, read as the loader reads it when it applies a
/// config (Linux's default when it cannot be read).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut w = t.split_whitespace().map(str::parse::<u16>);
            let (low, high) = (w.next()?.ok()?, w.next()?.ok()?);
            (low <= high).then_some((low, high))
        })
        .unwrap_or((32768, 60999))
}

const NS: u128 = 1_000_000_000;
/// The kernel refreshes a kept connection's last-seen time at most once a second.
const FLOW_REFRESH_NS: u64 = NS as u64;
/// After a FIN from its source, a kept connection lives 5 s past its latest packet.
const FLOW_LINGER_NS: u64 = 5 * NS as u64;

fn ns(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

impl Model {
    pub fn new(config: &Config) -> Model {
        Model {
            seqs: config.sequences.clone(),
            progress: HashMap::new(),
            auth: HashMap::new(),
            opens: 0,
            bans_made: 0,
            ban: config.ban,
            allow: config.allow.clone(),
            deny: config.deny.clone(),
            bans: HashMap::new(),
            flows: HashMap::new(),
            stealth: config
                .stealth
                .as_ref()
                .map(|s| (s.public.clone(), ephemeral_range())),
            stealth_drops: 0,
            pass_knocks: 0,
        }
    }

    /// The `public` ports, if stealth is on.
    pub fn public(&self) -> Option<&[Knock]> {
        self.stealth.as_ref().map(|(p, _)| p.as_slice())
    }

    /// The ephemeral range stealth leaves UDP open in, if stealth is on.
    pub fn ephemeral(&self) -> Option<(u16, u16)> {
        self.stealth.as_ref().map(|(_, r)| *r)
    }

    /// Whether stealth hides `port` (one no sequence uses): docs/design.md "Stealth", every
    /// port but the public ones and, for UDP, the ephemeral range.
    pub fn hidden(&self, port: Knock) -> bool {
        self.stealth.as_ref().is_some_and(|(public, (low, high))| {
            !public.contains(&port) && !(port.proto == PROTO_UDP && (*low..=*high).contains(&port.port))
        })
    }

    /// The verdict for a port no sequence uses: a SYN (without ACK) or a datagram
    /// to a hidden port is dropped, everything else passes.
    fn unconfigured(&mut self, port: Knock, opens: bool) -> u32 {
        if opens && self.hidden(port) {
            self.stealth_drops += 1;
            DROP
        } else {
            PASS
        }
    }

    pub fn sequences(&self) -> &[Sequence] {
        &self.seqs
    }

    /// The verdict for `frame` at time `now`, updating the state as the filter must.
    pub fn verdict(&mut self, frame: &[u8], now: u64) -> u32 {
        match parse(frame) {
            Parsed::Other | Parsed::LaterFragment => PASS,
            Parsed::OffsetOneFragment | Parsed::Unparsed | Parsed::MappedSource => DROP,
            Parsed::Transport {
                src,
                sport,
                dport,
                proto,
                flags,
            } => self.decide(src, sport, Knock { port: dport, proto }, flags, now),
        }
    }

    /// Whether `src` may open a new connection to `port` now.
    pub fn authorized_for(&self, src: [u8; 16], port: Knock, now: u64) -> bool {
        self.seqs.iter().enumerate().any(|(i, s)| {
            s.protect.contains(&port) && self.auth.get(&(src, i as u8)).is_some_and(|e| now < *e)
        })
    }

    /// The allow/deny list's word on `src`: the longest matching prefix decides.
    pub fn access(&self, src: [u8; 16]) -> Option<Access> {
        let addr = std::net::Ipv6Addr::from(src).to_canonical();
        // Prefix lengths compared as over the IPv4-mapped form, as a user would expect
        // a /24 to be more specific than a /8 whatever the family.
        let len = |net: &IpNet| match net {
            IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
            IpNet::V6(n) => u32::from(n.prefix_len()),
        };
        let contains = |net: &IpNet| match (net, addr) {
            (IpNet::V4(n), std::net::IpAddr::V4(a)) => n.contains(&a),
            (IpNet::V6(n), _) => n.contains(&std::net::Ipv6Addr::from(src)),
            _ => false,
        };
        let best = |list: &[IpNet]| list.iter().filter(|n| contains(n)).map(len).max();
        match (best(&self.allow), best(&self.deny)) {
            (Some(a), Some(d)) => Some(if a > d { Access::Allow } else { Access::Deny }),
            (Some(_), None) => Some(Access::Allow),
            (None, Some(_)) => Some(Access::Deny),
            (None, None) => None,
        }
    }

    /// Whether `src:sport` has a connection to `port` kept from an authorization.
    pub fn kept(&self, src: [u8; 16], sport: u16, port: Knock, now: u64) -> bool {
        let key = FlowKey {
            src,
            sport,
            dport: port.port,
            proto: port.proto,
        };
        self.flows
            .get(&key)
            .is_some_and(|(last, idle)| now.saturating_sub(*last) <= *idle)
    }

    /// Whether `port` is a passing knock (`:pass`) of some sequence: a served port.
    pub fn passing(&self, port: Knock) -> bool {
        self.seqs.iter().any(|s| s.passing.contains(&port))
    }

    fn decide(&mut self, src: [u8; 16], sport: u16, port: Knock, flags: u8, now: u64) -> u32 {
        let syn = port.proto == PROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let opens = port.proto == PROTO_UDP || syn;
        let knock_port = self.seqs.iter().any(|s| s.knocks.contains(&port));
        let protected = self.seqs.iter().any(|s| s.protect.contains(&port));
        let strict = opens && self.seqs.iter().any(|s| s.strict);
        let passes = self.passing(port);
        // The rest of a connection to a served port whose sequences count only SYNs:
        // it passes and changes nothing, whoever sends it.
        let syn_only = |s: &Sequence| s.tcp_flags_set & TCP_SYN != 0 && s.tcp_flags_clear & TCP_ACK != 0;
        let mut serving = self.seqs.iter().filter(|s| s.passing.contains(&port));
        if passes && port.proto == PROTO_TCP && !syn && serving.all(syn_only) {
            self.pass_knocks += 1;
            return PASS;
        }
        if knock_port || protected || strict {
            // Listed sources are decided by the list and never tracked; a passing
            // port serves them.
            match self.access(src) {
                Some(_) if passes => return PASS,
                Some(Access::Deny) if knock_port || protected => return DROP,
                Some(Access::Allow) if knock_port => return DROP,
                Some(Access::Allow) if protected => return PASS,
                Some(_) => return self.unconfigured(port, opens),
                None => {}
            }
        }
        let mut knocked = false;
        // A martian source's packets are never knocks that count.
        let banned = self.banned(src, now) || martian(src);
        for i in 0..self.seqs.len() {
            let s = &self.seqs[i];
            let in_seq = s.knocks.contains(&port);
            knocked |= in_seq;
            let counts = in_seq
                && (port.proto != PROTO_TCP
                    || (flags & s.tcp_flags_set == s.tcp_flags_set && flags & s.tcp_flags_clear == 0));
            if !banned && (counts || (s.strict && opens)) {
                self.step(i, src, port, counts, passes, now);
            }
        }
        if knocked && passes {
            self.pass_knocks += 1;
            return PASS;
        }
        if knocked {
            return DROP;
        }
        if !self.seqs.iter().any(|s| s.protect.contains(&port)) {
            return self.unconfigured(port, opens);
        }
        let key = FlowKey {
            src,
            sport,
            dport: port.port,
            proto: port.proto,
        };
        // A ban (possibly made by this very packet) closes the ports even to the
        // authorized, and ends their kept connections.
        let banned_now = self.banned(src, now);
        let (rst, fin) = (flags & TCP_RST != 0, flags & TCP_FIN != 0);
        if !syn && let Some((last, idle)) = self.flows.get_mut(&key) {
            let quiet = now.saturating_sub(*last);
            if quiet <= *idle {
                if banned_now {
                    self.flows.remove(&key);
                    return DROP;
                }
                if rst {
                    // The connection is over; the RST itself passes.
                    self.flows.remove(&key);
                } else if fin && *idle > FLOW_LINGER_NS {
                    *idle = FLOW_LINGER_NS;
                    *last = now;
                } else if quiet > FLOW_REFRESH_NS {
                    *last = now;
                }
                return PASS;
            }
        }
        for (i, s) in self.seqs.iter().enumerate() {
            let authorized = self.auth.get(&(src, i as u8)).is_some_and(|e| now < *e);
            if s.protect.contains(&port) && authorized && !banned_now {
                if s.keep_established && !rst {
                    let idle = ns(s.idle_timeout);
                    self.flows
                        .insert(key, (now, if fin { idle.min(FLOW_LINGER_NS) } else { idle }));
                }
                return PASS;
            }
        }
        DROP
    }

    /// docs/SPEC.md's sequence rules (Semantics) for one source and sequence. A
    /// packet to a passing port (`passes`) is ordinary traffic too: the resets it
    /// causes are no failures towards a ban.
    fn step(&mut self, i: usize, src: [u8; 16], port: Knock, is_knock: bool, passes: bool, now: u64) {
        let fail = |model: &mut Model| {
            if !passes {
                model.fail(src, now);
            }
        };
        let s = self.seqs[i].clone();
        let key = (src, i as u8);
        let stored = self.progress.get(&key).copied();
        let stale = stored.is_some_and(|p| {
            now.saturating_sub(p.last) > ns(s.step_timeout)
                || now.saturating_sub(p.first) > ns(s.sequence_timeout)
        });
        if stale {
            fail(self);
        }
        let (done, first) = stored.filter(|_| !stale).map_or((0, now), |p| (p.step, p.first));
        if !is_knock {
            // Strict: another SYN or datagram.
            if stored.is_some() {
                self.progress.remove(&key);
                if done > 0 {
                    fail(self);
                }
            }
            return;
        }
        let advance = |model: &mut Model, done: usize, first: u64| {
            if done == s.knocks.len() {
                model.progress.remove(&key);
                model.auth.insert(key, now.saturating_add(ns(s.open_for)));
                model.opens += 1;
            } else {
                model.progress.insert(
                    key,
                    Progress {
                        step: done,
                        first,
                        last: now,
                    },
                );
            }
        };
        if s.knocks.get(done) == Some(&port) {
            advance(self, done + 1, first);
        } else if done > 0 && s.knocks[done - 1] == port {
            // A repeat of the knock just accepted.
        } else if done > 0 && s.ignore_wrong {
            // Out of order, ignored.
        } else {
            if done > 0 {
                fail(self);
            }
            if s.knocks[0] == port {
                advance(self, 1, now);
            } else {
                self.progress.remove(&key);
            }
        }
    }

    /// A reset: more than `failures` within `window` bans the source for `ban_for`.
    fn fail(&mut self, src: [u8; 16], now: u64) {
        let policy = self.ban;
        if policy.failures == 0 {
            return;
        }
        let b = self.bans.entry(ban_key(src, policy.ipv6_prefix)).or_default();
        if now.saturating_sub(b.window_start) > ns(policy.window) {
            b.window_start = now;
            b.failures = 0;
        }
        b.failures += 1;
        if b.failures > policy.failures {
            b.until = now.saturating_add(ns(policy.ban_for));
            b.failures = 0;
            b.window_start = now;
            self.bans_made += 1;
        }
    }

    /// Sources banned now, with the end of their ban.
    pub fn live_bans(&self, now: u64) -> HashMap<[u8; 16], u64> {
        self.bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(a, b)| (*a, b.until))
            .collect()
    }

    pub fn banned(&self, src: [u8; 16], now: u64) -> bool {
        self.ban.failures != 0
            && self
                .bans
                .get(&ban_key(src, self.ban.ipv6_prefix))
                .is_some_and(|b| now < b.until)
    }

    /// The next knock `src` must send to advance sequence `i` (for the fuzzer).
    pub fn next_knock(&self, src: [u8; 16], i: usize, now: u64) -> Knock {
        let s = &self.seqs[i];
        let step = self
            .progress
            .get(&(src, i as u8))
            .filter(|p| {
                now.saturating_sub(p.last) <= ns(s.step_timeout)
                    && now.saturating_sub(p.first) <= ns(s.sequence_timeout)
            })
            .map_or(0, |p| p.step);
        s.knocks[step % s.knocks.len()]
    }

    /// Live entries (not timed out) of the progress table.
    pub fn live_progress(&self, now: u64) -> HashMap<([u8; 16], u8), usize> {
        self.progress
            .iter()
            .filter(|((_, i), p)| {
                let s = &self.seqs[usize::from(*i)];
                now.saturating_sub(p.last) <= ns(s.step_timeout)
                    && now.saturating_sub(p.first) <= ns(s.sequence_timeout)
            })
            .map(|(k, p)| (*k, p.step))
            .collect()
    }
}
