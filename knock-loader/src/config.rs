//! The TOML configuration: parsed with serde, validated whole before anything touches
//! the kernel (`parse`), and turned into the kernel's tables (`kernel`). Every error
//! names the file, the line and the key.

mod commands;
mod fleet;
mod kernel;
mod parse;
mod spa;
pub mod template;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use serde::Deserialize;

use crate::net::{Knock, KnockSpec};
use crate::{
    spa::{Key, KeyId, fwknop},
    timed::TimedSecret,
};
use template::Template;

pub use fleet::{Fleet, OfflineSpa, PrivatePem, Shared, Tls, check_prefix};
pub use kernel::{Background, rule_index};
pub use parse::parse_tcp_flags;

pub const DEFAULT_CONFIG: &str = "/etc/xknock/xknock.toml";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xknock";

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to skb mode where the driver has no XDP.
    #[default]
    Auto,
    /// Native mode only; fail if the driver cannot.
    Native,
    /// Generic (skb) mode: works everywhere, costs more.
    Skb,
}

/// One validated sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub name: String,
    pub knocks: Vec<Knock>,
    /// The knocks marked `:pass`: their packets also pass on to what serves there.
    pub passing: Vec<Knock>,
    pub protect: Vec<Knock>,
    pub open_for: Duration,
    pub step_timeout: Duration,
    pub sequence_timeout: Duration,
    pub idle_timeout: Duration,
    pub strict: bool,
    pub keep_established: bool,
    /// `wrong_knock = "ignore"`: out-of-order knocks leave progress alone.
    pub ignore_wrong: bool,
    pub tcp_flags_set: u8,
    pub tcp_flags_clear: u8,
    /// A time-based sequence: `knocks` is empty here and comes from the secret and
    /// the time (`Config::kernel_slots`).
    pub timed: Option<Timed>,
    /// knockd's `one_time_sequences`: the file whose first unused line `knocks` is.
    pub one_time: Option<PathBuf>,
    /// A kernel slot of a time-based sequence: when its knocks stop counting (the
    /// end of their period and grace). Set by `Config::kernel_slots` only.
    pub valid_until: Option<std::time::SystemTime>,
    /// Run when a source is authorized (knockd's start_command).
    pub on_open: Option<Template>,
    /// Run when an authorization ends (knockd's stop_command).
    pub on_close: Option<Template>,
}

/// A time-based sequence's secret (`secret_file`), and how long into a period the
/// previous period's knocks still count (`grace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed {
    pub secret: TimedSecret,
    pub grace: Duration,
}

impl Timed {
    /// Whether `k` can be one of this sequence's knocks (its protocol and range).
    pub fn covers(&self, k: Knock) -> bool {
        k.proto == self.secret.proto && self.secret.ports.contains(&k.port)
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    pub sequences: Vec<Sequence>,
    pub ban: BanPolicy,
    /// Sources that always reach the protected ports (knocks not needed).
    pub allow: Vec<IpNet>,
    /// Sources that never do; their knocks are ignored.
    pub deny: Vec<IpNet>,
    pub limits: Limits,
    /// Single Packet Authorization (`[spa]`), if configured.
    pub spa: Option<SpaConfig>,
    /// How `on_open` and `on_close` commands run (`[commands]`).
    pub commands: CommandLimits,
    /// `[events]`: how many knock and reset events each CPU makes.
    pub events: EventLimits,
    /// `stealth = true`: SYNs and datagrams to every port but the configured and the
    /// `public` ones (and UDP replies to the local ephemeral range) are dropped.
    pub stealth: Option<Stealth>,
    /// `[fleet]`: authorizations shared with other hosts through etcd.
    pub fleet: Option<Fleet>,
}

/// Stealth's ports that serve normally (`public`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stealth {
    pub public: Vec<Knock>,
}

/// `[events]`: per CPU, at most `rate` knock and reset events a second, after a
/// burst of `burst`; the kernel counts the rest, and `run` reports them once a second.
/// Open, close, ban and the other rare events are never limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventLimits {
    pub rate: u32,
    pub burst: u32,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits { rate: 10, burst: 20 }
    }
}

