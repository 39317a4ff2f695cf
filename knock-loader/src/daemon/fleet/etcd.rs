//! The fleet's one task that talks to etcd: it connects, lists every authorization,
//! watches from the listing's revision on, and carries out the loop's writes and
//! nonce claims. Any failure ends the session: it says so, waits, and starts again
//! with a full listing, so that a deletion a broken watch missed is found by the
//! listing (the loop compares it with what it installed). It never ends `run`, and
//! never decides anything about access: it reports, and the loop decides.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    clock::millis,
    config::Fleet as FleetConfig,
    fleet::record::{AuthKey, Keys, Record},
    spa::packet::unix_ms,
};

/// How long one request to etcd may take before the session is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings, no more often than etcd allows (`--grpc-keepalive-min-time`, 5 s:
/// more often and it closes the connection).
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A cheap request this often: a cut link or a cluster that lost its members ends
/// the session within this and [`REQUEST_TIMEOUT`], where TCP alone could wait for
/// minutes.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Between sessions: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LAST: Duration = Duration::from_secs(2);
/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// A grant to publish, as the ledger planned it.
#[derive(Clone, Debug)]
pub struct Publish {
    pub key: AuthKey,
    pub record: Record,
    pub opened_ns: u64,
}

/// What the loop asks of etcd.
pub enum Request {
    /// Puts and deletes, reported back as `Written` (or `WriteFailed`).
    Write {
        publish: Vec<Publish>,
        delete: Vec<AuthKey>,
    },
    /// Creates `key` unless it exists, kept for `ttl`: whether this host was first.
    Claim {
        key: String,
        ttl: Duration,
        reply: oneshot::Sender<Claimed>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    Mine,
    Taken,
    Unreachable,
}

/// What etcd said, in order.
#[derive(Debug)]
pub enum Report {
    /// Every authorization in etcd at the start of a session; the watch goes on from
    /// there.
    Listed(Vec<(String, Vec<u8>)>),
    Put(String, Vec<u8>),
    Deleted(String),
    Written {
        published: Vec<Publish>,
        deleted: Vec<AuthKey>,
    },
    WriteFailed(String),
    /// The session ended (etcd unreachable, the watch cancelled or compacted).
    Lost(String),
}

/// Runs sessions until the loop drops its end of `requests` (`run` is exiting).
pub async fn serve(
    config: FleetConfig,
    keys: Keys,
    mut requests: mpsc::UnboundedReceiver<Request>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut retry = RETRY_FIRST;
    loop {
        let mut session = Session {
            config: &config,
            keys: &keys,
            reports: &reports,
            leases: HashMap::new(),
        };
        // Boxed: a session's future holds the client and its streams.
        match Box::pin(session.run(&mut requests)).await {
            Ok(()) => return,
            Err(e) => {
                if reports.send(Report::Lost(format!("{e:#}"))).is_err() {
                    return;
                }
            }
        }
        // Until the next session, nothing can be written or claimed.
        let pause = tokio::time::sleep(retry);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                request = requests.recv() => match request {
                    None => return,
                    Some(request) => refuse(request, &reports, "etcd is unreachable"),
                },
            }
        }
        retry = (retry * 2).min(RETRY_LAST);
    }
}

fn refuse(request: Request, reports: &mpsc::UnboundedSender<Report>, why: &str) {
    match request {
        Request::Write { .. } => {
            let _ = reports.send(Report::WriteFailed(why.into()));
        }
        Request::Claim { reply, .. } => {
            let _ = reply.send(Claimed::Unreachable);
        }
    }
}

struct Session<'a> {
    config: &'a FleetConfig,
    keys: &'a Keys,
    reports: &'a mpsc::UnboundedSender<Report>,
    /// Leases by the second they end at: the records that expire in one second share
    /// one.
    leases: HashMap<u64, i64>,
}

