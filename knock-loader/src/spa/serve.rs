//! `run`'s side of SPA: each request the kernel handed over is verified, and a granted
//! one authorizes its address exactly as a completed knock sequence would (the same
//! map, the same `open` event, the same kept connections).

use std::time::SystemTime;

use knock_common::{Authorization, Origin, SPA_MAX_PAYLOAD, SpaRequest};

use super::Verifier;
use crate::{
    config::nanos,
    events::{EventLine, Events},
    maps::{State, source_key, unmapped},
};

/// Verifies `request` and authorizes what it was granted; returns the events.
pub fn serve(
    request: &SpaRequest,
    verifier: &mut Verifier,
    state: &mut State,
    events: &mut Events,
) -> Vec<EventLine> {
    let len = (request.len as usize).min(SPA_MAX_PAYLOAD);
    let payload = request.payload.get(..len).unwrap_or_default();
    let grant = match verifier.verify(unmapped(request.addr), payload, SystemTime::now()) {
        Ok(grant) => grant,
        Err(rejection) => {
            return vec![events.spa_rejected(request.addr, rejection.reason(), rejection.to_string())];
        }
    };
    let now_ns = match state.now_ns() {
        Ok(now) => now,
        Err(e) => return vec![events.spa_rejected(request.addr, "error", format!("{e:#}"))],
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
