//! `entente.v1.Admin`: policy reload and explain, and the disclosure ledger, for the
//! node's operator (its own certificate) and `admin` clients.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{caller, require_admin};
use super::proto::admin_server::Admin;
use super::proto::{
    ExplainRequest, ExplainResponse, LedgerDelivery, LedgerRecord, LedgerShowRequest,
    LedgerVerifyRequest, LedgerVerifyResponse, ReloadPolicyRequest, ReloadPolicyResponse,
    StoredItem as ProtoStoredItem,
};
use crate::engine::Engine;
use crate::model::{ItemId, NodeId};
use crate::policy::Policy;
use crate::store::LedgerCheck;

/// Re-reads the configuration and puts the new policy in force.
pub trait PolicyReload: Send + Sync {
    /// Reloads; returns the policy now in force, or why the new configuration was refused
    /// (the old policy then stays in force).
    fn reload(&self) -> Result<Arc<Policy>, String>;

    /// The settings of the configuration in force that differ from those the node
    /// started with and take effect only at a restart (`node.listen`, `[limits]`, …).
    fn restart_needed(&self) -> Vec<String> {
        Vec::new()
    }

    /// The certificates whose expiry matters to the node (see
    /// `transport::Directory::watched_certificates`); none unless the node says.
    fn watched_certificates(&self) -> Vec<crate::transport::expiry::WatchedCertificate> {
        Vec::new()
    }

    /// A CRL (DER) offered to the node: `Ok(Some(issuer))` if it was put in force (and
    /// is being offered on to the peers), `Ok(None)` if the node has it or a newer one
    /// already, `Err` why it was refused.
    fn offer_crl(&self, der: &[u8]) -> Result<Option<String>, String> {
        let _ = der;
        Err("this node does not take CRLs from the federation".into())
    }
}

/// The Admin service of one node.
pub struct AdminService {
    engine: Arc<Engine>,
    reload: Arc<dyn PolicyReload>,
    links: crate::sync::Links,
    feeds: crate::feeds::FeedStates,
}

impl AdminService {
    /// The service over `engine`, reloading through `reload`, reporting `links` and
    /// `feeds`.
    pub fn new(
        engine: Arc<Engine>,
        reload: Arc<dyn PolicyReload>,
        links: crate::sync::Links,
        feeds: crate::feeds::FeedStates,
    ) -> Self {
        Self {
            engine,
            reload,
            links,
            feeds,
        }
    }
}

/// The ledger and link state name bundles, items and partners whatever their markings:
/// they are for the node's operator and admin clients whose own policy shows them every
/// item, not for an admin whose policy is narrowed.
fn require_unrestricted(
    engine: &Engine,
    info: &crate::transport::ConnectionInfo,
) -> Result<(), Status> {
    require_admin(info)?;
    still_unrestricted(engine, &info.partner.id)
}

/// Whether `partner`'s policy in force now still shows it every item: a ledger stream
/// asks again before each record, so a reload that narrows an admin's policy ends the
/// streams it opened before.
fn still_unrestricted(engine: &Engine, partner: &NodeId) -> Result<(), Status> {
    if engine.sees_everything(partner) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "the policy of {partner} is narrowed; the ledger and link state are for the node's operator and admin clients whose policy shows every item"
    )))
}

use crate::transport::expiry::CertificateRole;
use crate::util::hex;

