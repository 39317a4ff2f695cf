//! `run --metrics ADDR`: the kernel's counters and the maps' state as Prometheus
//! metrics (OpenMetrics text) at `http://ADDR/metrics`.
//!
//! Every scrape opens the pinned maps itself and reads them on a blocking thread, so
//! the server shares nothing with the event loop but the tallies of commands and
//! events, and a
//! scrape of a map with a million entries never holds up events. One scrape reads
//! at a time; others wait for it. At most `MAX_CONNECTIONS` clients are served at
//! once, each for `CONNECTION_TIMEOUT` at most: a local user cannot make `run` run
//! out of descriptors through this port.

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{Pod, maps::IterableMap};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use knock_common::map_names;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{commands::Stats, event::Tally, fleet::Stats as FleetStats};
use crate::{kernel::maps::State, status};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lasts longer, whatever its client does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once: a bound on the descriptors (and memory) a local
/// client can make `run` spend, far below any descriptor limit.
const MAX_CONNECTIONS: usize = 16;

/// `--metrics`: PORT (on 127.0.0.1), or ADDR:PORT with an IPv4 or `[IPv6]` address.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<u16>() {
        Ok(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Err(_) => s.parse::<SocketAddr>().map_err(|_| {
            format!("{s:?} is not PORT (on 127.0.0.1) or ADDR:PORT, like 9464, 198.18.0.1:9464 or [::1]:9464")
        })?,
    };
    if addr.port() == 0 {
        return Err(format!("{s:?}: give a port from 1 to 65535"));
    }
    Ok(addr)
}

/// Binds `addr` now, so that a taken or foreign address stops `run` before it
/// attaches anything.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics: cannot listen on {addr}"))
}

