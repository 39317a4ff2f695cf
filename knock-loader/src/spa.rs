//! Single Packet Authorization, the protocol: one UDP datagram, sealed with
//! XChaCha20-Poly1305 under a key of each client's own, asks the server to open
//! sequences' protected ports for an address. `packet` is the wire format, `keys` the
//! keys and the client's key file. The XDP program drops every packet to the SPA port
//! and passes its payload to `xknock run`, whose verifier (`daemon::spa`) turns it
//! into a grant or a rejection; `client::spa` is the sending side.

pub mod fwknop;
pub mod keys;
pub mod packet;

pub use keys::{ClientKey, Key, KeyId, read_key_file};
pub use knock_common::SPA_MAX_PAYLOAD;
pub use packet::{Access, Request};

/// fwknop's port, so firewalls already configured for SPA let requests through.
pub const DEFAULT_PORT: u16 = 62201;
pub const DEFAULT_REPLAY_FILE: &str = "/var/lib/xknock/spa-replay";
