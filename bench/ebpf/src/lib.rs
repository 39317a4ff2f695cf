#![no_std]
//! Lets the benchmark name this crate as a build dependency, so cargo rebuilds it when
//! the programs change. The programs themselves are src/bin/xdp_pass.rs and
//! src/bin/xdp_gen.rs.
