//! The TOML configuration: parsed with serde, validated whole before anything touches
//! the kernel (`parse`), and turned into the kernel's tables (`kernel`). Every error
//! names the file, the line and the key.

mod commands;
mod kernel;
mod parse;
mod spa;

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use knock_common::{PROTO_TCP, PROTO_UDP, PortProto};
use serde::Deserialize;

use crate::{
    commands::Template,
    spa::{Key, KeyId},
    timed::TimedSecret,
};

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

/// A port and protocol, written `PORT/tcp` or `PORT/udp` (`PORT` alone means TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Knock {
    pub port: u16,
    pub proto: u8,
}

impl FromStr for Knock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = match s.split_once('/') {
            Some((port, "tcp")) => (port, PROTO_TCP),
            Some((port, "udp")) => (port, PROTO_UDP),
            Some((_, other)) => return Err(format!("unknown protocol {other:?} in {s:?}: use tcp or udp")),
            None => (s, PROTO_TCP),
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Knock { port, proto }),
            _ => Err(format!(
                "{s:?} is not PORT/tcp or PORT/udp with PORT from 1 to 65535"
            )),
        }
    }
}

impl fmt::Display for Knock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.proto == PROTO_UDP { "udp" } else { "tcp" };
        write!(f, "{}/{proto}", self.port)
    }
}

impl From<Knock> for PortProto {
    fn from(k: Knock) -> Self {
        PortProto::new(k.port, k.proto)
    }
}

/// One validated sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub name: String,
    pub knocks: Vec<Knock>,
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
    /// At least one; names, key ids and keys all distinct.
    pub clients: Vec<SpaClient>,
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

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
