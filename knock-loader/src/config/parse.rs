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

use crate::timed::TimedSecret;

use super::{
    BanPolicy, Config, DEFAULT_PIN_DIR, EventLimits, Knock, KnockSpec, Limits, Sequence, Stealth, Timed,
    XdpMode,
    commands::{RawCommands, parse_commands, parse_template},
    fleet::{RawFleet, parse_fleet},
    is_plain_name,
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
    commands: Option<RawCommands>,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    stealth: bool,
    public: Option<Spanned<Vec<Spanned<String>>>>,
    fleet: Option<Spanned<RawFleet>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBan {
    failures: Option<u32>,
    window: Option<Spanned<String>>,
    ban_for: Option<Spanned<String>>,
    ipv6_prefix: Option<Spanned<i64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    rate: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
}

/// `[events]`: the per-CPU budget of knock and reset events.
fn parse_events(src: &Source, raw: &RawEvents) -> Result<EventLimits> {
    let number = |v: &Option<Spanned<i64>>, key: &str, range: std::ops::RangeInclusive<u32>, default| match v
    {
        None => Ok(default),
        Some(n) => u32::try_from(*n.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                src.at(
                    n,
                    key,
                    format!(
                        "{} is not a whole number from {} to {}",
                        n.get_ref(),
                        range.start(),
                        range.end()
                    ),
                )
            }),
    };
    let defaults = EventLimits::default();
    Ok(EventLimits {
        rate: number(&raw.rate, "events.rate", 0..=1_000_000, defaults.rate)?,
        burst: number(&raw.burst, "events.burst", 1..=1_000_000, defaults.burst)?,
    })
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
    knocks: Option<Spanned<Vec<Spanned<String>>>>,
    /// A time-based sequence's secret file (instead of `knocks`).
    secret_file: Option<Spanned<PathBuf>>,
    /// knockd's one-time sequences (instead of `knocks`).
    one_time_sequences: Option<Spanned<PathBuf>>,
    grace: Option<Spanned<String>>,
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
const MAX_DURATION: Duration = Duration::from_hours(8760);
/// The largest map `[limits]` may ask for (16M entries: gigabytes of kernel memory).
const MAX_MAP_ENTRIES: u32 = 1 << 24;
/// How long into a period a time-based sequence's previous knocks still count (at
/// most half the period).
const DEFAULT_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_BAN_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_BAN_FOR: Duration = Duration::from_secs(600);
/// IPv6 sources are banned by their /64: one network, one identity.
const DEFAULT_BAN_IPV6_PREFIX: u8 = 64;
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
        ipv6_prefix: match &raw.ban.ipv6_prefix {
            None => DEFAULT_BAN_IPV6_PREFIX,
            Some(p) => u8::try_from(*p.get_ref())
                .ok()
                .filter(|n| (1..=128).contains(n))
                .ok_or_else(|| {
                    src.at(
                        p,
                        "ban.ipv6_prefix",
                        format!("{} is not a prefix length from 1 to 128", p.get_ref()),
                    )
                })?,
        },
    };
    let spa = raw
        .spa
        .as_ref()
        .map(|s| parse_spa(&src, s, &sequences))
        .transpose()?;
    if let (Some(spa), Some(raw_spa)) = (&spa, &raw.spa) {
        let port = Knock {
            port: spa.port,
            proto: knock_common::PROTO_UDP,
        };
        if let Some(s) = sequences
            .iter()
            .find(|s| s.timed.as_ref().is_some_and(|t| t.covers(port)))
        {
            return Err(src.at(
                raw_spa,
                "spa.port",
                format!("{port} is in the port range of time-based sequence {:?}", s.name),
            ));
        }
    }
    let stealth = parse_stealth(&src, raw.stealth, raw.public.as_ref(), &sequences, spa.as_ref())?;
    let commands = parse_commands(&src, raw.commands.as_ref())?;
    let events = parse_events(&src, &raw.events)?;
    let fleet = raw.fleet.as_ref().map(|f| parse_fleet(&src, f)).transpose()?;
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
        commands,
        events,
        stealth,
        fleet,
    })
}

