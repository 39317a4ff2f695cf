//! `run`'s side of SPA: each request the kernel handed over is verified, and a granted
//! one authorizes its address exactly as a completed knock sequence would (the same
//! map, the same `open` event, the same kept connections).

mod fwknop;
mod replay;
mod verify;

use std::{
    fmt,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use knock_common::{Authorization, Origin, SPA_KEY_ID_LEN, SPA_MAX_PAYLOAD, SpaRequest};

pub use replay::MAX_ENTRIES as REPLAY_CACHE_ENTRIES;
pub use verify::Verifier;

use crate::{
    clock::{human, nanos},
    daemon::{event::Event, events::Events},
    kernel::maps::State,
    net::{mapped, source_key, unmapped},
    spa::packet::NONCE_LEN,
};

/// Verifies `request`.
pub fn check(request: &SpaRequest, verifier: &mut Verifier) -> Result<Grant, Rejection> {
    let len = (request.len as usize).min(SPA_MAX_PAYLOAD);
    let payload = request.payload.get(..len).unwrap_or_default();
    verifier.verify(unmapped(request.addr), payload, SystemTime::now())
}

/// `spa_rejected` for `request`, refused for `rejection`.
pub fn rejected(request: &SpaRequest, rejection: &Rejection) -> Event {
    Events::spa_rejected(request.addr, rejection.reason(), rejection.to_string())
}

/// Authorizes what `grant` was granted, exactly as a completed knock sequence
/// would; returns the events.
pub fn authorize(grant: &Grant, state: &mut State, events: &mut Events) -> Vec<Event> {
    let now_ns = match state.now_ns() {
        Ok(now) => now,
        Err(e) => {
            return vec![Events::spa_rejected(
                mapped(grant.addr),
                "error",
                format!("{e:#}"),
            )];
        }
    };
    let expires_ns = now_ns.saturating_add(nanos(grant.open_for));
    let auth = Authorization::new(now_ns, expires_ns, Origin::Spa);
    grant
        .sequences
        .iter()
        .map(|seq| {
            let key = source_key(grant.addr, *seq);
            match state.authorize(&key, &auth) {
                Ok(()) => events.spa_open(key, &auth, grant.open_for, &grant.client),
                Err(e) => events.open_failed(key, format!("{e:#}")),
            }
        })
        .collect()
}

/// What a request's replay is recognised by: its client's key id (fwknop's requests
/// share one) and its nonce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nonce {
    pub key_id: [u8; SPA_KEY_ID_LEN],
    pub nonce: [u8; NONCE_LEN],
}

/// An accepted request: open `sequences` for `addr` for `open_for`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The client's name in the config.
    pub client: String,
    /// The address to authorize (IPv4 as IPv4, never IPv4-mapped).
    pub addr: IpAddr,
    /// Indices into `config.sequences`, ascending, without repeats.
    pub sequences: Vec<u8>,
    pub open_for: Duration,
    pub nonce: Nonce,
}

