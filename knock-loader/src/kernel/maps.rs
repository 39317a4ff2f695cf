//! Typed access to the program's maps, either from a freshly loaded object (`run`)
//! or from the pins another process left (`status`, `allow`, `revoke`).

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use knock_common::{
    Authorization, Ban, COUNTERS, Counter, Flow, FlowKey, MAX_SEQUENCES, NAME_LEN, OneTimeId, Origin,
    PORT_RULE_ENTRIES, PortRule, Progress, SEQ_STRICT, SequenceConfig, Settings, SourceAddr, SourceKey,
    SpaCheckKey, SpaKeyId, map_names,
};

/// Map update flags (aya passes them to the kernel as they are).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

use super::{hint::AuthHint, pins::PinDir};
use crate::net::{mapped, source_key, unmapped};
use crate::{clock, config::Config};

pub struct State {
    pub sequences: Array<MapData, SequenceConfig>,
    pub port_rules: Array<MapData, PortRule>,
    pub settings: Array<MapData, Settings>,
    pub progress: HashMap<MapData, SourceKey, Progress>,
    /// Read it freely; add and remove through `authorize` and `unauthorize`, which
    /// keep the hint.
    pub authorized: HashMap<MapData, SourceKey, Authorization>,
    pub auth_hint: AuthHint,
    pub flows: HashMap<MapData, FlowKey, Flow>,
    pub counters: PerCpuArray<MapData, u64>,
    pub bans: HashMap<MapData, SourceAddr, Ban>,
    pub access: LpmTrie<MapData, [u8; 16], u8>,
    pub spa_keys: HashMap<MapData, SpaKeyId, SpaCheckKey>,
    /// One-time lines the kernel spent (by identity): `run` replaces each, then
    /// removes it.
    pub spent: HashMap<MapData, OneTimeId, u64>,
    /// What the port-rule entries no sequence uses hold, as this State last wrote
    /// them (None: not written yet by it).
    background: Option<crate::config::Background>,
}