impl Session<'_> {
    async fn run(&mut self, requests: &mut mpsc::UnboundedReceiver<Request>) -> Result<()> {
        let mut client = within(Client::connect(&self.config.etcd, Some(self.options()?)))
            .await
            .context("cannot connect")?;
        let prefix = self.keys.auth_prefix();
        let listing = within(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
            .await
            .context("cannot list the authorizations")?;
        let revision = listing
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| anyhow!("a listing without a revision"))?;
        let kvs = listing
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = within(client.watch(prefix.as_str(), Some(options)))
            .await
            .context("cannot watch the authorizations")?;
        self.report(Report::Listed(kvs))?;
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = check.tick() => {
                    let options = GetOptions::new().with_prefix().with_count_only();
                    within(client.get(prefix.as_str(), Some(options)))
                        .await
                        .context("etcd stopped answering")?;
                }
                message = watch.message() => {
                    let message = message.context("the watch failed")?.ok_or_else(|| anyhow!("the watch ended"))?;
                    if message.compact_revision() != 0 {
                        bail!("the watch fell behind a compaction (at revision {})", message.compact_revision());
                    }
                    if message.canceled() {
                        bail!("etcd cancelled the watch: {}", message.cancel_reason());
                    }
                    for event in message.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        self.report(match event.event_type() {
                            EventType::Put => Report::Put(key, kv.value().to_vec()),
                            EventType::Delete => Report::Deleted(key),
                        })?;
                    }
                }
                request = requests.recv() => match request {
                    None => return Ok(()),
                    Some(Request::Write { publish, delete }) => {
                        match self.write(&mut client, &publish, &delete).await {
                            Ok(()) => self.report(Report::Written { published: publish, deleted: delete })?,
                            Err(e) => {
                                self.report(Report::WriteFailed(format!("{e:#}")))?;
                                return Err(e);
                            }
                        }
                    }
                    Some(Request::Claim { key, ttl, reply }) => {
                        let claimed = self.claim(&mut client, key, ttl).await;
                        let failed = claimed.is_err();
                        let _ = reply.send(claimed.unwrap_or(Claimed::Unreachable));
                        if failed {
                            bail!("a nonce claim failed");
                        }
                    }
                },
            }
        }
    }

    fn report(&self, report: Report) -> Result<()> {
        self.reports.send(report).map_err(|_| anyhow!("run is exiting"))
    }

    fn options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(PING_EVERY, PING_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.config.tls {
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(cert, &key.0));
            }
            options = options.with_tls(t);
        }
        Ok(options)
    }

    /// Every put and delete, in transactions of at most etcd's limit.
    async fn write(&mut self, client: &mut Client, publish: &[Publish], delete: &[AuthKey]) -> Result<()> {
        let now_ms = unix_ms(SystemTime::now());
        let mut ops = Vec::with_capacity(publish.len() + delete.len());
        for p in publish {
            let lease = self.lease(client, p.record.expires_ms, now_ms).await?;
            let options = PutOptions::new().with_lease(lease);
            ops.push(TxnOp::put(
                self.keys.auth(&p.key),
                p.record.to_json(),
                Some(options),
            ));
        }
        ops.extend(delete.iter().map(|k| TxnOp::delete(self.keys.auth(k), None)));
        for chunk in ops.chunks(MAX_TXN_OPS) {
            within(client.txn(Txn::new().and_then(chunk.to_vec())))
                .await
                .context("cannot write the authorizations")?;
        }
        Ok(())
    }

    async fn claim(&mut self, client: &mut Client, key: String, ttl: Duration) -> Result<Claimed> {
        let now_ms = unix_ms(SystemTime::now());
        let lease = self
            .lease(client, now_ms.saturating_add(millis(ttl)), now_ms)
            .await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.config.name.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let response = within(client.txn(txn)).await.context("cannot claim the nonce")?;
        Ok(if response.succeeded() {
            Claimed::Mine
        } else {
            Claimed::Taken
        })
    }

    /// A lease that ends in the second after `until_ms` (Unix ms), shared by every
    /// key that ends in that second. Expired keys go with it; the receiving kernels
    /// enforce each record's own expiry either way.
    async fn lease(&mut self, client: &mut Client, until_ms: u64, now_ms: u64) -> Result<i64> {
        let second = until_ms.div_ceil(1000);
        self.leases.retain(|s, _| *s * 1000 > now_ms);
        if let Some(id) = self.leases.get(&second) {
            return Ok(*id);
        }
        let ttl = second.saturating_sub(now_ms / 1000).max(1) + 1;
        let granted = within(client.lease_grant(ttl as i64, None))
            .await
            .context("cannot grant a lease")?;
        self.leases.insert(second, granted.id());
        Ok(granted.id())
    }
}

/// `request`, given up after [`REQUEST_TIMEOUT`].
async fn within<T>(request: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => bail!("etcd did not answer within {REQUEST_TIMEOUT:?}"),
    }
}