/// Why a request was refused. Nothing is ever sent back; these are for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Too short or too long, another version, or (once authenticated) a plaintext
    /// that is not the documented layout.
    Malformed,
    /// No client has the key id.
    UnknownKey,
    /// The nonce's check value is not the client's (refused in the kernel).
    BadCheck,
    /// The tag did not check out: another key, or altered on the way.
    BadTag,
    /// The request's timestamp is more than `window` in the past.
    Stale { skew: Duration, window: Duration },
    /// The request's timestamp is more than `window` in the future.
    Future { skew: Duration, window: Duration },
    /// The same (key id, nonce) was accepted within the window.
    Replayed,
    /// The request names another address than its source, and the client is not
    /// `behind_nat`.
    AddressMismatch { requested: IpAddr },
    /// Something the client may not open, or for longer than its `max_open`.
    NotAllowed { what: String },
    /// The replay cache holds [`REPLAY_CACHE_ENTRIES`] requests of the window: new
    /// ones are refused rather than made replayable.
    ReplayCacheFull,
    /// The request is older than nonces the replay cache has dropped (after the clock
    /// stepped back, or the window grew), by `by`: it could be a replay of one.
    ReplayForgotten { by: Duration },
    /// The replay cache file could not be written: refused, since after a restart
    /// the request could be replayed.
    ReplayCacheUnsaved { error: String },
    /// fwknop's shape, but not a request of its (no base64, the prefix, too short).
    FwknopMalformed { why: &'static str },
    /// No `[[spa.fwknop]]` client's HMAC key authenticates it.
    BadHmac,
    /// Authenticated, but it does not decrypt or parse as fwknop's plaintext.
    BadPlaintext { why: &'static str },
    /// An authentic command or NAT message, which xknock never acts on.
    Unsupported { what: &'static str },
    /// Another host of the fleet accepted the same request (its nonce is claimed).
    ReplayedInFleet,
    /// The nonce could not be claimed fleet-wide and `[fleet] offline_spa = "refuse"`.
    FleetUnreachable,
}

impl Rejection {
    /// The `reason` field of JSON events.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadCheck => "bad_check",
            Rejection::BadTag => "bad_tag",
            Rejection::Stale { .. } => "stale",
            Rejection::Future { .. } => "future",
            Rejection::Replayed => "replayed",
            Rejection::AddressMismatch { .. } => "address_mismatch",
            Rejection::NotAllowed { .. } => "not_allowed",
            Rejection::ReplayCacheFull => "replay_cache_full",
            Rejection::ReplayForgotten { .. } => "replay_forgotten",
            Rejection::ReplayCacheUnsaved { .. } => "replay_cache_unsaved",
            Rejection::FwknopMalformed { .. } => "malformed",
            Rejection::BadHmac => "bad_hmac",
            Rejection::BadPlaintext { .. } => "bad_plaintext",
            Rejection::Unsupported { .. } => "unsupported",
            Rejection::ReplayedInFleet => "replayed",
            Rejection::FleetUnreachable => "fleet_unreachable",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed => f.write_str("not a well-formed SPA request"),
            Rejection::UnknownKey => f.write_str("no client has this key id"),
            Rejection::BadCheck => {
                f.write_str("the nonce's check value is not the client's (sent by someone without the key)")
            }
            Rejection::BadTag => f.write_str("authentication failed (another key, or altered on the way)"),
            Rejection::Stale { skew, window } => write!(
                f,
                "the client's clock is {} behind, or the request is that old (window {})",
                human(*skew),
                human(*window)
            ),
            Rejection::Future { skew, window } => write!(
                f,
                "the client's clock is {} ahead (window {})",
                human(*skew),
                human(*window)
            ),
            Rejection::Replayed => f.write_str("a replay of a request already accepted"),
            Rejection::AddressMismatch { requested } => write!(
                f,
                "asks to open for {requested}, not for the address it came from (the client is not behind_nat)"
            ),
            Rejection::NotAllowed { what } => write!(f, "not allowed: {what}"),
            Rejection::ReplayCacheFull => write!(
                f,
                "the replay cache is full ({REPLAY_CACHE_ENTRIES} requests within the window)"
            ),
            Rejection::ReplayForgotten { by } => write!(
                f,
                "the request is older than a nonce the replay cache has dropped (by {}; \
                 the clock stepped back or the window grew), so it could be a replay",
                human(*by)
            ),
            Rejection::ReplayCacheUnsaved { error } => {
                write!(f, "refused because the replay cache could not be saved: {error}")
            }
            Rejection::FwknopMalformed { why } => write!(f, "not a well-formed fwknop request: {why}"),
            Rejection::BadHmac => f.write_str(
                "no fwknop client's HMAC key authenticates it (another key or HMAC digest, or altered on the way)",
            ),
            Rejection::BadPlaintext { why } => write!(f, "authentic, but not fwknop's plaintext: {why}"),
            Rejection::Unsupported { what } => write!(f, "{what}: refused"),
            Rejection::ReplayedInFleet => {
                f.write_str("a replay of a request another host of the fleet accepted")
            }
            Rejection::FleetUnreachable => f.write_str(
                "its nonce cannot be claimed in the fleet (etcd unreachable) and offline_spa = \"refuse\"",
            ),
        }
    }
}
