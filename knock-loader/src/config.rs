//! The TOML configuration: parsed with serde, validated whole before anything touches
//! the kernel, and turned into the kernel's tables. Every error names the file, the
//! line and the key.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use knock_common::{
    MAX_KNOCKS, MAX_PROTECTED, MAX_SEQUENCES, NAME_LEN, PROTO_TCP, PROTO_UDP, PortProto, PortRule,
    SEQ_KEEP_ESTABLISHED, SEQ_STRICT, SequenceConfig, TCP_ACK, port_rule_index,
};
use serde::Deserialize;
use toml::Spanned;

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
    pub tcp_flags_set: u8,
    pub tcp_flags_clear: u8,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    pub sequences: Vec<Sequence>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<OneOrMany>,
    #[serde(default)]
    xdp_mode: XdpMode,
    pin_dir: Option<PathBuf>,
    #[serde(default)]
    sequence: Vec<Spanned<RawSequence>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSequence {
    name: Spanned<String>,
    knocks: Spanned<Vec<Spanned<String>>>,
    protect: Spanned<Vec<Spanned<String>>>,
    open_for: Option<Spanned<String>>,
    step_timeout: Option<Spanned<String>>,
    sequence_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    strict: bool,
    tcp_flags: Option<Spanned<String>>,
    keep_established: Option<bool>,
    on_open: Option<Spanned<String>>,
    on_close: Option<Spanned<String>>,
}

const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(30);
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SEQUENCE_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where errors point: the file and its text, to turn byte offsets into lines.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn at<T>(&self, spanned: &Spanned<T>, key: &str, message: impl fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{}:{}: {key}: {message}",
            self.path.display(),
            self.line(spanned.span().start)
        )
    }

    fn duration(&self, value: &Option<Spanned<String>>, key: &str, default: Duration) -> Result<Duration> {
        let Some(value) = value else { return Ok(default) };
        let d = humantime::parse_duration(value.get_ref()).map_err(|e| {
            self.at(
                value,
                key,
                format!(
                    "{:?} is not a duration like 500ms, 30s or 5m ({e})",
                    value.get_ref()
                ),
            )
        })?;
        if d.is_zero() {
            return Err(self.at(value, key, "must be longer than zero"));
        }
        Ok(d)
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| format!(":{}", Source { path, text }.line(s.start)))
                .unwrap_or_default();
            anyhow::anyhow!("{}{line}: {}", path.display(), e.message())
        })?;
        let src = Source { path, text };
        if raw.sequence.is_empty() {
            bail!("{}: no [[sequence]]: nothing to protect", path.display());
        }
        if raw.sequence.len() > MAX_SEQUENCES {
            return Err(src.at(
                &raw.sequence[MAX_SEQUENCES],
                "sequence",
                format!("at most {MAX_SEQUENCES} sequences"),
            ));
        }
        let mut sequences = Vec::new();
        for raw_seq in &raw.sequence {
            sequences.push(parse_sequence(&src, raw_seq.get_ref())?);
        }
        check_across(&src, &raw.sequence, &sequences)?;
        let interfaces = match raw.interface {
            None => vec![],
            Some(OneOrMany::One(i)) => vec![i],
            Some(OneOrMany::Many(v)) => v,
        };
        Ok(Config {
            interfaces,
            xdp_mode: raw.xdp_mode,
            pin_dir: raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            sequences,
        })
    }

    /// The kernel's sequence table, one entry per configured sequence.
    pub fn sequence_table(&self) -> Vec<SequenceConfig> {
        self.sequences.iter().map(Sequence::kernel_config).collect()
    }

    /// Nonzero entries of the kernel's port-rule array.
    pub fn port_rules(&self) -> HashMap<u32, PortRule> {
        let mut rules: HashMap<u32, PortRule> = HashMap::new();
        for (i, seq) in self.sequences.iter().enumerate() {
            let bit = 1u8 << i;
            for k in &seq.knocks {
                rules.entry(rule_index(*k)).or_default().knock_mask |= bit;
            }
            for p in &seq.protect {
                rules.entry(rule_index(*p)).or_default().protect_mask |= bit;
            }
        }
        rules
    }

    pub fn strict_mask(&self) -> u8 {
        self.sequences
            .iter()
            .enumerate()
            .filter(|(_, s)| s.strict)
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }
}

pub fn rule_index(k: Knock) -> u32 {
    // Knock only holds TCP or UDP, which always have an index.
    port_rule_index(k.proto, k.port).unwrap_or_default()
}

