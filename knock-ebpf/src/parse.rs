//! Packet parsing: Ethernet and VLAN tags, IPv4 (with options) or IPv6 (with extension
//! headers), then the TCP or UDP header, or an ICMP or ICMPv6 echo request (a possible
//! ICMP knock). Every read is bounds-checked against the frame and against the IP
//! header's own length fields; whatever cannot be followed safely is an `Err`, which
//! the caller drops.

use aya_ebpf::programs::XdpContext;
use knock_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// VLAN tags followed (802.1Q inside 802.1ad); a deeper stack is refused.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers followed before the chain is refused.
const MAX_IPV6_EXT_HEADERS: usize = 6;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

const IPPROTO_ICMPV6: u8 = 58;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
/// An echo request's header: type, code, checksum, identifier, sequence number.
const ICMP_ECHO_HEADER_LEN: usize = 8;

/// A TCP or UDP packet's L4 header fields, or an echo request's size, and where its
/// source address is.
#[derive(Clone, Copy)]
pub struct Transport {
    /// 0 for an echo request.
    pub src_port: u16,
    /// For an echo request ([`PROTO_ICMP`]), the size of its data.
    pub dst_port: u16,
    /// PROTO_TCP, PROTO_UDP, or PROTO_ICMP for an ICMP or ICMPv6 echo request.
    pub proto: u8,
    /// Byte 13 of the TCP header; 0 otherwise.
    pub tcp_flags: u8,
    /// Where the source address is: read only once the packet matters, so that
    /// unrelated traffic does not pay for copying it.
    src: SourceAt,
    /// UDP: where the payload starts in the frame, and its length as the UDP and IP
    /// headers agree on it (the shorter); 0 for TCP. Only SPA requests read it.
    pub payload_at: u16,
    pub payload_len: u16,
}

#[derive(Clone, Copy)]
enum SourceAt {
    V4(usize),
    V6(usize),
}

/// A TCP or UDP packet or an echo request, with everything the policy looks at.
#[derive(Clone, Copy)]
pub struct Packet {
    /// IPv4-mapped for IPv4.
    pub src: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// Byte 13 of the TCP header; 0 for UDP.
    pub tcp_flags: u8,
}

impl Transport {
    /// The packet with its source address. The address was inside the frame when the
    /// headers were parsed; the bounds are checked again for the verifier.
    #[inline(always)]
    pub fn with_source(&self, ctx: &XdpContext) -> Result<Packet, Unparsed> {
        let src = match self.src {
            SourceAt::V4(offset) => {
                let a: *const [u8; 4] = ptr_at(ctx, offset)?;
                // SAFETY: ptr_at checked the four bytes.
                let v4 = u32::from_ne_bytes(unsafe { *a });
                // Built as four words: as sixteen bytes LLVM keeps (and spills) one
                // register per byte.
                let words = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4];
                // SAFETY: [u32; 4] and [u8; 16] have the same size, any bits are valid.
                unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
            }
            SourceAt::V6(offset) => {
                let a: *const [u8; 16] = ptr_at(ctx, offset)?;
                // SAFETY: ptr_at checked the sixteen bytes.
                unsafe { *a }
            }
        };
        Ok(Packet {
            src,
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            tcp_flags: self.tcp_flags,
        })
    }
}

pub enum Parsed {
    /// Not IP, or IP carrying neither TCP, UDP nor a whole echo request.
    Other,
    /// IPv6 from an IPv4-mapped source (`::ffff:a.b.c.d`): Linux drops these, and
    /// tracked they would stand for the IPv4 address.
    MappedSource,
    /// A fragment past the first: its first fragment carried the L4 header and verdict.
    LaterFragment,
    /// A fragment at offset 1 (8 bytes), which could rewrite the TCP flags of its
    /// first fragment during reassembly (RFC 1858).
    OverlappingFragment,
    Transport(Transport),
}

