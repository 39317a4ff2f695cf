//! The benchmark's traffic generator: run with live frames, it transmits every frame
//! out of the interface it is run on. With GEN_VARY set, the frames get IPv4 source
//! addresses from a per-CPU counter, as a flood from many sources: every address of
//! 198.18.0.0/15 but the rig's own 198.18.100.0/24, in turn (SOURCES of them).
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action::XDP_TX,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Entry 0: frames each source address sends in a row; 0 keeps the frame's own.
/// Written by the benchmark.
#[map]
static GEN_VARY: Array<u32> = Array::with_max_entries(1, 0);

/// Frames sent on this CPU, the source of the varying addresses. Written here.
#[map]
static GEN_COUNT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Offset of the IP header in an untagged frame.
const IP: usize = 14;

/// How many source addresses the flood cycles through: a source comes back only after
/// all the others, so a table with fewer entries than this never sees it again.
pub const SOURCES: u32 = (1 << 17) - 256;

/// 198.18.0.0, the start of the range, and the offset of the rig's /24 in it.
const BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const RIG: u32 = 100 << 8;

#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + IP + 20 > end {
        return XDP_TX;
    }
    let header = (start + IP) as *mut [u8; 20];
    let per_source = GEN_VARY.get(0).copied().unwrap_or(0);
    if per_source != 0
        && let Some(count) = GEN_COUNT.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot, and a write within the bounds checked above.
        unsafe {
            *count = (*count).wrapping_add(1);
            let source = (*count / per_source) % SOURCES;
            let skip = if source >= RIG { 256 } else { 0 };
            let h = &mut *header;
            h[12..16].copy_from_slice(&(BASE + source + skip).to_be_bytes());
            // A valid header checksum, so that IP stacks behind other filters take it.
            h[10] = 0;
            h[11] = 0;
            let mut sum = 0u32;
            for i in 0..10 {
                sum += u32::from(u16::from_be_bytes([h[2 * i], h[2 * i + 1]]));
            }
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
    }
    XDP_TX
}