/// `stealth` and `public`: the ports that serve normally while stealth hides the rest.
/// A public port may not be a knock, protected or SPA port: those keep their rules.
fn parse_stealth(
    src: &Source,
    stealth: bool,
    public: Option<&Spanned<Vec<Spanned<String>>>>,
    seqs: &[Sequence],
    spa: Option<&super::SpaConfig>,
) -> Result<Option<Stealth>> {
    let mut ports = vec![];
    for s in public.map(|p| p.get_ref().as_slice()).unwrap_or_default() {
        let k: Knock = s.get_ref().parse().map_err(|e| src.at(s, "public", e))?;
        let used = seqs.iter().find_map(|q| {
            let what = if q.knocks.contains(&k) || q.timed.as_ref().is_some_and(|t| t.covers(k)) {
                "a knock"
            } else if q.protect.contains(&k) {
                "protected"
            } else {
                return None;
            };
            Some(format!("{k} is {what} of sequence {:?}", q.name))
        });
        let spa_port = spa.is_some_and(|c| k.proto == knock_common::PROTO_UDP && k.port == c.port);
        if let Some(why) = used.or_else(|| spa_port.then(|| format!("{k} is the SPA port"))) {
            return Err(src.at(
                s,
                "public",
                format!("{why}: it keeps its own rules, it cannot be public"),
            ));
        }
        ports.push(k);
    }
    Ok(stealth.then_some(Stealth { public: ports }))
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

/// `knocks`: the knocks in order, and those of them marked `:pass`. A knock must be
/// passing everywhere in the sequence or nowhere, and passing knocks on one port
/// alone would be what any visitor of that port sends.
fn parse_knocks(src: &Source, list: &Spanned<Vec<Spanned<String>>>) -> Result<(Vec<Knock>, Vec<Knock>)> {
    if list.get_ref().len() > MAX_KNOCKS {
        return Err(src.at(list, "knocks", format!("at most {MAX_KNOCKS} entries")));
    }
    let mut specs: Vec<KnockSpec> = vec![];
    for s in list.get_ref() {
        let spec: KnockSpec = s.get_ref().parse().map_err(|e| src.at(s, "knocks", e))?;
        if let Some(other) = specs
            .iter()
            .find(|o| o.knock == spec.knock && o.pass != spec.pass)
        {
            return Err(src.at(
                s,
                "knocks",
                format!(
                    "{spec} and {other}: a knock passes everywhere in the sequence or nowhere (its port serves or not)"
                ),
            ));
        }
        specs.push(spec);
    }
    let knocks: Vec<Knock> = specs.iter().map(|s| s.knock).collect();
    let mut passing: Vec<Knock> = vec![];
    for s in specs.iter().filter(|s| s.pass) {
        if !passing.contains(&s.knock) {
            passing.push(s.knock);
        }
    }
    if passing.len() == 1 && specs.iter().all(|s| s.pass) {
        return Err(src.at(
            list,
            "knocks",
            format!(
                "only {}: any visitor of that port sends it; add a knock that does not pass (a closed port or SIZE/icmp)",
                specs[0]
            ),
        ));
    }
    Ok((knocks, passing))
}

/// `secret_file` and `grace`: a time-based sequence; `None` for one with `knocks`.
fn parse_timed(src: &Source, raw: &RawSequence) -> Result<Option<Timed>> {
    let Some(file) = &raw.secret_file else {
        if raw.knocks.is_none() && raw.one_time_sequences.is_none() {
            return Err(src.at(
                &raw.name,
                "knocks",
                "missing: give knocks, secret_file (time-based) or one_time_sequences",
            ));
        }
        if let Some(g) = &raw.grace {
            return Err(src.at(g, "grace", "only a time-based sequence (secret_file) has one"));
        }
        return Ok(None);
    };
    if let Some(k) = &raw.knocks {
        return Err(src.at(
            k,
            "knocks",
            "a time-based sequence (secret_file) takes its knocks from the secret: remove one of the two",
        ));
    }
    if let Some(f) = &raw.one_time_sequences {
        return Err(src.at(
            f,
            "one_time_sequences",
            "give secret_file or one_time_sequences, not both",
        ));
    }
    // Relative to the config file, like a SPA client's key_file.
    let dir = src.path.parent().unwrap_or(Path::new(""));
    let secret = TimedSecret::load(&dir.join(file.get_ref()))
        .map_err(|e| src.at(file, "secret_file", format!("{e:#}")))?;
    let grace = src.duration(&raw.grace, "grace", DEFAULT_GRACE.min(secret.period / 2))?;
    if grace > secret.period / 2 {
        let message = format!(
            "{} is more than half the secret's period ({}): the grace before a period and after it would overlap",
            humantime::format_duration(grace),
            humantime::format_duration(secret.period)
        );
        return Err(match &raw.grace {
            Some(g) => src.at(g, "grace", message),
            None => src.at(file, "grace", message),
        });
    }
    Ok(Some(Timed { secret, grace }))
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
    let timed = parse_timed(src, raw)?;
    let one_time = raw.one_time_sequences.as_ref().map(|f| {
        // Relative to the config file, like a secret_file.
        (f, src.path.parent().unwrap_or(Path::new("")).join(f.get_ref()))
    });
    let (knocks, passing) = match (&raw.knocks, &one_time) {
        // No knocks: only SPA (or `allow`) opens the sequence.
        (Some(k), None) if k.get_ref().is_empty() => (vec![], vec![]),
        (Some(k), None) => parse_knocks(src, k)?,
        (None, Some((f, path))) => match crate::onetime::current(path) {
            Ok(Some((_, knocks))) => (knocks, vec![]),
            // All used: the sequence opens nothing until the file gets more lines.
            Ok(None) => (vec![], vec![]),
            Err(e) => return Err(src.at(*f, "one_time_sequences", format!("{e:#}"))),
        },
        (Some(k), Some(_)) => {
            return Err(src.at(k, "knocks", "give knocks or one_time_sequences, not both"));
        }
        (None, None) => (vec![], vec![]),
    };
    if let (Some(k), Some(w)) = (&raw.knocks, knocks.windows(2).find(|w| w[0] == w[1])) {
        return Err(src.at(
            k,
            "knocks",
            format!(
                "{} twice in a row: a retransmitted knock could not be told from the next one",
                w[0]
            ),
        ));
    }
    let protect = parse_ports(src, &raw.protect, "protect", MAX_PROTECTED)?;
    if let Some(p) = protect
        .iter()
        .find(|p| knocks.contains(p) || timed.as_ref().is_some_and(|t| t.covers(**p)))
    {
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
    let seq = Sequence {
        name,
        knocks,
        passing,
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
        timed,
        one_time: one_time.map(|(_, path)| path),
        valid_until: None,
        on_open: parse_template(src, &raw.on_open, "on_open")?,
        on_close: parse_template(src, &raw.on_close, "on_close")?,
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
                if let IpNet::V6(v6) = net
                    && covers_ipv4_mapped(&v6)
                {
                    return Err(src.at(
                        s,
                        key,
                        format!(
                            "{text:?} covers ::ffff:0:0/96, where IPv4 sources are kept, so it would \
                             match every IPv4 source too: list IPv4 prefixes as IPv4 (0.0.0.0/0 for all) \
                             and IPv6 ones that leave ::ffff:0:0/96 out (such as 2000::/3 and fc00::/7)"
                        ),
                    ));
                }
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

/// Whether an IPv6 prefix contains all of ::ffff:0:0/96, the IPv4-mapped addresses
/// the kernel keeps IPv4 sources as (::/0, ::/1, ... ::ffff:0:0/96 itself).
fn covers_ipv4_mapped(net: &ipnet::Ipv6Net) -> bool {
    net.prefix_len() <= 96 && net.contains(&std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0))
}

/// Checks that need all sequences: unique names, sequences that can be told apart,
/// no port that is a knock of one sequence and protected by another.
/// A later line of a one-time file must not knock on a protected port either: once
/// loaded, it would close that port to everyone.
fn check_one_time(src: &Source, raw: &RawSequence, seq: &Sequence, seqs: &[Sequence]) -> Result<()> {
    let (Some(path), Some(f)) = (&seq.one_time, &raw.one_time_sequences) else {
        return Ok(());
    };
    let lines =
        crate::onetime::unused(path).map_err(|e| src.at(f, "one_time_sequences", format!("{e:#}")))?;
    for (line, knocks) in lines {
        let used = seqs.iter().find_map(|o| {
            if let Some(k) = knocks.iter().find(|k| o.protect.contains(k)) {
                return Some((k, "protected by", &o.name));
            }
            let k = knocks.iter().find(|k| o.passing.contains(k))?;
            Some((k, "a passing knock of", &o.name))
        });
        if let Some((k, what, other)) = used {
            return Err(src.at(
                f,
                "one_time_sequences",
                format!(
                    "{}:{line}: {k} is {what} sequence {other:?}: a port cannot be both",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

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
        check_passing(src, raw, seq, seqs)?;
        check_one_time(src, raw, seq, seqs)?;
        check_timed(src, raw, seq, seqs)?;
        if let Some(other) = seqs.iter().take_while(|o| !std::ptr::eq(*o, seq)).find(|o| {
            o.timed.is_none() && seq.timed.is_none() && !o.knocks.is_empty() && o.knocks == seq.knocks
        }) && let Some(knocks) = &raw.knocks
        {
            return Err(src.at(
                knocks,
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

/// A port's packets pass or are dropped, so a knock that passes in one sequence
/// passes in every other that knocks there (reported at the later of the two).
fn check_passing(src: &Source, raw: &RawSequence, seq: &Sequence, seqs: &[Sequence]) -> Result<()> {
    for other in seqs.iter().take_while(|o| !std::ptr::eq(*o, seq)) {
        let differs = |k: &&Knock| seq.passing.contains(k) != other.passing.contains(k);
        if let Some(k) = seq
            .knocks
            .iter()
            .filter(|k| other.knocks.contains(k))
            .find(differs)
        {
            let (passes, drops) = if seq.passing.contains(k) {
                (&seq.name, &other.name)
            } else {
                (&other.name, &seq.name)
            };
            let why = format!(
                "{k} passes in sequence {passes:?} but not in {drops:?}: mark it :pass in both or in neither"
            );
            return Err(match (&raw.knocks, &raw.one_time_sequences) {
                (Some(knocks), _) => src.at(knocks, "knocks", why),
                (None, Some(file)) => src.at(file, "one_time_sequences", why),
                (None, None) => src.at(&raw.name, "knocks", why),
            });
        }
    }
    Ok(())
}

/// A time-based sequence's ports may be no other sequence's: no port of another
/// inside its range, no two ranges that overlap. It takes two kernel slots.
fn check_timed(src: &Source, raw: &RawSequence, seq: &Sequence, seqs: &[Sequence]) -> Result<()> {
    let others = seqs.iter().filter(|o| !std::ptr::eq(*o, seq));
    for other in others {
        let Some(t) = &other.timed else { continue };
        if let Some(p) = seq.knocks.iter().chain(&seq.protect).find(|p| t.covers(**p)) {
            return Err(src.at(
                &raw.name,
                "sequence",
                format!(
                    "{p} is in the port range of time-based sequence {:?}: a port cannot be both",
                    other.name
                ),
            ));
        }
        if let (Some(mine), Some(file)) = (&seq.timed, &raw.secret_file)
            && mine.secret.proto == t.secret.proto
            && mine.secret.ports.start() <= t.secret.ports.end()
            && t.secret.ports.start() <= mine.secret.ports.end()
        {
            return Err(src.at(
                file,
                "secret_file",
                format!("its port range overlaps time-based sequence {:?}'s", other.name),
            ));
        }
    }
    let slots = seqs.len() + seqs.iter().filter(|s| s.timed.is_some()).count();
    if slots > MAX_SEQUENCES
        && let Some(file) = &raw.secret_file
    {
        return Err(src.at(
            file,
            "secret_file",
            format!(
                "a time-based sequence takes two of the kernel's {MAX_SEQUENCES} sequence slots: \
                 {slots} needed"
            ),
        ));
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