impl State {
    /// Takes the maps out of a loaded object (the program keeps its own references).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<State> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
        };
        Self::from_maps(&mut take)
    }

    /// Opens the maps a running (or crashed) `xknock run` pinned under `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<State> {
        let mut open = |name: &str| {
            let path = PinDir(pin_dir).map(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open pinned map {} (is `xknock run` running with --pin-dir {}?)",
                    path.display(),
                    pin_dir.display()
                )
            })?;
            Map::from_map_data(data).with_context(|| format!("{} is not an xknock map", path.display()))
        };
        Self::from_maps(&mut open)
    }

    fn from_maps(get: &mut dyn FnMut(&str) -> Result<Map>) -> Result<State> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            get: &mut dyn FnMut(&str) -> Result<Map>,
            name: &str,
        ) -> Result<T> {
            T::try_from(get(name)?).with_context(|| format!("map {name} has an unexpected type or layout"))
        }
        Ok(State {
            sequences: typed(get, map_names::SEQUENCES)?,
            port_rules: typed(get, map_names::PORT_RULES)?,
            settings: typed(get, map_names::SETTINGS)?,
            progress: typed(get, map_names::PROGRESS)?,
            authorized: typed(get, map_names::AUTHORIZED)?,
            auth_hint: AuthHint::new(get(map_names::AUTH_HINT)?)?,
            flows: typed(get, map_names::FLOWS)?,
            counters: typed(get, map_names::COUNTERS)?,
            bans: typed(get, map_names::BANS)?,
            access: typed(get, map_names::ACCESS)?,
            spa_keys: typed(get, map_names::SPA_KEYS)?,
            spent: typed(get, map_names::SPENT)?,
            background: None,
        })
    }

    pub fn settings(&self) -> Result<Settings> {
        self.settings.get(&0, 0).context("cannot read the settings map")
    }

    /// The policy clock the kernel uses, in ns.
    pub fn now_ns(&self) -> Result<u64> {
        Ok(match self.settings()?.test_now_ns {
            0 => clock::monotonic_ns(),
            test_now => test_now,
        })
    }

    /// Drives the policy clock by hand (tests only): `Some(t)` freezes it at `t`.
    pub fn set_test_clock(&mut self, now: Option<Duration>) -> Result<()> {
        let mut s = self.settings()?;
        s.test_now_ns = now.map_or(0, clock::nanos);
        self.settings
            .set(0, &s, 0)
            .context("cannot write the settings map")
    }

    /// Configured sequences as (index, kernel config), skipping empty slots.
    pub fn sequences(&self) -> Result<Vec<(u8, SequenceConfig)>> {
        let mut out = Vec::new();
        for i in 0..MAX_SEQUENCES as u32 {
            let c = self
                .sequences
                .get(&i, 0)
                .context("cannot read the sequence map")?;
            // A time-based sequence's idle slot has no knocks, only protected ports.
            if c.n_knocks > 0 || c.n_protect > 0 {
                out.push((i as u8, c));
            }
        }
        Ok(out)
    }

    /// Every slot of sequence `name` (a time-based sequence has two), first first.
    pub fn sequence_indices(&self, name: &str) -> Result<Vec<u8>> {
        let first = self.sequence_index(name)?;
        let seqs = self.sequences()?;
        Ok(std::iter::once(first)
            .chain(
                seqs.iter()
                    .filter(|(i, c)| *i != first && sequence_name(c) == name)
                    .map(|(i, _)| *i),
            )
            .collect())
    }

    pub fn sequence_index(&self, name: &str) -> Result<u8> {
        let seqs = self.sequences()?;
        seqs.iter()
            .find(|(_, c)| sequence_name(c) == name)
            .map(|(i, _)| *i)
            .ok_or_else(|| {
                let known: Vec<_> = seqs.iter().map(|(_, c)| sequence_name(c)).collect();
                anyhow!("no sequence named {name:?}; configured: {}", known.join(", "))
            })
    }

    /// Writes a configuration into the maps: sequences first, then port rules (old
    /// ports cleared), the allow/deny lists and the settings.
    pub fn apply(&mut self, config: &Config) -> Result<()> {
        self.apply_sequences(config, SystemTime::now())?;
        self.apply_access(config)?;
        self.set_spa_keys(&config.spa_key_ids())?;
        let mut settings = config.settings(self.settings()?);
        settings.auth_hint_shift = self.auth_hint.shift();
        self.settings
            .set(0, &settings, 0)
            .context("cannot write the settings map")?;
        self.repair_hint();
        Ok(())
    }

    /// Writes the sequence table and the port rules as they are at `now` (time-based
    /// sequences change with it), leaving progress and authorizations alone.
    pub fn apply_sequences(&mut self, config: &Config, now: SystemTime) -> Result<()> {
        let old = self.sequences()?;
        let old_ports: Vec<u32> = old
            .iter()
            .flat_map(|(_, c)| {
                let knocks = c.knocks.iter().take(c.n_knocks as usize);
                let protect = c.protect.iter().take(c.n_protect as usize);
                knocks
                    .chain(protect)
                    .filter_map(|p| knock_common::port_rule_index(p.proto, p.port))
                    .collect::<Vec<_>>()
            })
            .collect();
        let old_strict_mask = old
            .iter()
            .filter(|(_, c)| c.flags & SEQ_STRICT != 0)
            .fold(0u8, |mask, (i, _)| mask | 1 << i);
        // Where the SPA port was (`apply` records the new one in the settings after
        // this), so that its rule is cleared with the other old ports.
        let old_spa = self.settings()?.spa_port;
        let old_ports: Vec<u32> = old_ports
            .into_iter()
            .chain(
                (old_spa != 0)
                    .then(|| knock_common::port_rule_index(knock_common::PROTO_UDP, old_spa))
                    .flatten(),
            )
            .collect();
        let table = config.sequence_table(now, self.now_ns()?);
        for i in 0..MAX_SEQUENCES {
            let entry = table.get(i).copied().unwrap_or_else(bytemuck::Zeroable::zeroed);
            self.sequences
                .set(i as u32, &entry, 0)
                .context("cannot write the sequence map")?;
        }
        let rules = config.port_rules(now);
        let background = config.background(crate::net::local_port_range());
        // What the unused entries hold now: known when this State wrote them, or
        // when no stealth bits can be there (only the old strict mask, then).
        let mut settings = self.settings()?;
        let old_background = self.background.clone().or_else(|| {
            (settings.stealth == 0).then_some(crate::config::Background {
                strict_mask: old_strict_mask,
                stealth: None,
            })
        });
        if background.stealth.is_some() && settings.stealth == 0 {
            // Recorded before any stealth bit is written, so that a crash between
            // leaves the next run knowing it must rewrite them all.
            settings.stealth = 1;
            self.settings
                .set(0, &settings, 0)
                .context("cannot write the settings map")?;
        }
        // Strict masks and stealth bits sit in every entry, so a change of them
        // rewrites all.
        let stale: Vec<u32> = if old_background.as_ref() == Some(&background) {
            old_ports.into_iter().filter(|i| !rules.contains_key(i)).collect()
        } else {
            (0..PORT_RULE_ENTRIES)
                .filter(|i| !rules.contains_key(i))
                .collect()
        };
        for index in stale {
            self.port_rules
                .set(index, &background.rule(index), 0)
                .context("cannot write the port-rule map")?;
        }
        self.background = Some(background);
        for (index, rule) in &rules {
            debug_assert!(*index < PORT_RULE_ENTRIES);
            self.port_rules
                .set(*index, rule, 0)
                .context("cannot write the port-rule map")?;
        }
        Ok(())
    }

    /// Makes `keys` the SPA key ids (with their check keys) the kernel lets through,
    /// and no others.
    pub fn set_spa_keys(&mut self, keys: &[(SpaKeyId, SpaCheckKey)]) -> Result<()> {
        let stale: Vec<SpaKeyId> = self
            .spa_keys
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keys.iter().any(|(id, _)| id == k))
            .collect();
        for (id, check) in keys {
            self.spa_keys
                .insert(id, check, 0)
                .context("cannot write the SPA key map (more than 1024 clients?)")?;
        }
        for id in stale {
            // Absent means removed meanwhile: fine.
            let _ = self.spa_keys.remove(&id);
        }
        Ok(())
    }

    /// Raises the hint slot of any authorization that finds it zero (see `AuthHint::
    /// repair`). Returns the live authorizations it saw.
    pub fn repair_hint(&self) -> Vec<(SourceKey, Authorization)> {
        let live: Vec<(SourceKey, Authorization)> = self.authorized.iter().filter_map(Result::ok).collect();
        for (key, _) in &live {
            self.auth_hint.repair(&key.addr);
        }
        live
    }

    /// Adds or renews an authorization, counted in the hint first. A martian source
    /// (loopback, unspecified, multicast, broadcast) is refused.
    pub fn authorize(&mut self, key: &SourceKey, auth: &Authorization) -> Result<()> {
        refuse_martian(unmapped(key.addr))?;
        if self.authorized.get(key, 0).is_ok() {
            return self
                .authorized
                .insert(key, auth, BPF_EXIST)
                .context("cannot renew the authorization");
        }
        self.auth_hint.count(&key.addr);
        let added = self.authorized.insert(key, auth, BPF_NOEXIST);
        if added.is_err() {
            self.auth_hint.uncount(&key.addr);
        }
        added.context("cannot add the authorization (is the authorization map full?)")
    }

    /// Removes an authorization; false if it was not there (removed meanwhile).
    pub fn unauthorize(&mut self, key: &SourceKey) -> bool {
        let removed = self.authorized.remove(key).is_ok();
        if removed {
            self.auth_hint.uncount(&key.addr);
        }
        removed
    }

    /// Removes `key`'s authorization if it is still expired at `now_ns`; false if it
    /// was renewed or is gone. The kernel renews in place, so between a read and a
    /// delete a re-knock may have renewed it: the delete returns what it removed, and
    /// a renewal found there is put back at once (unless the kernel made a new one).
    pub fn unauthorize_expired(&mut self, key: &SourceKey, now_ns: u64) -> Result<bool> {
        let Some(removed) = lookup_and_delete(&self.authorized, key)? else {
            return Ok(false);
        };
        if removed.expires_ns <= now_ns {
            self.auth_hint.uncount(&key.addr);
            return Ok(true);
        }
        // Renewed: its count in the hint stays with it.
        if self.authorized.insert(key, &removed, BPF_NOEXIST).is_err() {
            // The kernel added one meanwhile and counted it: ours goes.
            self.auth_hint.uncount(&key.addr);
        }
        Ok(false)
    }

    /// Verdict counters summed over CPUs, in `Counter` order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        (0..COUNTERS)
            .map(|i| {
                let per_cpu = self.counters.get(&i, 0).context("cannot read the counter map")?;
                Ok((Counter::ALL[i as usize], per_cpu.iter().sum()))
            })
            .collect()
    }

    pub fn counter(&self, c: Counter) -> Result<u64> {
        let per_cpu = self
            .counters
            .get(&(c as u32), 0)
            .context("cannot read the counter map")?;
        Ok(per_cpu.iter().sum())
    }

    /// Authorizes `addr` for sequence `seq` until `now + duration`.
    pub fn allow(&mut self, addr: IpAddr, seq: u8, duration: Duration) -> Result<()> {
        refuse_martian(addr)?;
        let now = self.now_ns()?;
        let expires_ns = now.saturating_add(clock::nanos(duration));
        let auth = Authorization::new(now, expires_ns, Origin::Allow);
        self.authorize(&source_key(addr, seq), &auth)
    }

    /// Removes `addr`'s authorizations (for one sequence or all) and the connections
    /// it keeps open. Returns how many authorizations were removed.
    pub fn revoke(&mut self, addr: IpAddr, seq: Option<u8>) -> Result<usize> {
        let mapped = mapped(addr);
        let keys: Vec<SourceKey> = self
            .authorized
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.addr == mapped && seq.is_none_or(|s| s == k.seq))
            .collect();
        let removed = keys.iter().filter(|k| self.unauthorize(k)).count();
        let flows: Vec<FlowKey> = self
            .flows
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.addr == mapped)
            .collect();
        for k in &flows {
            // Gone already (idle or evicted) is fine.
            let _ = self.flows.remove(k);
        }
        Ok(removed)
    }
}