impl Sequence {
    pub fn kernel_config(&self) -> SequenceConfig {
        let mut c: SequenceConfig = bytemuck::Zeroable::zeroed();
        c.step_timeout_ns = nanos(self.step_timeout);
        c.sequence_timeout_ns = nanos(self.sequence_timeout);
        c.open_for_ns = nanos(self.open_for);
        c.idle_timeout_ns = nanos(self.idle_timeout);
        for (slot, k) in c.knocks.iter_mut().zip(&self.knocks) {
            *slot = (*k).into();
        }
        for (slot, k) in c.protect.iter_mut().zip(&self.protect) {
            *slot = (*k).into();
        }
        c.n_knocks = self.knocks.len() as u8;
        c.n_protect = self.protect.len() as u8;
        c.flags = if self.strict { SEQ_STRICT } else { 0 }
            | if self.keep_established {
                SEQ_KEEP_ESTABLISHED
            } else {
                0
            };
        c.tcp_flags_set = self.tcp_flags_set;
        c.tcp_flags_clear = self.tcp_flags_clear;
        for (slot, b) in c.name.iter_mut().zip(self.name.as_bytes()) {
            *slot = *b;
        }
        c
    }
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn parse_ports(
    src: &Source,
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    max: usize,
) -> Result<Vec<Knock>> {
    if list.get_ref().is_empty() {
        return Err(src.at(list, key, "must list at least one PORT/tcp or PORT/udp"));
    }
    if list.get_ref().len() > max {
        return Err(src.at(list, key, format!("at most {max} entries")));
    }
    list.get_ref()
        .iter()
        .map(|s| s.get_ref().parse::<Knock>().map_err(|e| src.at(s, key, e)))
        .collect()
}

fn parse_sequence(src: &Source, raw: &RawSequence) -> Result<Sequence> {
    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || name.len() >= NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(src.at(
            &raw.name,
            "name",
            format!(
                "{name:?}: use 1 to {} letters, digits, '-', '_' or '.'",
                NAME_LEN - 1
            ),
        ));
    }
    let knocks = parse_ports(src, &raw.knocks, "knocks", MAX_KNOCKS)?;
    if let Some(w) = knocks.windows(2).find(|w| w[0] == w[1]) {
        return Err(src.at(
            &raw.knocks,
            "knocks",
            format!(
                "{} twice in a row: a retransmitted knock could not be told from the next one",
                w[0]
            ),
        ));
    }
    let protect = parse_ports(src, &raw.protect, "protect", MAX_PROTECTED)?;
    if let Some(p) = protect.iter().find(|p| knocks.contains(p)) {
        return Err(src.at(
            &raw.protect,
            "protect",
            format!("{p} is also a knock of this sequence"),
        ));
    }
    let (tcp_flags_set, tcp_flags_clear) = match &raw.tcp_flags {
        None => parse_tcp_flags("syn").map_err(anyhow::Error::msg)?,
        Some(f) => parse_tcp_flags(f.get_ref()).map_err(|e| src.at(f, "tcp_flags", e))?,
    };
    for (value, key) in [(&raw.on_open, "on_open"), (&raw.on_close, "on_close")] {
        if let Some(v) = value {
            return Err(src.at(
                v,
                key,
                "commands on open and close are not supported yet; remove the key",
            ));
        }
    }
    let seq = Sequence {
        name,
        knocks,
        protect,
        open_for: src.duration(&raw.open_for, "open_for", DEFAULT_OPEN_FOR)?,
        step_timeout: src.duration(&raw.step_timeout, "step_timeout", DEFAULT_STEP_TIMEOUT)?,
        sequence_timeout: src.duration(
            &raw.sequence_timeout,
            "sequence_timeout",
            DEFAULT_SEQUENCE_TIMEOUT,
        )?,
        idle_timeout: src.duration(&raw.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?,
        strict: raw.strict,
        keep_established: raw.keep_established.unwrap_or(true),
        tcp_flags_set,
        tcp_flags_clear,
    };
    Ok(seq)
}

/// Checks that need all sequences: unique names, sequences that can be told apart,
/// no port that is a knock of one sequence and protected by another.
fn check_across(src: &Source, raw: &[Spanned<RawSequence>], seqs: &[Sequence]) -> Result<()> {
    let mut names = HashSet::new();
    let knock_ports: HashMap<Knock, &str> = seqs
        .iter()
        .flat_map(|s| s.knocks.iter().map(move |k| (*k, s.name.as_str())))
        .collect();
    for (raw, seq) in raw.iter().zip(seqs) {
        let raw = raw.get_ref();
        if !names.insert(seq.name.as_str()) {
            return Err(src.at(
                &raw.name,
                "name",
                format!("a second sequence named {:?}", seq.name),
            ));
        }
        if let Some((p, other)) = seq
            .protect
            .iter()
            .find_map(|p| knock_ports.get(p).map(|o| (p, o)))
        {
            return Err(src.at(
                &raw.protect,
                "protect",
                format!("{p} is a knock of sequence {other:?}: a port cannot be both"),
            ));
        }
        if let Some(other) = seqs
            .iter()
            .take_while(|o| !std::ptr::eq(*o, seq))
            .find(|o| o.knocks == seq.knocks)
        {
            return Err(src.at(
                &raw.knocks,
                "knocks",
                format!(
                    "the same knocks as sequence {:?}: the two cannot be told apart",
                    other.name
                ),
            ));
        }
    }
    Ok(())
}

/// `tcp_flags`: comma-separated names that must be set, `!name` for ones that must be
/// clear. ACK must be clear unless the list names it (so "syn" is a SYN without ACK).
pub fn parse_tcp_flags(s: &str) -> Result<(u8, u8), String> {
    const NAMES: [(&str, u8); 8] = [
        ("fin", 0x01),
        ("syn", 0x02),
        ("rst", 0x04),
        ("psh", 0x08),
        ("ack", 0x10),
        ("urg", 0x20),
        ("ece", 0x40),
        ("cwr", 0x80),
    ];
    let (mut set, mut clear, mut ack_named) = (0u8, 0u8, false);
    for word in s.split(',').map(str::trim) {
        let (negated, name) = match word.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, word),
        };
        let Some(&(_, bit)) = NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
            return Err(format!(
                "{word:?} is not a TCP flag (fin, syn, rst, psh, ack, urg, ece, cwr, each optionally with a leading !)"
            ));
        };
        ack_named |= bit == TCP_ACK;
        if negated { clear |= bit } else { set |= bit }
    }
    if set & clear != 0 {
        return Err(format!("{s:?} asks for a flag both set and clear"));
    }
    if set == 0 {
        return Err(format!(
            "{s:?} names no flag that must be set: every TCP packet would knock"
        ));
    }
    if !ack_named {
        clear |= TCP_ACK;
    }
    Ok((set, clear))
}
