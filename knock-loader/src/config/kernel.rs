//! The configuration as the kernel's tables: the sequence array, the port-rule
//! array and the settings.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use knock_common::{
    ACCESS_ALLOW, ACCESS_DENY, PROTO_TCP, PROTO_UDP, PortRule, RULE_FWKNOP, RULE_PASS, RULE_PASS_ANY_TCP,
    RULE_SPA, RULE_STEALTH, SEQ_IGNORE_WRONG, SEQ_KEEP_ESTABLISHED, SEQ_STRICT, SequenceConfig, Settings,
    SpaCheckKey, SpaKeyId, port_rule_index,
};

use sha2::{Digest as _, Sha256};

use super::{Config, EventLimits, Sequence};
use crate::clock::nanos;
use crate::net::Knock;

impl Config {
    /// The kernel's sequence slots at `now`: each configured sequence at its index,
    /// then a twin for each time-based one. The two take turns: even periods' knocks
    /// go to the first, odd periods' to the twin. The other slot holds the previous
    /// period's knocks for `grace` into a period (a source part-way through goes on,
    /// a client whose clock is behind still opens) and the next period's for the last
    /// `grace` of it (for a client whose clock is ahead); otherwise only the
    /// protected ports (its authorizations stay valid).
    pub fn kernel_slots(&self, now: SystemTime) -> Vec<Sequence> {
        let mut slots = self.sequences.clone();
        let mut twins = vec![];
        for (slot, seq) in slots.iter_mut().zip(&self.sequences) {
            let Some(timed) = &seq.timed else { continue };
            let counter = timed.secret.counter(now);
            let current = timed.secret.knocks_for(counter);
            let into = timed.secret.into_period(counter, now);
            let other = match counter.checked_sub(1) {
                Some(before) if into < timed.grace => timed.secret.knocks_for(before),
                _ if timed.secret.period.saturating_sub(into) <= timed.grace => {
                    timed.secret.knocks_for(counter + 1)
                }
                _ => vec![],
            };
            // Knocks of period p count until its end and the grace after.
            let until = |p: u64| {
                Some(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_secs((p + 1).saturating_mul(timed.secret.period.as_secs()))
                        + timed.grace,
                )
            };
            let other_period = if into < timed.grace {
                counter.checked_sub(1)
            } else {
                Some(counter + 1)
            };
            let (current, other) = ((current, until(counter)), (other, other_period.and_then(until)));
            let (even, odd) = if counter % 2 == 0 {
                (current, other)
            } else {
                (other, current)
            };
            (slot.knocks, slot.valid_until) = even;
            twins.push(Sequence {
                knocks: odd.0,
                valid_until: odd.1,
                ..seq.clone()
            });
        }
        slots.extend(twins);
        slots
    }

    /// The kernel's sequence table at `now`, one entry per slot; `kernel_now_ns` is
    /// the policy clock at `now`, to which the slots' ends are converted.
    pub fn sequence_table(&self, now: SystemTime, kernel_now_ns: u64) -> Vec<SequenceConfig> {
        self.kernel_slots(now)
            .iter()
            .map(|s| {
                let mut c = s.kernel_config();
                if let Some(until) = s.valid_until {
                    let left = until.duration_since(now).unwrap_or_default();
                    // Never 0, which would mean "no end".
                    c.valid_until_ns = kernel_now_ns.saturating_add(nanos(left)).max(1);
                }
                c
            })
            .collect()
    }

    /// Entries of the kernel's port-rule array at `now` for the configured ports and
    /// the SPA port (every other entry holds only the strict mask).
    pub fn port_rules(&self, now: SystemTime) -> HashMap<u32, PortRule> {
        let slots = self.kernel_slots(now);
        let strict_mask = strict_mask(&slots);
        let mut rules: HashMap<u32, PortRule> = HashMap::new();
        for (i, seq) in slots.iter().enumerate() {
            let bit = 1u8 << i;
            for k in &seq.knocks {
                let rule = rules.entry(rule_index(*k)).or_insert_with(|| strict(strict_mask));
                rule.knock_mask |= bit;
                if seq.passing.contains(k) {
                    rule.flags |= RULE_PASS;
                    if k.proto == PROTO_TCP && !seq.counts_syn_only() {
                        rule.flags |= RULE_PASS_ANY_TCP;
                    }
                }
            }
            for p in &seq.protect {
                rules
                    .entry(rule_index(*p))
                    .or_insert_with(|| strict(strict_mask))
                    .protect_mask |= bit;
            }
        }
        if let Some(spa) = &self.spa {
            let port = Knock {
                port: spa.port,
                proto: PROTO_UDP,
            };
            rules
                .entry(rule_index(port))
                .or_insert_with(|| strict(strict_mask))
                .flags |= if spa.fwknop.is_empty() {
                RULE_SPA
            } else {
                RULE_SPA | RULE_FWKNOP
            };
        }
        rules
    }

    /// The settings entry, keeping `base`'s test clock.
    pub fn settings(&self, base: Settings) -> Settings {
        Settings {
            ban_failures: self.ban.failures,
            ban_window_ns: nanos(self.ban.window),
            ban_for_ns: nanos(self.ban.ban_for),
            ban_ipv6_prefix: self.ban.ipv6_prefix,
            access_rules: u8::from(!self.allow.is_empty() || !self.deny.is_empty()),
            spa_port: self.spa.as_ref().map_or(0, |s| s.port),
            stealth: u8::from(self.stealth.is_some()),
            event_cost_ns: self.events.cost_ns(),
            event_burst_ns: self.events.cost_ns().saturating_mul(u64::from(self.events.burst)),
            ..base
        }
    }

