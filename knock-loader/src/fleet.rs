//! The fleet's protocol core (issue 16), without I/O: how authorizations are named
//! and written in etcd (`record`), what a receiving host accepts, and what a host
//! must publish, delete or uninstall, decided from complete reads of its
//! authorization map and of etcd's listing (`ledger`), never from a stream alone.
//!
//! Not yet wired into `run`: the etcd client and the watcher are still to come
//! (docs/fleet.md says what exists).

pub mod ledger;
pub mod record;