/// Parse error: the headers could not be followed safely.
pub struct Unparsed;

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Unparsed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Unparsed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Unparsed> {
    let (ether_type, offset) = parse_ethernet(ctx)?;
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        _ => Ok(Parsed::Other),
    }
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    matches!(ether_type, 0x8100 | 0x88a8 | 0x9100)
}

/// Returns the EtherType after any VLAN tags, and the offset of the L3 header.
#[inline(always)]
fn parse_ethernet(ctx: &XdpContext) -> Result<(u16, usize), Unparsed> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            return Ok((ether_type, offset));
        }
        let vlan: *const VlanHdr = ptr_at(ctx, offset)?;
        // SAFETY: as above.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    if is_vlan(ether_type) {
        return Err(Unparsed);
    }
    Ok((ether_type, offset))
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Parsed, Unparsed> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let (vihl, tot_len, frags, proto) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
        )
    };
    let header_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || tot_len < header_len {
        return Err(Unparsed);
    }
    let src = SourceAt::V4(offset + core::mem::offset_of!(Ipv4Hdr, src_addr));
    let fragment_offset = frags & 0x1fff;
    // More fragments follow: the first fragment's length is not the packet's.
    let whole = frags & 0x2000 == 0;
    let l4 = L4 {
        offset: offset + header_len,
        len: tot_len - header_len,
        proto,
        src,
        whole,
    };
    parse_transport(ctx, &l4, fragment_offset)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Parsed, Unparsed> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let (version, mut remaining, mut next) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
        )
    };
    if version != 6 {
        return Err(Unparsed);
    }
    if is_v4_mapped(ip) {
        return Ok(Parsed::MappedSource);
    }
    let src = SourceAt::V6(offset + core::mem::offset_of!(Ipv6Hdr, src_addr));
    let mut offset = offset + Ipv6Hdr::LEN;
    let mut whole = true;
    // One pass per extension header, plus the one that reaches the L4 header.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6:
            // length in 8-octet units, not counting the first.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let h: *const [u8; 2] = ptr_at(ctx, offset)?;
                // SAFETY: ptr_at checked the two bytes.
                let h = unsafe { *h };
                next = h[0];
                (h[1] as usize + 1) * 8
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let h: *const [u8; 2] = ptr_at(ctx, offset)?;
                // SAFETY: ptr_at checked the two bytes.
                let h = unsafe { *h };
                next = h[0];
                (h[1] as usize + 2) * 4
            }
            44 => {
                let h: *const [u8; 8] = ptr_at(ctx, offset)?;
                // SAFETY: ptr_at checked the eight bytes.
                let h = unsafe { *h };
                let fragment_offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                if fragment_offset != 0 {
                    // The rest of the chain is in the first fragment.
                    return Ok(later_fragment(fragment_offset));
                }
                next = h[0];
                whole = false;
                8
            }
            proto => {
                let l4 = L4 {
                    offset,
                    len: remaining,
                    proto,
                    src,
                    whole,
                };
                return parse_transport(ctx, &l4, 0);
            }
        };
        if len > remaining {
            return Err(Unparsed);
        }
        remaining -= len;
        offset += len;
    }
    Err(Unparsed)
}