    /// The allow/deny map's entries: (prefix length over the IPv4-mapped address,
    /// address, ACCESS_ALLOW or ACCESS_DENY).
    pub fn access_entries(&self) -> Vec<(u32, [u8; 16], u8)> {
        let entry = |net: &IpNet, value: u8| match net {
            IpNet::V4(n) => (
                96 + u32::from(n.prefix_len()),
                n.addr().to_ipv6_mapped().octets(),
                value,
            ),
            IpNet::V6(n) => (u32::from(n.prefix_len()), n.addr().octets(), value),
        };
        let allow = self.allow.iter().map(|n| entry(n, ACCESS_ALLOW));
        allow
            .chain(self.deny.iter().map(|n| entry(n, ACCESS_DENY)))
            .collect()
    }

    /// The SPA clients' key ids with their check keys, for the kernel's key-id map.
    pub fn spa_key_ids(&self) -> Vec<(SpaKeyId, SpaCheckKey)> {
        let clients = self.spa.iter().flat_map(|s| &s.clients);
        clients
            .map(|c| (SpaKeyId { id: c.key_id.0 }, c.key.check_key()))
            .collect()
    }

    /// What every port-rule entry no sequence or SPA uses holds, given the local
    /// ephemeral port range (`addr::local_port_range`).
    pub fn background(&self, ephemeral: (u16, u16)) -> Background {
        Background {
            strict_mask: self.strict_mask(),
            stealth: self.stealth.as_ref().map(|s| {
                let mut public: Vec<u32> = s.public.iter().map(|k| rule_index(*k)).collect();
                public.sort_unstable();
                (public, ephemeral)
            }),
        }
    }

    /// The strict sequences' bits (twins included).
    pub fn strict_mask(&self) -> u8 {
        strict_mask(&self.kernel_slots(SystemTime::UNIX_EPOCH))
    }
}

/// The rule of every port-rule entry no sequence or SPA uses: the strict mask, and
/// with stealth RULE_STEALTH on all but the public ports and the UDP ports of the
/// local ephemeral range (where replies to the host's own queries arrive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Background {
    pub strict_mask: u8,
    /// The public ports' rule indexes (sorted) and the ephemeral range.
    pub stealth: Option<(Vec<u32>, (u16, u16))>,
}

impl Background {
    pub fn rule(&self, index: u32) -> PortRule {
        // ICMP knock sizes: no port, nothing strict mode or stealth would see.
        if index >= 2 * 65536 {
            return PortRule::default();
        }
        let hidden = self.stealth.as_ref().is_some_and(|(public, (low, high))| {
            let udp_port = index.checked_sub(65536);
            public.binary_search(&index).is_err()
                && udp_port.is_none_or(|p| p < u32::from(*low) || p > u32::from(*high))
        });
        PortRule {
            strict_mask: self.strict_mask,
            flags: if hidden { RULE_STEALTH } else { 0 },
            ..PortRule::default()
        }
    }
}

fn strict_mask(slots: &[Sequence]) -> u8 {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.strict)
        .fold(0, |mask, (i, _)| mask | 1 << i)
}

fn strict(strict_mask: u8) -> PortRule {
    PortRule {
        strict_mask,
        ..PortRule::default()
    }
}

pub fn rule_index(k: Knock) -> u32 {
    // Knock only holds TCP, UDP or an ICMP size the config checked, which always
    // have an index.
    port_rule_index(k.proto, k.port).unwrap_or_default()
}

impl Sequence {
    /// Whether a TCP knock of this sequence must be a SYN without ACK (`tcp_flags` is
    /// "syn", the default, or names more), so no other packet of a connection counts.
    pub fn counts_syn_only(&self) -> bool {
        use knock_common::{TCP_ACK, TCP_SYN};
        self.tcp_flags_set & TCP_SYN != 0 && self.tcp_flags_clear & TCP_ACK != 0
    }

    /// A one-time sequence's identity of its current line in the kernel.
    pub fn one_time_id(&self) -> Option<u64> {
        Some(one_time_id(self.one_time.as_ref()?, &self.knocks))
    }

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
            }
            | if self.ignore_wrong { SEQ_IGNORE_WRONG } else { 0 };
        c.one_time_id = self.one_time_id().unwrap_or(0);
        c.tcp_flags_set = self.tcp_flags_set;
        c.tcp_flags_clear = self.tcp_flags_clear;
        for (slot, b) in c.name.iter_mut().zip(self.name.as_bytes()) {
            *slot = *b;
        }
        c
    }
}

impl EventLimits {
    /// What one event costs the kernel's token bucket (Settings::event_cost_ns).
    pub fn cost_ns(&self) -> u64 {
        match self.rate {
            0 => u64::MAX,
            rate => 1_000_000_000 / u64::from(rate),
        }
    }
}

/// The kernel's identity of a one-time line: the file and the line's knocks, hashed
/// (never 0). A line that repeats a used one is used too: its knocks were seen.
fn one_time_id(path: &Path, knocks: &[Knock]) -> u64 {
    let mut h = Sha256::new();
    h.update(b"xknock one-time line v1\0");
    h.update(path.as_os_str().as_encoded_bytes());
    for k in knocks {
        h.update(b"\0");
        h.update(k.to_string().as_bytes());
    }
    let digest = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(id).max(1)
}