/// `[commands]`: bounds on the `on_open` and `on_close` commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandLimits {
    /// A command still running after this is killed, with what it started.
    pub timeout: Duration,
    /// At most this many run at once...
    pub max_running: usize,
    /// ...and this many wait; a command that finds the queue full is dropped.
    pub max_queued: usize,
}

impl Default for CommandLimits {
    fn default() -> Self {
        CommandLimits {
            timeout: Duration::from_secs(10),
            max_running: 4,
            max_queued: 64,
        }
    }
}

/// Single Packet Authorization (`[spa]`): the UDP port requests go to, how they are
/// checked, and the clients that may send them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaConfig {
    /// The UDP port requests go to.
    pub port: u16,
    /// Accepted clock skew either way; also how long nonces are remembered.
    pub window: Duration,
    /// Where the replay cache is kept across restarts of `run`.
    pub replay_file: PathBuf,
    /// Names, key ids and keys all distinct; with `fwknop`, at least one client.
    pub clients: Vec<SpaClient>,
    /// fwknop's clients (`[[spa.fwknop]]`), on the same port.
    pub fwknop: Vec<FwknopClient>,
}

/// One `[[spa.fwknop]]`: a client of fwknop's (Rijndael + HMAC mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwknopClient {
    pub name: String,
    /// Its encryption and HMAC keys (distinct) and HMAC digest.
    pub keys: fwknop::Keys,
    /// The sequences it may open, by name; a request's ports open those of them that
    /// protect the ports.
    pub sequences: Vec<String>,
    /// The longest client timeout honoured.
    pub max_open: Duration,
    /// Authorize the address the request names (not only the packet's source or
    /// `0.0.0.0`).
    pub behind_nat: bool,
}

/// One `[[spa.client]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaClient {
    pub name: String,
    pub key_id: KeyId,
    /// The secret key (from `key` or `key_file`; its Debug shows nothing).
    pub key: Key,
    /// The sequences the client may open, by name; each is a configured sequence.
    pub sequences: Vec<String>,
    /// The longest `open_for` the client may ask for.
    pub max_open: Duration,
    /// Authorize the address the request names, not the packet's source (a client
    /// behind NAT cannot know the address the server sees).
    pub behind_nat: bool,
}

/// Sizes of the kernel's tracking maps (`[limits]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// (source, sequence) pairs part-way through a sequence; LRU: the oldest go first.
    pub in_progress: u32,
    /// (source, sequence) authorizations; when full, new ones are refused loudly.
    pub authorized: u32,
    /// Connections kept past their window; LRU.
    pub kept_connections: u32,
    /// Sources with failures or a ban; LRU.
    pub ban_records: u32,
}

impl Default for Limits {
    /// The sizes compiled into the program.
    fn default() -> Self {
        Limits {
            in_progress: 65536,
            authorized: 16384,
            kept_connections: 65536,
            ban_records: 65536,
        }
    }
}

/// Brute-force lockout: more than `failures` resets within `window` ban the source
/// for `ban_for` (its knocks are ignored, the protected ports and its kept connections
/// are closed to it). IPv6 sources count by their `ipv6_prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanPolicy {
    /// Zero turns bans off.
    pub failures: u32,
    pub window: Duration,
    pub ban_for: Duration,
    /// An IPv6 source's failures and ban are its prefix's of this length (`[ban]
    /// ipv6_prefix`, 1..=128); IPv4 sources count one by one.
    pub ipv6_prefix: u8,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        parse::parse(path, text)
    }
}

/// Letters, digits, '-', '_' and '.', at least one: what sequence and client names are
/// made of (they go into events, logs and the client's requests).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret_file::write_private_new as write_private;

    #[test]
    fn a_later_line_on_a_protected_port_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otp");
        write_private(
            &path,
            "1000,2000
3000,22
",
        )
        .expect("write");
        let toml = format!(
            "[[sequence]]\nname = \"door\"\none_time_sequences = \"{}\"\nprotect = [\"22/tcp\"]\n",
            path.display()
        );
        let e = Config::parse(Path::new("x.toml"), &toml).expect_err("line 2 knocks on 22");
        let e = format!("{e:#}");
        assert!(
            e.contains("otp:2: 22/tcp is protected by sequence \"door\""),
            "{e}"
        );
    }
}