type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_policy(
        &self,
        request: Request<ReloadPolicyRequest>,
    ) -> Result<Response<ReloadPolicyResponse>, Status> {
        let info = caller(&request)?;
        require_admin(info)?;
        // The description names every partner and its policy: only for those who see
        // everything; a narrowed admin gets the hash.
        let describe = self.engine.sees_everything(&info.partner.id);
        let reload = self.reload.clone();
        let policy = tokio::task::spawn_blocking(move || reload.reload())
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?
            .map_err(|problem| {
                if describe {
                    return Status::failed_precondition(format!(
                        "the configuration was refused; the previous policy stays in force: {problem}"
                    ));
                }
                // The reason quotes the configuration (partners and their policies): the
                // operator reads it in the log.
                tracing::warn!(%problem, "configuration refused at a reload");
                Status::failed_precondition(
                    "the configuration was refused; the previous policy stays in force; the reason is in the node's log",
                )
            })?;
        Ok(Response::new(ReloadPolicyResponse {
            restart_needed: self.reload.restart_needed(),
            policy_hash: hex(&policy.hash()),
            description: if describe {
                policy.describe()
            } else {
                String::new()
            },
        }))
    }

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        let info = caller(&request)?;
        require_admin(info)?;
        let asker = info.partner.clone();
        let ExplainRequest { partner, item_id } = request.into_inner();
        let partner =
            NodeId::new(&partner).map_err(|e| Status::invalid_argument(format!("partner: {e}")))?;
        let id = ItemId::parse(&item_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // An item the caller may not see itself is answered exactly as one not held.
        let Some((stored, decision)) = self.engine.explain(&asker, &partner, &id).await? else {
            return Err(Status::not_found(format!("{id} is not held by this node")));
        };
        Ok(Response::new(ExplainResponse {
            allow: decision.allowed(),
            rule: decision.rule.to_string(),
            item: Some(ProtoStoredItem::from(&stored)),
        }))
    }

    async fn store_state(
        &self,
        request: Request<super::proto::StoreStateRequest>,
    ) -> Result<Response<super::proto::StoreStateResponse>, Status> {
        require_unrestricted(&self.engine, caller(&request)?)?;
        let store = self.engine.store();
        let retention = store.retention();
        let (retention_error, since) = retention.failing.unwrap_or_default();
        Ok(Response::new(super::proto::StoreStateResponse {
            unwritable: store
                .writable()
                .err()
                .map_or_else(String::new, |e| e.to_string()),
            retention_error,
            retention_failing_since_unix_ms: since,
            retention_failures: retention.failures,
        }))
    }

    async fn limits(
        &self,
        request: Request<super::proto::LimitsRequest>,
    ) -> Result<Response<super::proto::LimitsResponse>, Status> {
        require_unrestricted(&self.engine, caller(&request)?)?;
        let counters = crate::limits::counters();
        Ok(Response::new(super::proto::LimitsResponse {
            limits: self
                .engine
                .limits()
                .describe()
                .into_iter()
                .map(|(name, value, limit)| super::proto::LimitState {
                    name: name.to_owned(),
                    value,
                    refused: limit.map_or(0, |l| counters.refused(l)),
                    counted: limit.is_some(),
                })
                .collect(),
        }))
    }

    async fn feeds(
        &self,
        request: Request<super::proto::FeedsRequest>,
    ) -> Result<Response<super::proto::FeedsResponse>, Status> {
        require_unrestricted(&self.engine, caller(&request)?)?;
        let feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Response::new(super::proto::FeedsResponse {
            feeds: feeds
                .iter()
                .map(|(name, s)| super::proto::FeedStatus {
                    name: name.clone(),
                    kind: s.kind.clone(),
                    url: s.url.clone(),
                    last_poll_unix_ms: s.last_poll_ms,
                    last_success_unix_ms: s.last_success_ms,
                    polls: s.polls,
                    failures: s.failures,
                    objects_fetched: s.objects_fetched,
                    items_ingested: s.items_ingested,
                    items_unchanged: s.items_unchanged,
                    objects_skipped: s.objects_skipped,
                    last_error: s.last_error.clone().unwrap_or_default(),
                    checkpoint: s.checkpoint.clone(),
                    skip_reasons: s.skip_reasons.clone(),
                })
                .collect(),
        }))
    }

    async fn apply_crl(
        &self,
        request: Request<super::proto::OfferCrlRequest>,
    ) -> Result<Response<super::proto::OfferCrlResponse>, Status> {
        require_admin(caller(&request)?)?;
        let super::proto::OfferCrlRequest { crl_der } = request.into_inner();
        let reload = self.reload.clone();
        let outcome = tokio::task::spawn_blocking(move || reload.offer_crl(&crl_der))
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(super::proto::OfferCrlResponse {
            applied: outcome.is_some(),
            issuer: outcome.unwrap_or_default(),
        }))
    }

    async fn certificates(
        &self,
        request: Request<super::proto::CertificatesRequest>,
    ) -> Result<Response<super::proto::CertificatesResponse>, Status> {
        let info = caller(&request)?;
        require_admin(info)?;
        // Partners' certificates (their ids, serials and when each last connected) are
        // for those that see everything, as the link state is; a narrowed admin is
        // given the node's own certificate, the trust anchors and its own.
        let unrestricted = self.engine.sees_everything(&info.partner.id);
        let asker = info.partner.id.as_str().to_owned();
        Ok(Response::new(super::proto::CertificatesResponse {
            certificates: self
                .reload
                .watched_certificates()
                .into_iter()
                .filter(|c| unrestricted || c.role != CertificateRole::Partner || c.name == asker)
                .map(|c| super::proto::WatchedCertificate {
                    role: c.role.as_str().to_owned(),
                    name: c.name,
                    serial: c.serial,
                    not_after_unix_ms: c.not_after_ms,
                    last_seen_unix_ms: c.last_seen_ms.unwrap_or(0),
                    revoked_by: c.revoked_by.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn links(
        &self,
        request: Request<super::proto::LinksRequest>,
    ) -> Result<Response<super::proto::LinksResponse>, Status> {
        require_unrestricted(&self.engine, caller(&request)?)?;
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Response::new(super::proto::LinksResponse {
            links: links
                .iter()
                .map(|(peer, s)| super::proto::LinkStatus {
                    peer: peer.to_string(),
                    address: s.address.clone(),
                    connected: s.connected,
                    bundles_received: s.received,
                    bundles_rejected: s.rejected,
                    last_error: s.last_error.clone().unwrap_or_default(),
                    last_message_unix_ms: s.last_message_ms,
                    items_received: s.items_received,
                    items_rejected: s.items_rejected,
                    caught_up: s.caught_up(),
                    bundles_held_back: s.held_back,
                    lag_ms: s
                        .behind_since_ms
                        .map_or(0, |since| (crate::engine::now_ms() - since).max(0)),
                })
                .collect(),
        }))
    }

    type LedgerShowStream = BoxStream<LedgerRecord>;

    async fn ledger_show(
        &self,
        request: Request<LedgerShowRequest>,
    ) -> Result<Response<Self::LedgerShowStream>, Status> {
        let info = caller(&request)?;
        require_unrestricted(&self.engine, info)?;
        let caller_id = info.partner.id.clone();
        let LedgerShowRequest {
            partner,
            since_unix_ms,
        } = request.into_inner();
        let partner = if partner.is_empty() {
            None
        } else {
            Some(
                NodeId::new(&partner)
                    .map_err(|e| Status::invalid_argument(format!("partner: {e}")))?,
            )
        };
        let since = (since_unix_ms != 0).then_some(since_unix_ms);
        // A stream like any other: it counts under `limits.streams_per_partner` and is
        // let go when its reader stops reading for `limits.slow_reader_timeout`.
        let slot = self.engine.open_stream(&caller_id)?;
        let timeout = self.engine.slow_reader_timeout();
        self.engine.sync_ledger().await?;
        let store = self.engine.store().clone();
        let engine = self.engine.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            let mut after = 0;
            loop {
                let page = {
                    let store = store.clone();
                    let partner = partner.clone();
                    tokio::task::spawn_blocking(move || {
                        store.ledger(after, LEDGER_PAGE, partner.as_ref(), since)
                    })
                    .await
                };
                let page = match page {
                    Ok(Ok(page)) => page,
                    Ok(Err(error)) => {
                        let error = Status::from(crate::engine::EngineError::from(error));
                        send_within(&tx, Err(error), timeout).await;
                        return;
                    }
                    Err(e) => {
                        let error = Status::internal(format!("task failed: {e}"));
                        send_within(&tx, Err(error), timeout).await;
                        return;
                    }
                };
                let Some(last) = page.last() else {
                    return;
                };
                after = last.seq;
                for record in page {
                    // Authority as it stands now, not as it stood when the stream opened.
                    if let Err(refused) = still_unrestricted(&engine, &caller_id) {
                        send_within(&tx, Err(refused), timeout).await;
                        return;
                    }
                    if !send_within(&tx, Ok(ledger_record(record)), timeout).await {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ledger_verify(
        &self,
        request: Request<LedgerVerifyRequest>,
    ) -> Result<Response<LedgerVerifyResponse>, Status> {
        require_unrestricted(&self.engine, caller(&request)?)?;
        self.engine.sync_ledger().await?;
        let store = self.engine.store().clone();
        let (check, first) = tokio::task::spawn_blocking(move || {
            let check = store.verify_ledger()?;
            let first = store.ledger(0, 1, None, None)?.pop();
            Ok::<_, crate::store::StoreError>((check, first))
        })
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(crate::engine::EngineError::from)?;
        // A ledger restarted after its history was lost says so in its first record.
        let (restarted, restarted_unix_ms) = match first {
            Some(r) if r.seq == 1 && r.entry.path == crate::store::LEDGER_RESTART_PATH => {
                (r.entry.note, r.entry.time_ms)
            }
            _ => (String::new(), 0),
        };
        Ok(Response::new(match check {
            LedgerCheck::Intact {
                records,
                head,
                from,
            } => LedgerVerifyResponse {
                intact: true,
                records,
                head: head.to_vec(),
                broken_at: 0,
                problem: String::new(),
                restarted,
                restarted_unix_ms,
                verified_from: from,
            },
            LedgerCheck::Broken { seq, problem } => LedgerVerifyResponse {
                intact: false,
                records: 0,
                head: Vec::new(),
                broken_at: seq,
                problem,
                restarted,
                restarted_unix_ms,
                verified_from: 0,
            },
        }))
    }
}

/// Ledger records per store read while streaming (a record may name a thousand
/// deliveries, so a page is kept small).
const LEDGER_PAGE: usize = 100;

/// Queues `next` for the reader; false when the reader has gone or has not taken
/// anything for `timeout` (`limits.slow_reader_timeout`), and the stream ends.
async fn send_within<T>(
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
    next: Result<T, Status>,
    timeout: std::time::Duration,
) -> bool {
    match tokio::time::timeout(timeout, tx.send(next)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            crate::limits::count(crate::limits::Limit::SlowReaderTimeout);
            tracing::info!(
                timeout_s = timeout.as_secs_f64(),
                "ledger stream ended: the client did not read within limits.slow_reader_timeout"
            );
            false
        }
    }
}

fn ledger_record(record: crate::store::LedgerRecord) -> LedgerRecord {
    let crate::store::LedgerRecord {
        seq,
        entry,
        prev_hash,
        hash,
    } = record;
    LedgerRecord {
        seq,
        time_unix_ms: entry.time_ms,
        partner: entry.partner.to_string(),
        path: entry.path,
        deliveries: entry
            .deliveries
            .into_iter()
            .map(|(bundle, indices)| LedgerDelivery {
                bundle_id: bundle.to_string(),
                indices,
            })
            .collect(),
        policy_hash: entry.policy_hash.to_vec(),
        note: entry.note,
        prev_hash: prev_hash.to_vec(),
        hash: hash.to_vec(),
    }
}
