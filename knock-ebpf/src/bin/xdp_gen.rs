//! The benchmark's traffic generator: run with live frames, it transmits every frame
//! out of the interface it is run on. With GEN_VARY set, each frame gets a new IPv4
//! source address (198.19.x.y from a per-CPU counter), as a flood from many sources.
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

/// Entry 0 nonzero: vary the source address. Written by the benchmark.
#[map]
static GEN_VARY: Array<u32> = Array::with_max_entries(1, 0);

/// Frames sent on this CPU, the source of the varying addresses. Written here.
#[map]
static GEN_COUNT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Offset of the IP header in an untagged frame.
const IP: usize = 14;

#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + IP + 20 > end {
        return XDP_TX;
    }
    let header = (start + IP) as *mut [u8; 20];
    if GEN_VARY.get(0).is_some_and(|v| *v != 0)
        && let Some(count) = GEN_COUNT.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot, and a write within the bounds checked above.
        unsafe {
            *count = (*count).wrapping_add(1);
            let [_, _, hi, lo] = (*count).to_be_bytes();
            let h = &mut *header;
            h[12..16].copy_from_slice(&[198, 19, hi, lo]);
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