/// Serves `/metrics` on `listener` from the maps pinned in `pin_dir`, until the
/// runtime ends.
pub fn serve(
    listener: TcpListener,
    pin_dir: PathBuf,
    commands: Arc<Stats>,
    events: Arc<Tally>,
    fleet: Option<Arc<FleetStats>>,
) {
    if let Ok(addr) = listener.local_addr() {
        log::info!("metrics at http://{addr}/metrics");
    }
    let scraper = Arc::new(Scraper {
        pin_dir,
        commands,
        events,
        fleet,
        one_at_a_time: Arc::default(),
    });
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            // At the cap, nothing more is accepted: further clients wait in the
            // listen queue, costing `run` no descriptor.
            let Ok(permit) = connections.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    failing = false;
                    stream
                }
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin, and say it once.
                    if !failing {
                        log::warn!("metrics: cannot accept a connection: {e}; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let scraper = scraper.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| {
                    let scraper = scraper.clone();
                    async move { Ok::<_, Infallible>(scraper.respond(req).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Err(e)) => log::debug!("metrics: connection ended: {e}"),
                    Err(_) => log::debug!("metrics: connection dropped after {CONNECTION_TIMEOUT:?}"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
}

struct Scraper {
    pin_dir: PathBuf,
    commands: Arc<Stats>,
    events: Arc<Tally>,
    fleet: Option<Arc<FleetStats>>,
    one_at_a_time: Arc<Mutex<()>>,
}

impl Scraper {
    async fn respond(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/metrics" {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics\n".into(),
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into());
        }
        let (pin_dir, one_at_a_time) = (self.pin_dir.clone(), self.one_at_a_time.clone());
        let read = tokio::task::spawn_blocking(move || {
            // Taken here, so that a scrape whose client left still counts until done.
            let _turn = one_at_a_time
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Snapshot::read(&pin_dir)
        })
        .await;
        match read.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(snapshot) => match snapshot.encode(&self.commands, &self.events, self.fleet.as_deref()) {
                Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
                Err(e) => {
                    log::warn!("metrics: cannot encode: {e}");
                    reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n"))
                }
            },
            Err(e) => {
                log::warn!("metrics: cannot read the maps: {e:#}");
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{e:#}\n"))
            }
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// One map: entries in it (expired ones included, until removed or evicted), how
/// many of them are live, and how many it can hold.
struct Occupancy {
    map: &'static str,
    entries: u64,
    live: u64,
    capacity: u32,
}

/// How many entries `map` can hold.
fn capacity<K: Pod, V: Pod>(map: &impl IterableMap<K, V>) -> Result<u32> {
    Ok(map
        .map()
        .info()
        .context("cannot read a map's size")?
        .max_entries())
}

/// What one scrape reports, read from the pins.
struct Snapshot {
    counters: Vec<(&'static str, u64)>,
    /// XK_PROGRESS, XK_AUTHORIZED, XK_FLOWS, XK_BANS, in that order.
    maps: [Occupancy; 4],
}

impl Snapshot {
    /// Walks the four tracking maps (blocking: a syscall or two per entry).
    fn read(pin_dir: &Path) -> Result<Snapshot> {
        let state = State::from_pins(pin_dir)?;
        let now = state.now_ns()?;
        let seqs = state.sequences()?;
        let tally = |map: &'static str, capacity: u32, live: &mut dyn Iterator<Item = bool>| {
            let (mut entries, mut live_entries) = (0, 0);
            for is_live in live {
                entries += 1;
                live_entries += u64::from(is_live);
            }
            Occupancy {
                map,
                entries,
                live: live_entries,
                capacity,
            }
        };
        let progress = tally(
            map_names::PROGRESS,
            capacity(&state.progress)?,
            &mut state.progress.iter().filter_map(Result::ok).map(|(k, p)| {
                seqs.iter()
                    .find(|(i, _)| *i == k.seq)
                    .is_some_and(|(_, c)| status::progress_is_live(&p, c, now))
            }),
        );
        let authorized = tally(
            map_names::AUTHORIZED,
            capacity(&state.authorized)?,
            &mut state
                .authorized
                .iter()
                .filter_map(Result::ok)
                .map(|(_, a)| a.expires_ns > now),
        );
        let flows = tally(
            map_names::FLOWS,
            capacity(&state.flows)?,
            &mut state
                .flows
                .iter()
                .filter_map(Result::ok)
                .map(|(_, f)| status::flow_is_live(&f, now)),
        );
        let bans = tally(
            map_names::BANS,
            capacity(&state.bans)?,
            &mut state
                .bans
                .iter()
                .filter_map(Result::ok)
                .map(|(_, b)| b.until_ns > now),
        );
        let counters = state
            .counters()?
            .into_iter()
            .map(|(c, v)| (c.name(), v))
            .collect();
        Ok(Snapshot {
            counters,
            maps: [progress, authorized, flows, bans],
        })
    }

    fn encode(
        &self,
        commands: &Stats,
        events: &Tally,
        fleet: Option<&FleetStats>,
    ) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("xknock");
        let counters = Family::<[(&str, &str); 1], Counter>::default();
        for (name, value) in &self.counters {
            counters.get_or_create(&[("name", name)]).inc_by(*value);
        }
        registry.register(
            "counter",
            "The XDP program's counters, as `xknock status` shows them: verdicts, \
             SPA requests, and events_lost and spa_lost (ring buffers full)",
            counters,
        );
        let [progress, authorized, flows, bans] = &self.maps;
        for (name, help, value) in [
            (
                "in_progress",
                "(source, sequence) pairs part-way through a sequence",
                progress.live,
            ),
            ("authorized", "Authorizations not yet expired", authorized.live),
            (
                "kept_connections",
                "Connections kept past their window, not idle",
                flows.live,
            ),
            ("banned", "Sources banned now", bans.live),
        ] {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(name, help, gauge);
        }
        let entries = Family::<[(&str, &str); 1], Gauge>::default();
        let capacity = Family::<[(&str, &str); 1], Gauge>::default();
        for m in &self.maps {
            entries
                .get_or_create(&[("map", m.map)])
                .set(i64::try_from(m.entries).unwrap_or(i64::MAX));
            capacity
                .get_or_create(&[("map", m.map)])
                .set(i64::from(m.capacity));
        }
        registry.register(
            "map_entries",
            "Entries in a tracking map, expired ones included until removed or evicted",
            entries,
        );
        registry.register("map_capacity", "The entries a tracking map can hold", capacity);
        let results = Family::<[(&str, &str); 1], Counter>::default();
        for (result, counter) in [
            ("succeeded", &commands.succeeded),
            ("failed", &commands.failed),
            ("timed_out", &commands.timed_out),
            ("dropped", &commands.dropped),
        ] {
            results
                .get_or_create(&[("result", result)])
                .inc_by(counter.load(Relaxed));
        }
        registry.register(
            "commands",
            "on_open and on_close commands by how they ended (dropped: the queue was full)",
            results,
        );
        let reported = Family::<[(&str, &str); 1], Counter>::default();
        for (event, count) in events.counts() {
            reported.get_or_create(&[("event", event)]).inc_by(count);
        }
        registry.register(
            "events",
            "Events run reported, by kind (knock and reset within the [events] budget; \
             the rest are in the suppressed_* counters)",
            reported,
        );
        if let Some(fleet) = fleet {
            register_fleet(&mut registry, fleet);
        }
        let mut text = String::new();
        encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// `[fleet]`: whether etcd is reachable, and what went through it.
fn register_fleet(registry: &mut Registry, fleet: &FleetStats) {
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(fleet.connected.load(Relaxed)));
    registry.register(
        "fleet_connected",
        "1 while etcd is reachable and the watch is up (0: nothing arrives from the fleet)",
        connected,
    );
    let lag = Gauge::<i64>::default();
    lag.set(i64::try_from(fleet.watch_lag_ms.load(Relaxed)).unwrap_or(i64::MAX));
    registry.register(
        "fleet_watch_lag_milliseconds",
        "How old the last authorization installed from the fleet was when it arrived \
         (from its grant on the publishing host; clock skew included)",
        lag,
    );
    for (name, help, value) in [
        (
            "fleet_published",
            "Authorizations this host wrote to etcd",
            &fleet.published,
        ),
        (
            "fleet_installed",
            "Authorizations from other hosts installed here",
            &fleet.installed,
        ),
        (
            "fleet_refused",
            "Records from other hosts refused (too long, unknown sequence, malformed)",
            &fleet.refused,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value.load(Relaxed));
        registry.register(name, help, counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_addr("[::1]:9464"), Ok("[::1]:9464".parse().unwrap()));
        assert_eq!(parse_addr("0.0.0.0:80"), Ok("0.0.0.0:80".parse().unwrap()));
        for bad in ["0", "[::1]:0", "localhost:9464", "::1", "9464/tcp", "", "70000"] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_text_names_every_counter_and_map() {
        let occupancy = |map, entries, live, capacity| Occupancy {
            map,
            entries,
            live,
            capacity,
        };
        let snapshot = Snapshot {
            counters: vec![("drop_knock", 6), ("events_lost", 0)],
            maps: [
                occupancy(map_names::PROGRESS, 5, 2, 65536),
                occupancy(map_names::AUTHORIZED, 1, 1, 16384),
                occupancy(map_names::FLOWS, 0, 0, 65536),
                occupancy(map_names::BANS, 3, 0, 65536),
            ],
        };
        let stats = Stats::default();
        stats.dropped.store(2, Relaxed);
        let events = Tally::default();
        events.count(&crate::daemon::events::Events::spa_rejected(
            [0; 16],
            "malformed",
            String::new(),
        ));
        let text = snapshot.encode(&stats, &events, None).expect("encodes");
        assert!(!text.contains("fleet"), "no [fleet], no fleet metrics:\n{text}");
        let fleet = FleetStats::default();
        fleet.connected.store(true, Relaxed);
        fleet.installed.store(3, Relaxed);
        fleet.watch_lag_ms.store(4, Relaxed);
        let with_fleet = snapshot.encode(&stats, &events, Some(&fleet)).expect("encodes");
        for line in [
            "xknock_fleet_connected 1",
            "xknock_fleet_watch_lag_milliseconds 4",
            "xknock_fleet_installed_total 3",
            "xknock_fleet_published_total 0",
            "xknock_fleet_refused_total 0",
        ] {
            assert!(
                with_fleet.lines().any(|l| l == line),
                "{line:?} in:\n{with_fleet}"
            );
        }
        for line in [
            "# TYPE xknock_counter counter",
            "xknock_counter_total{name=\"drop_knock\"} 6",
            "xknock_counter_total{name=\"events_lost\"} 0",
            "xknock_in_progress 2",
            "xknock_authorized 1",
            "xknock_banned 0",
            "xknock_map_entries{map=\"XK_PROGRESS\"} 5",
            "xknock_map_capacity{map=\"XK_AUTHORIZED\"} 16384",
            "xknock_commands_total{result=\"dropped\"} 2",
            "xknock_events_total{event=\"spa_rejected\"} 1",
            "xknock_events_total{event=\"open\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        }
    }
}
