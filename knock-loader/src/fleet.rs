//! The fleet's protocol core (issue 16), without I/O: how authorizations are named
//! and written in etcd (`record`), what a receiving host accepts, and what a host
//! must publish, delete or uninstall, decided from complete reads of its
//! authorization map and of etcd's listing (`ledger`), never from a stream alone.
//!
//! `daemon::fleet` is the I/O: the etcd client, the watcher, and what `run` does
//! with their reports.

pub mod ledger;
pub mod record;
