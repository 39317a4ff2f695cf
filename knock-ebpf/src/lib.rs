#![no_std]
//! Lets knock-loader name this crate as a build dependency, so cargo rebuilds the
//! loader when the program changes. The program itself is src/main.rs.