/// Whether the IPv6 header's source is `::ffff:a.b.c.d`: its first three 32-bit
/// words (read as words, inside the header `ptr_at` already checked).
#[inline(always)]
fn is_v4_mapped(ip: *const Ipv6Hdr) -> bool {
    // SAFETY: the caller checked the whole fixed header.
    let word =
        |at: usize| u32::from_ne_bytes(unsafe { *(&raw const (*ip).src_addr).cast::<[u8; 4]>().add(at) });
    let words = [word(0), word(1), word(2)];
    words[0] | words[1] == 0 && words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

#[inline(always)]
fn later_fragment(fragment_offset: u16) -> Parsed {
    if fragment_offset == 1 {
        Parsed::OverlappingFragment
    } else {
        Parsed::LaterFragment
    }
}

/// Where the IP header says the L4 header is.
struct L4 {
    offset: usize,
    /// What the IP header says follows.
    len: usize,
    proto: u8,
    src: SourceAt,
    /// Not a fragment (or an IPv6 packet with no fragment header).
    whole: bool,
}

/// A TCP or UDP header that does not fit in what the IP header says follows (a first
/// fragment too short for it, a lying length) is refused.
#[inline(always)]
fn parse_transport(ctx: &XdpContext, l4: &L4, fragment_offset: u16) -> Result<Parsed, Unparsed> {
    if fragment_offset != 0 {
        return Ok(later_fragment(fragment_offset));
    }
    let (offset, len, proto, src) = (l4.offset, l4.len, l4.proto, l4.src);
    match proto {
        PROTO_TCP => {
            if len < TcpHdr::LEN {
                return Err(Unparsed);
            }
            let tcp: *const [u8; TcpHdr::LEN] = ptr_at(ctx, offset)?;
            // SAFETY: ptr_at checked the fixed TCP header.
            let tcp = unsafe { &*tcp };
            if (tcp[12] >> 4) < 5 {
                return Err(Unparsed);
            }
            Ok(Parsed::Transport(Transport {
                src,
                src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
                dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
                proto,
                tcp_flags: tcp[13],
                payload_at: 0,
                payload_len: 0,
            }))
        }
        PROTO_UDP => {
            if len < UdpHdr::LEN {
                return Err(Unparsed);
            }
            let udp: *const UdpHdr = ptr_at(ctx, offset)?;
            // SAFETY: ptr_at checked the UDP header.
            let udp = unsafe { &*udp };
            let payload_len = (udp.len() as usize).min(len).saturating_sub(UdpHdr::LEN);
            Ok(Parsed::Transport(Transport {
                src,
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
                proto,
                tcp_flags: 0,
                payload_at: (offset + UdpHdr::LEN) as u16,
                payload_len: payload_len as u16,
            }))
        }
        PROTO_ICMP | IPPROTO_ICMPV6 => Ok(echo_request(ctx, l4).map_or(Parsed::Other, Parsed::Transport)),
        _ => Ok(Parsed::Other),
    }
}

/// An ICMP echo request over IPv4 or an ICMPv6 one over IPv6, whole and with every
/// byte the IP header promises, as a possible knock of its data size. Anything else
/// (other types, truncated or fragmented echoes, ICMP over the other family) is none
/// of xknock's business and passes as before: the IP stack judges it.
#[inline(always)]
fn echo_request(ctx: &XdpContext, l4: &L4) -> Option<Transport> {
    let request = match (l4.proto, l4.src) {
        (PROTO_ICMP, SourceAt::V4(_)) => ICMP_ECHO_REQUEST,
        (IPPROTO_ICMPV6, SourceAt::V6(_)) => ICMPV6_ECHO_REQUEST,
        _ => return None,
    };
    let icmp: *const [u8; ICMP_ECHO_HEADER_LEN] = ptr_at(ctx, l4.offset).ok()?;
    // SAFETY: ptr_at checked the echo header.
    let icmp_type = unsafe { (*icmp)[0] };
    // Checked after the read: LLVM would otherwise fold ptr_at's check into the
    // length one, which the verifier cannot follow.
    if icmp_type != request
        || !l4.whole
        || l4.len < ICMP_ECHO_HEADER_LEN
        || ctx.data() + l4.offset + l4.len > ctx.data_end()
    {
        return None;
    }
    Some(Transport {
        src: l4.src,
        src_port: 0,
        // At most 65535 - 8: a u16.
        dst_port: (l4.len - ICMP_ECHO_HEADER_LEN) as u16,
        proto: PROTO_ICMP,
        tcp_flags: 0,
        payload_at: 0,
        payload_len: 0,
    })
}