impl State {
    /// Writes the allow and deny lists: new entries first, then stale ones removed,
    /// so no moment has fewer rules than either the old or the new list.
    fn apply_access(&mut self, config: &Config) -> Result<()> {
        let entries = config.access_entries();
        for (prefix_len, addr, value) in &entries {
            self.access
                .insert(&Key::new(*prefix_len, *addr), value, 0)
                .context("cannot write the allow/deny map")?;
        }
        let stale: Vec<Key<[u8; 16]>> = self
            .access
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !entries
                    .iter()
                    .any(|(l, a, _)| *l == k.prefix_len() && *a == k.data())
            })
            .collect();
        for key in &stale {
            self.access
                .remove(key)
                .context("cannot update the allow/deny map")?;
        }
        Ok(())
    }

    /// The ban map's key for `addr` under the settings in force.
    pub fn ban_key(&self, addr: IpAddr) -> Result<SourceAddr> {
        let prefix = self.settings()?.ban_ipv6_prefix;
        Ok(SourceAddr {
            addr: crate::net::ban_key(mapped(addr), prefix),
        })
    }

    /// Ban keys live at `now` (IPv6 ones cut to the ban prefix), with when their ban
    /// ends.
    pub fn live_bans(&self, now: u64) -> std::collections::HashMap<[u8; 16], u64> {
        self.bans
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, b)| b.until_ns > now)
            .map(|(k, b)| (k.addr, b.until_ns))
            .collect()
    }

    /// Lifts `addr`'s ban and forgets its failures (for IPv6, those of its prefix:
    /// any address of it does). Returns whether it was banned.
    pub fn unban(&mut self, addr: IpAddr) -> Result<bool> {
        let key = self.ban_key(addr)?;
        let now = self.now_ns()?;
        let was_banned = self.bans.get(&key, 0).is_ok_and(|b| now < b.until_ns);
        // Absent already is fine: nothing to lift.
        let _ = self.bans.remove(&key);
        Ok(was_banned)
    }
}

/// An error for a martian source, which is never authorized.
fn refuse_martian(addr: IpAddr) -> Result<()> {
    if crate::net::is_martian(addr) {
        anyhow::bail!(
            "{addr} is a loopback, unspecified, multicast or broadcast address: no peer sends from it, so it is never authorized"
        );
    }
    Ok(())
}

pub fn sequence_name(c: &SequenceConfig) -> String {
    let len = c.name.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&c.name[..len]).into_owned()
}

/// BPF_MAP_LOOKUP_AND_DELETE_ELEM: removes `key` and returns the value removed, in
/// one step (aya has it for queues and stacks only).
fn lookup_and_delete<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>, key: &K) -> Result<Option<V>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let fd = aya::maps::IterableMap::map(map).fd().as_fd().as_raw_fd();
    let attr = Attr {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: BPF_MAP_LOOKUP_AND_DELETE_ELEM's attributes; key and value point to
    // buffers of the map's key and value sizes, alive for the call.
    match unsafe { crate::kernel::bpf::call(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &attr) } {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e).context("cannot remove an authorization"),
    }
    // SAFETY: the kernel wrote the whole value; V is plain data.
    Ok(Some(unsafe { value.assume_init() }))
}
