//! What every eBPF binary of this crate needs (as in knock-ebpf): a panic handler (a panic cannot happen in
//! verified code, but `no_std` needs one) and the license the kernel reads.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
