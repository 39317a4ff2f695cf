//! Reading the TOML: serde structures with spans, and the checks that need them.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};
use ipnet::IpNet;
use knock_common::{MAX_KNOCKS, MAX_PROTECTED, MAX_SEQUENCES, NAME_LEN, TCP_ACK};
use serde::Deserialize;
use toml::Spanned;

use super::{
    BanPolicy, Config, DEFAULT_PIN_DIR, Knock, Limits, Sequence, XdpMode, is_plain_name,
    spa::{RawSpa, parse_spa},
};

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
    #[serde(default)]
    ban: RawBan,
    #[serde(default)]
    limits: Option<Spanned<Limits>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    spa: Option<Spanned<RawSpa>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBan {
    failures: Option<u32>,
    window: Option<Spanned<String>>,
    ban_for: Option<Spanned<String>>,
}

/// What a knock of the sequence out of order does.
#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WrongKnock {
    #[default]
    Reset,
    Ignore,
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
    #[serde(default)]
    wrong_knock: WrongKnock,
    on_open: Option<Spanned<String>>,
    on_close: Option<Spanned<String>>,
}

const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(30);
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SEQUENCE_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_BAN_FAILURES: u32 = 5;
/// Longer is a typo, not a policy (and nanoseconds overflow past 584 years).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest map `[limits]` may ask for (16M entries: gigabytes of kernel memory).
const MAX_MAP_ENTRIES: u32 = 1 << 24;
const DEFAULT_BAN_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_BAN_FOR: Duration = Duration::from_secs(600);
/// Where errors point: the file and its text, to turn byte offsets into lines.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    pub(super) fn at<T>(&self, spanned: &Spanned<T>, key: &str, message: impl fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{}:{}: {key}: {message}",
            self.path.display(),
            self.line(spanned.span().start)
        )
    }

    pub(super) fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration> {
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
        if d > MAX_DURATION {
            return Err(self.at(value, key, "must be at most a year"));
        }
        Ok(d)
    }
}

pub(super) fn parse(path: &Path, text: &str) -> Result<Config> {
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
    let (allow, deny) = parse_access(&src, &raw.allow, &raw.deny)?;
    let limits = match &raw.limits {
        None => Limits::default(),
        Some(l) => {
            let v = *l.get_ref();
            let sizes = [v.in_progress, v.authorized, v.kept_connections, v.ban_records];
            if sizes.iter().any(|n| !(1..=MAX_MAP_ENTRIES).contains(n)) {
                return Err(src.at(
                    l,
                    "limits",
                    format!("each size must be from 1 to {MAX_MAP_ENTRIES}"),
                ));
            }
            v
        }
    };
    let ban = BanPolicy {
        failures: raw.ban.failures.unwrap_or(DEFAULT_BAN_FAILURES),
        window: src.duration(&raw.ban.window, "ban.window", DEFAULT_BAN_WINDOW)?,
        ban_for: src.duration(&raw.ban.ban_for, "ban.ban_for", DEFAULT_BAN_FOR)?,
    };
    let spa = raw
        .spa
        .as_ref()
        .map(|s| parse_spa(&src, s, &sequences))
        .transpose()?;
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
        ban,
        allow,
        deny,
        limits,
        spa,
    })
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
    if name.len() >= NAME_LEN || !is_plain_name(&name) {
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
        ignore_wrong: matches!(raw.wrong_knock, WrongKnock::Ignore),
        tcp_flags_set,
        tcp_flags_clear,
    };
    if seq.step_timeout > seq.sequence_timeout {
        let at = raw.step_timeout.as_ref().or(raw.sequence_timeout.as_ref());
        let message = format!(
            "step_timeout ({}) is longer than sequence_timeout ({}): it could never apply",
            humantime::format_duration(seq.step_timeout),
            humantime::format_duration(seq.sequence_timeout)
        );
        return Err(match at {
            Some(v) => src.at(v, "step_timeout", message),
            None => src.at(&raw.name, "step_timeout", message),
        });
    }
    Ok(seq)
}

/// `allow` and `deny`: CIDR prefixes or single addresses, IPv4 or IPv6; the same
/// prefix in both is refused (the longest prefix decides, so nesting is fine).
fn parse_access(
    src: &Source,
    allow: &[Spanned<String>],
    deny: &[Spanned<String>],
) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
    let parse_list = |list: &[Spanned<String>], key: &str| -> Result<Vec<(IpNet, usize)>> {
        list.iter()
            .map(|s| {
                let text = s.get_ref();
                let net = text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        src.at(
                            s,
                            key,
                            format!("{text:?} is not an address or prefix like 10.0.0.0/8 or fd00::/8"),
                        )
                    })?;
                Ok((net.trunc(), s.span().start))
            })
            .collect()
    };
    let allow = parse_list(allow, "allow")?;
    let deny = parse_list(deny, "deny")?;
    if allow.len() + deny.len() > knock_common::ACCESS_ENTRIES as usize {
        bail!(
            "{}: allow and deny hold at most {} prefixes together",
            src.path.display(),
            knock_common::ACCESS_ENTRIES
        );
    }
    if let Some((net, at)) = deny.iter().find(|(d, _)| allow.iter().any(|(a, _)| a == d)) {
        return Err(anyhow::anyhow!(
            "{}:{}: deny: {net} is also in allow",
            src.path.display(),
            src.line(*at)
        ));
    }
    Ok((
        allow.into_iter().map(|(n, _)| n).collect(),
        deny.into_iter().map(|(n, _)| n).collect(),
    ))
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
