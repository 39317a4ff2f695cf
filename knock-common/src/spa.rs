//! Single Packet Authorization: the request's limits, its key ids and check values,
//! the kernel's budgets, and what the kernel hands to `run`.

use bytemuck::{Pod, Zeroable};

/// The SPA request format's version (the first payload byte); see docs/spa.md.
pub const SPA_VERSION: u8 = 1;
/// Bytes of a client's key id, after the version byte.
pub const SPA_KEY_ID_LEN: usize = 8;
/// Longest SPA payload the kernel hands to userspace; longer datagrams are refused.
pub const SPA_MAX_PAYLOAD: usize = 512;
/// The shortest fwknop request taken (its default is 225 bytes; fwknopd takes 140 up).
pub const FWKNOP_MIN_PAYLOAD: usize = 140;
/// SPA requests (with a good check value) one source may have handed to userspace
/// per SPA_BUDGET_WINDOW_NS, and refusal events it may cause, each; the kernel sheds
/// (and counts) the rest.
pub const SPA_BUDGET: u32 = 4;
pub const SPA_BUDGET_WINDOW_NS: u64 = 1_000_000_000;
/// Requests each CPU hands to userspace per SPA_BUDGET_WINDOW_NS, whatever their
/// sources (XK_SPA_CAP): what bounds `run`'s work when many sources flood.
pub const SPA_CAP_REQUESTS: u32 = 1024;
/// Refusal events each CPU makes per SPA_BUDGET_WINDOW_NS, whatever their sources.
pub const SPA_CAP_EVENTS: u32 = 1024;
/// SPA clients (key ids) the kernel knows.
pub const SPA_KEYS: u32 = 1024;

/// Bytes of the request's nonce, after the key id; its last SPA_CHECK_LEN bytes are
/// the check value ([`spa_check`]).
pub const SPA_NONCE_LEN: usize = 24;
/// Bytes of the check value at the end of the nonce.
pub const SPA_CHECK_LEN: usize = 8;
/// Version, key id and nonce: the clear header every request starts with.
pub const SPA_HEADER_LEN: usize = 1 + SPA_KEY_ID_LEN + SPA_NONCE_LEN;

/// The value of a configured key id in XK_SPA_KEYS: the client's check key, derived
/// from its secret key (`Key::check_key` in the loader), under which the kernel checks
/// a request's check value before it counts against the source's budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SpaCheckKey {
    /// SipHash-2-4's key, as two little-endian words.
    pub k: [u64; 2],
}

/// The check value of a request: SipHash-2-4 under the client's check key of its key
/// id and the first 16 bytes of its nonce (24 bytes, as three little-endian words),
/// which the client puts in the nonce's last 8 bytes (little-endian). Someone
/// without the key cannot make one: a blind flood under a client's key id and a
/// victim's address is refused in the kernel, before it costs the victim's budget.
#[inline(always)]
pub fn spa_check(key: &SpaCheckKey, key_id: u64, nonce0: u64, nonce1: u64) -> u64 {
    siphash24(key.k[0], key.k[1], &[key_id, nonce0, nonce1], 0, 24)
}

/// SipHash-2-4 (Aumasson and Bernstein) of a message of `len` bytes: `words` its
/// whole little-endian words, `tail` the remaining `len % 8` bytes (little-endian,
/// zero above). Plain word arithmetic, so the kernel program can run it.
#[inline(always)]
pub fn siphash24(k0: u64, k1: u64, words: &[u64], tail: u64, len: u8) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    for &m in words {
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    let last = (u64::from(len) << 56) | tail;
    v[3] ^= last;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// A configured SPA key id: the key of the key-id map, which lets the kernel drop
/// requests no client could have sent before they cost userspace anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SpaKeyId {
    pub id: [u8; SPA_KEY_ID_LEN],
}

/// A source's SPA requests in the current budget window. Written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SpaBudget {
    pub window_start_ns: u64,
    /// Requests handed over in the window (a good check value only).
    pub requests: u32,
    /// Refusal events made in the window.
    pub refusals: u32,
}

/// One CPU's SPA handovers and refusal events in the current window, the global cap
/// (entry 0 of the per-CPU XK_SPA_CAP). Written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SpaCap {
    pub window_start_ns: u64,
    pub requests: u32,
    pub refusals: u32,
}

/// An SPA request as the kernel hands it to `xknock run`: the source and the UDP
/// payload (`len` bytes of `payload`), unverified.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SpaRequest {
    /// Kernel clock, ns (without the settings' clock offset).
    pub ts_ns: u64,
    /// IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    pub len: u32,
    pub _pad: u32,
    pub payload: [u8; SPA_MAX_PAYLOAD],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vectors of the SipHash paper (key 00..0f, message 00..len-1),
    /// and one of 24 bytes, the length of a check.
    #[test]
    fn siphash24_matches_the_reference() {
        let word = |from: u64, n: u64| (0..n).fold(0u64, |w, i| w | ((from + i) << (8 * i)));
        let (k0, k1) = (word(0, 8), word(8, 8));
        assert_eq!(siphash24(k0, k1, &[], 0, 0), 0x726f_db47_dd0e_0e31);
        assert_eq!(
            siphash24(k0, k1, &[word(0, 8)], word(8, 7), 15),
            0xa129_ca61_49be_45e5
        );
        let key = SpaCheckKey { k: [k0, k1] };
        assert_eq!(
            spa_check(&key, word(0, 8), word(8, 8), word(16, 8)),
            0xb8ad_50c6_f649_af94
        );
    }
}
