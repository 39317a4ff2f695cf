//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`. The IPv4 header checksum is right
//! (the benchmark sends frames to a real IP stack); L4 checksums are left zero.

use std::net::IpAddr;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;

/// The host under test.
pub const SERVER_V4: &str = "198.18.0.1";
pub const SERVER_V6: &str = "fd00::1";

#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// The ICMP or ICMPv6 type, for those protocols (8 and 128: echo requests).
    pub icmp_type: u8,
    /// TPIDs of VLAN tags, outermost first.
    pub vlans: Vec<u16>,
    /// IPv4 options, in 4-byte words (IHL = 5 + this).
    pub ipv4_option_words: u8,
    /// IPv6 extension headers (next-header numbers) before the L4 header.
    pub ipv6_ext: Vec<u8>,
    /// (offset in 8-byte units, more fragments): a fragment header / fields.
    pub fragment: Option<(u16, bool)>,
    /// Bytes of the L4 header actually present (None: all of it).
    pub l4_bytes: Option<usize>,
    /// The destination (None: SERVER_V4 or SERVER_V6).
    pub dst: Option<IpAddr>,
    /// Bytes after the L4 header (the UDP length counts them).
    pub payload: Vec<u8>,
}

impl Frame {
    fn new(src: &str, proto: u8, dport: u16, tcp_flags: u8) -> Frame {
        Frame {
            src: src.parse().expect("source address"),
            proto,
            sport: 40000,
            dport,
            tcp_flags,
            icmp_type: 0,
            vlans: vec![],
            ipv4_option_words: 0,
            ipv6_ext: vec![],
            fragment: None,
            l4_bytes: None,
            dst: None,
            payload: vec![],
        }
    }

    /// A TCP SYN from `src` to `dport`.
    pub fn syn(src: &str, dport: u16) -> Frame {
        Frame::new(src, 6, dport, SYN)
    }

    pub fn udp(src: &str, dport: u16) -> Frame {
        Frame::new(src, 17, dport, 0)
    }

    /// Another IP protocol (ICMP of type 0, SCTP, ...), with an 8-byte header.
    pub fn other(src: &str, proto: u8) -> Frame {
        Frame::new(src, proto, 0, 0)
    }

    /// An ICMP (IPv4) or ICMPv6 echo request with `size` bytes of data, what
    /// `ping -s SIZE` sends: the ICMP knock `SIZE/icmp`.
    pub fn echo(src: &str, size: usize) -> Frame {
        let mut f = Frame::new(src, 1, 0, 0);
        if f.src.is_ipv6() {
            (f.proto, f.icmp_type) = (58, 128);
        } else {
            f.icmp_type = 8;
        }
        f.payload = (0..size).map(|i| i as u8).collect();
        f
    }

    pub fn icmp_type(mut self, icmp_type: u8) -> Frame {
        self.icmp_type = icmp_type;
        self
    }

    pub fn flags(mut self, flags: u8) -> Frame {
        self.tcp_flags = flags;
        self
    }

    pub fn sport(mut self, sport: u16) -> Frame {
        self.sport = sport;
        self
    }

    pub fn vlan(mut self, tpid: u16) -> Frame {
        self.vlans.push(tpid);
        self
    }

    pub fn ipv4_options(mut self, words: u8) -> Frame {
        self.ipv4_option_words = words;
        self
    }

    pub fn ext(mut self, next_header: u8) -> Frame {
        self.ipv6_ext.push(next_header);
        self
    }

    pub fn fragment(mut self, offset: u16, more: bool) -> Frame {
        self.fragment = Some((offset, more));
        self
    }

    /// Cuts the L4 header to `n` bytes (the IP lengths say so too, as in a tiny
    /// first fragment).
    pub fn l4_bytes(mut self, n: usize) -> Frame {
        self.l4_bytes = Some(n);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Frame {
        self.payload = payload.to_vec();
        self
    }

    pub fn dst(mut self, dst: IpAddr) -> Frame {
        self.dst = Some(dst);
        self
    }

    /// The IP packet alone, for a raw socket (no VLAN tags).
    pub fn ip_packet(&self) -> Vec<u8> {
        assert!(self.vlans.is_empty(), "a raw IP packet carries no VLAN tags");
        self.build()[14..].to_vec()
    }

    fn l4(&self) -> Vec<u8> {
        let later_fragment = matches!(self.fragment, Some((off, _)) if off != 0);
        let mut l4 = match self.proto {
            _ if later_fragment => vec![0xab; 64],
            6 => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = self.tcp_flags;
                h
            }
            17 => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..6].copy_from_slice(&(8 + self.payload.len() as u16).to_be_bytes());
                h
            }
            // Type, code, checksum (left zero), identifier, sequence number.
            1 | 58 => vec![self.icmp_type, 0, 0, 0, 0x12, 0x34, 0, 1],
            _ => vec![0u8; 8],
        };
        match self.l4_bytes {
            Some(n) => l4.truncate(n),
            None => l4.extend_from_slice(&self.payload),
        }
        l4
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]); // VLAN 100
        }
        let l4 = self.l4();
        match self.src {
            IpAddr::V4(src) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + self.ipv4_option_words as usize;
                let tot_len = (ihl * 4 + l4.len()) as u16;
                let (off, more) = self.fragment.unwrap_or((0, false));
                let frags = off | if more { 0x2000 } else { 0 };
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&tot_len.to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34]);
                f.extend_from_slice(&frags.to_be_bytes());
                f.extend_from_slice(&[64, self.proto, 0, 0]);
                f.extend_from_slice(&src.octets());
                let dst = match self.dst {
                    Some(IpAddr::V4(d)) => d,
                    _ => SERVER_V4.parse().expect("v4"),
                };
                f.extend_from_slice(&dst.octets());
                // NOP options.
                f.extend(std::iter::repeat_n(1u8, self.ipv4_option_words as usize * 4));
                // The header checksum, so that a real IP stack accepts the frame too.
                let start = f.len() - ihl * 4;
                let sum = ipv4_checksum(&f[start..]);
                f[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
            }
            IpAddr::V6(src) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut chain: Vec<u8> = self.ipv6_ext.clone();
                if self.fragment.is_some() && !chain.contains(&44) {
                    chain.push(44);
                }
                let mut ext = Vec::new();
                for (i, nh) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).copied().unwrap_or(self.proto);
                    match nh {
                        44 => {
                            let (off, more) = self.fragment.unwrap_or((0, false));
                            let field = (off << 3) | u16::from(more);
                            ext.extend_from_slice(&[next, 0]);
                            ext.extend_from_slice(&field.to_be_bytes());
                            ext.extend_from_slice(&[0, 0, 0x12, 0x34]);
                        }
                        51 => ext.extend_from_slice(&[
                            next, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        ]),
                        _ => ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
                    }
                }
                let first = chain.first().copied().unwrap_or(self.proto);
                let payload_len = (ext.len() + l4.len()) as u16;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&payload_len.to_be_bytes());
                f.extend_from_slice(&[first, 64]);
                f.extend_from_slice(&src.octets());
                let dst = match self.dst {
                    Some(IpAddr::V6(d)) => d,
                    _ => SERVER_V6.parse().expect("v6"),
                };
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(&ext);
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// The Internet checksum of an IPv4 header whose checksum field is zero.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP request: not IP at all.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0; 20]);
    f
}
