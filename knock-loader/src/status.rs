//! `xknock status`: what the pinned maps say, from any shell.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use knock_common::{Flow, Origin, Progress, SequenceConfig};
use serde::Serialize;

use crate::{
    clock::human,
    kernel::{
        maps::{State, sequence_name},
        pins::PinDir,
    },
    net::{Knock, unmapped},
};

#[derive(Serialize)]
pub struct Status {
    pub sequences: Vec<SequenceStatus>,
    pub in_progress: Vec<InProgress>,
    pub authorized: Vec<Authorized>,
    pub banned: Vec<Banned>,
    /// Connections kept open past their authorization's window.
    pub kept_connections: usize,
    pub counters: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
pub struct SequenceStatus {
    pub name: String,
    pub knocks: Vec<String>,
    pub protect: Vec<String>,
    pub open_for_ms: u64,
    pub strict: bool,
}

#[derive(Serialize)]
pub struct InProgress {
    pub source: IpAddr,
    pub sequence: String,
    pub step: u8,
    pub of: u8,
    pub age_ms: u64,
}

#[derive(Serialize)]
pub struct Banned {
    /// The address, or for IPv6 the first address of the banned prefix.
    pub source: IpAddr,
    /// IPv6: the length of the banned prefix (`[ban] ipv6_prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    pub left_ms: u64,
}

impl Banned {
    /// `198.18.0.9` or `fd00:1:2:3::/64`.
    pub fn shown(&self) -> String {
        match self.prefix_len {
            Some(len) => format!("{}/{len}", self.source),
            None => self.source.to_string(),
        }
    }
}

#[derive(Serialize)]
pub struct Authorized {
    pub source: IpAddr,
    pub sequence: String,
    pub left_ms: u64,
    /// What granted it: knock, spa, allow or fleet.
    pub reason: &'static str,
    /// For one installed from the fleet, the host that published it (as `run`
    /// saved it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Where `run` saves the publishing hosts of what the fleet installed, beside its
/// lock.
pub fn origins_file(pin_dir: &Path) -> PathBuf {
    PinDir(pin_dir).lock().with_extension("fleet.json")
}

/// The origins `run` saved: publishing host by (address, sequence); empty without
/// a fleet (or a `run`).
fn origins(pin_dir: &Path) -> HashMap<(IpAddr, String), String> {
    let Ok(text) = std::fs::read_to_string(origins_file(pin_dir)) else {
        return HashMap::new();
    };
    let map: HashMap<String, String> = serde_json::from_str(&text).unwrap_or_default();
    map.into_iter()
        .filter_map(|(k, origin)| {
            let (addr, seq) = k.rsplit_once('/')?;
            Some(((addr.parse().ok()?, seq.to_owned()), origin))
        })
        .collect()
}

fn opener(origin: u8) -> &'static str {
    match Origin::from_u8(origin) {
        Some(Origin::Knock) => "knock",
        Some(Origin::Spa) => "spa",
        Some(Origin::Allow) => "allow",
        Some(Origin::Fleet) => "fleet",
        None => "unknown",
    }
}

/// Whether progress still counts at `now`: neither timeout has passed (the kernel
/// forgets it at the source's next packet).
pub fn progress_is_live(p: &Progress, c: &SequenceConfig, now: u64) -> bool {
    now.saturating_sub(p.last_ns) <= c.step_timeout_ns
        && now.saturating_sub(p.first_ns) <= c.sequence_timeout_ns
}

/// Whether a kept connection has not idled out at `now`.
pub fn flow_is_live(f: &Flow, now: u64) -> bool {
    now.saturating_sub(f.last_ns) <= f.idle_timeout_ns
}

fn ports(list: &[knock_common::PortProto], n: u8) -> Vec<String> {
    list.iter()
        .take(n as usize)
        .map(|p| {
            Knock {
                port: p.port,
                proto: p.proto,
            }
            .to_string()
        })
        .collect()
}

/// A sequence's knocks, `:pass` on those whose port rule passes them on.
fn knocks(state: &State, c: &SequenceConfig) -> Result<Vec<String>> {
    let mut knocks = ports(&c.knocks, c.n_knocks);
    for (text, k) in knocks.iter_mut().zip(&c.knocks) {
        let Some(index) = knock_common::port_rule_index(k.proto, k.port) else {
            continue;
        };
        let rule = state
            .port_rules
            .get(&index, 0)
            .context("cannot read the port-rule map")?;
        if rule.flags & knock_common::RULE_PASS != 0 {
            text.push_str(":pass");
        }
    }
    Ok(knocks)
}

impl Status {
    /// What `state`'s maps say; `pin_dir` is where `run` saved the fleet's origins.
    pub fn read(state: &State, pin_dir: &Path) -> Result<Status> {
        let origins = origins(pin_dir);
        let now = state.now_ns()?;
        let seqs = state.sequences()?;
        let config = |i: u8| seqs.iter().find(|(j, _)| *j == i).map(|(_, c)| c);
        let name = |i: u8| config(i).map_or_else(|| format!("#{i}"), sequence_name);
        let sequences = seqs
            .iter()
            .map(|(_, c)| {
                Ok(SequenceStatus {
                    name: sequence_name(c),
                    knocks: knocks(state, c)?,
                    protect: ports(&c.protect, c.n_protect),
                    open_for_ms: c.open_for_ns / 1_000_000,
                    strict: c.flags & knock_common::SEQ_STRICT != 0,
                })
            })
            .collect::<Result<_>>()?;
        let mut in_progress: Vec<InProgress> = state
            .progress
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, p)| {
                let c = config(k.seq)?;
                progress_is_live(&p, c, now).then(|| InProgress {
                    source: unmapped(k.addr),
                    sequence: name(k.seq),
                    step: p.step,
                    of: c.n_knocks,
                    age_ms: now.saturating_sub(p.first_ns) / 1_000_000,
                })
            })
            .collect();
        in_progress.sort_by_key(|p| (p.source, p.sequence.clone()));
        let mut authorized: Vec<Authorized> = state
            .authorized
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, a)| a.expires_ns > now)
            .map(|(k, a)| {
                let (source, sequence) = (unmapped(k.addr), name(k.seq));
                let fleet = a.origin == Origin::Fleet as u8;
                Authorized {
                    origin: fleet
                        .then(|| origins.get(&(source, sequence.clone())).cloned())
                        .flatten(),
                    source,
                    sequence,
                    left_ms: (a.expires_ns - now) / 1_000_000,
                    reason: opener(a.origin),
                }
            })
            .collect();
        authorized.sort_by_key(|a| (a.source, a.sequence.clone()));
        let ipv6_prefix = match state.settings()?.ban_ipv6_prefix {
            0 => 128,
            p => p,
        };
        let mut banned: Vec<Banned> = state
            .live_bans(now)
            .into_iter()
            .map(|(addr, until)| {
                let source = unmapped(addr);
                Banned {
                    source,
                    prefix_len: source.is_ipv6().then_some(ipv6_prefix),
                    left_ms: (until - now) / 1_000_000,
                }
            })
            .collect();
        banned.sort_by_key(|b| b.source);
        let kept_connections = state
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, f)| flow_is_live(f, now))
            .count();
        let counters = state
            .counters()?
            .into_iter()
            .map(|(c, v)| (c.name(), v))
            .collect();
        Ok(Status {
            sequences,
            in_progress,
            authorized,
            banned,
            kept_connections,
            counters,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let ms = |v: u64| human(Duration::from_millis(v));
        let _ = writeln!(out, "sequences:");
        for s in &self.sequences {
            let strict = if s.strict { ", strict" } else { "" };
            let _ = writeln!(
                out,
                "  {:<12} knocks {}  protects {}  open for {}{strict}",
                s.name,
                s.knocks.join(" "),
                s.protect.join(" "),
                ms(s.open_for_ms)
            );
        }
        let _ = writeln!(out, "in progress: {}", self.in_progress.len());
        for p in &self.in_progress {
            let _ = writeln!(
                out,
                "  {:<39} {:<12} step {} of {}, started {} ago",
                p.source,
                p.sequence,
                p.step,
                p.of,
                ms(p.age_ms)
            );
        }
        let _ = writeln!(out, "authorized: {}", self.authorized.len());
        for a in &self.authorized {
            let from = match &a.origin {
                Some(host) => format!("fleet from {host}"),
                None => a.reason.to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<39} {:<12} {} left ({from})",
                a.source,
                a.sequence,
                ms(a.left_ms)
            );
        }
        let _ = writeln!(out, "banned: {}", self.banned.len());
        for b in &self.banned {
            let _ = writeln!(out, "  {:<39} {} left", b.shown(), ms(b.left_ms));
        }
        let _ = writeln!(out, "kept connections: {}", self.kept_connections);
        let counters: Vec<String> = self.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "counters: {}", counters.join(" "));
        out
    }
}
