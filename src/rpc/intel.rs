//! `entente.v1.Intel`: the client service (publish, query, get, subscribe, export).

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{HeldAnswer, caller, require_client, require_writer};
use super::convert;
use super::proto::intel_server::Intel;
use super::proto::{
    ExportChunk, ExportRequest, GetRequest, GetResponse, PublishRequest, PublishResponse,
    QueryRequest, QueryResponse, RejectedItem, StoredItem as ProtoStoredItem, SubscribeRequest,
};
use crate::crypto::MAX_ITEMS_PER_BUNDLE;
use crate::engine::{Answer, Engine, EngineError, PublishReceipt, SubscriptionEnd, now_ms};
use crate::model::{Item, ItemId};

/// Default and largest page of `Query`.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page of `Query`.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The Intel service of one node.
#[derive(Clone)]
pub struct IntelService {
    engine: Arc<Engine>,
    shutdown: CancellationToken,
}

impl IntelService {
    /// The service over `engine`; open streams end when `shutdown` is cancelled.
    pub fn new(engine: Arc<Engine>, shutdown: CancellationToken) -> Self {
        Self { engine, shutdown }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
}

impl IntelService {
    /// Publishes each message of the stream as one bundle, counting into `response`.
    /// Two stages overlap: message N+1 is checked and signed while bundle N is written.
    async fn publish_stream(
        &self,
        connection: &crate::transport::ConnectionInfo,
        publisher: &crate::model::Partner,
        stream: &mut Streaming<PublishRequest>,
        response: &mut PublishResponse,
    ) -> Result<(), Status> {
        let mut message = 0usize;
        let mut writing: Option<tokio::task::JoinHandle<Result<Written, Status>>> = None;
        let result = async {
            let idle = self.engine.slow_reader_timeout();
            loop {
                // A caller that holds a publish slot open without sending is let go.
                let next = match tokio::time::timeout(idle, stream.message()).await {
                    Ok(next) => next.map_err(|status| oversized(status, message))?,
                    Err(_) => {
                        crate::limits::count(crate::limits::Limit::SlowReaderTimeout);
                        return Err(Status::deadline_exceeded(format!(
                            "message {message}: nothing sent for {}s (limits.slow_reader_timeout)",
                            idle.as_secs_f64()
                        )));
                    }
                };
                let Some(next) = next else { break };
                let PublishRequest {
                    items,
                    distribution,
                    groups,
                } = next;
                if items.is_empty() || items.len() > MAX_ITEMS_PER_BUNDLE {
                    return Err(Status::invalid_argument(format!(
                        "message {message}: a bundle holds 1 to {MAX_ITEMS_PER_BUNDLE} items, not {}",
                        items.len()
                    )));
                }
                // limits.publish_items_per_second: a faster publisher is slowed down, and
                // the stream's flow control holds its next messages back meanwhile.
                let wait = self.engine.publish_delay(&publisher.id, items.len());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                // Each message is a write of its own, authorised as it is written: a
                // reload that demoted or removed the writer refuses it at once, not
                // only when the connection closes a moment later.
                if let Some(withdrawal) = connection.withdrawal() {
                    return Err(Status::from(withdrawal));
                }
                let mut distribution = convert::distribution(distribution)?;
                if !groups.is_empty() {
                    let policy = self.engine.policy();
                    for name in &groups {
                        let members = policy.group(name).ok_or_else(|| {
                            Status::invalid_argument(format!(
                                "unknown sharing group {name:?}; groups are configured in [groups] of the node"
                            ))
                        })?;
                        for member in members {
                            if !distribution.recipients.contains(member) {
                                distribution.recipients.push(member.clone());
                            }
                        }
                    }
                    if distribution.recipients.len() > crate::model::MAX_RECIPIENTS {
                        return Err(Status::invalid_argument("too many recipients"));
                    }
                }
                let engine = self.engine.clone();
                let writer = publisher.clone();
                let publisher = publisher.clone();
                let signed = blocking(move || {
                    let now = now_ms();
                    let origin = engine.policy().node().to_string();
                    let items = items
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut draft)| {
                            engine.complete_revocation(&publisher, i, &mut draft, now)?;
                            Item::from_draft(draft, &origin, now).map_err(|e| {
                                Status::invalid_argument(format!("message {message}, item {i}: {e}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    // Indicators revoked here that this bundle gives a later version of:
                    // the publisher is told they are live again.
                    let mut relisted = std::collections::HashSet::new();
                    for item in &items {
                        if !matches!(item.kind, crate::model::ItemKind::Revocation(_))
                            && engine
                                .store()
                                .latest_is_revocation(&item.id)
                                .map_err(EngineError::from)?
                        {
                            relisted.insert(item.id.clone());
                        }
                    }
                    let signed = engine.sign(&publisher, &items, &distribution, now)?;
                    Ok((signed, relisted))
                })
                .await?;
                let (signed, relisted) = signed;
                if let Some(previous) = writing.take() {
                    count(response, join(previous).await?);
                }
                let engine = self.engine.clone();
                writing = Some(tokio::task::spawn_blocking(move || {
                    let receipt = engine.store_own(&signed, now_ms())?;
                    let rejected = rejected_items(&engine, &writer, &signed, &receipt);
                    let stored: Vec<&crate::model::Item> = signed
                        .items()
                        .iter()
                        .filter(|item| receipt.report.stored.contains(&item.index))
                        .map(|item| &item.item)
                        .collect();
                    let relisted: Vec<String> = stored
                        .iter()
                        .filter(|item| relisted.contains(&item.id))
                        .map(|item| item.id.to_string())
                        .collect();
                    let waiting = if engine.sees_everything(&writer.id) {
                        waiting_items(&engine, &stored)?
                    } else {
                        Vec::new()
                    };
                    Ok(Written {
                        receipt,
                        rejected,
                        relisted,
                        waiting,
                    })
                }));
                message += 1;
            }
            Ok(())
        }
        .await;
        // The bundle being written is finished and counted, even after an error.
        if let Some(previous) = writing.take() {
            count(response, join(previous).await?);
        }
        result
    }
}

/// tonic refuses a message over `max_decoding_message_size` with `OUT_OF_RANGE` before
/// reading it; the caller is told which limit it hit, as `RESOURCE_EXHAUSTED`.
fn oversized(status: Status, message: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        crate::limits::count(crate::limits::Limit::PublishMessageBytes);
        return Status::resource_exhausted(format!(
            "message {message}: {} (limits.publish_message_bytes; split the bundle)",
            status.message()
        ));
    }
    status
}

async fn join<T>(task: tokio::task::JoinHandle<Result<T, Status>>) -> Result<T, Status> {
    task.await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
}

/// A stored bundle's receipt, the items it refused with why, the revoked indicators it
/// made live again, and what it stored that waits for objects not held.
struct Written {
    receipt: PublishReceipt,
    rejected: Vec<RejectedItem>,
    relisted: Vec<String>,
    waiting: Vec<RejectedItem>,
}

fn count(response: &mut PublishResponse, written: Written) {
    let Written {
        receipt,
        rejected,
        relisted,
        waiting,
    } = written;
    response.bundle_ids.push(receipt.bundle_id.to_string());
    response.items_accepted += receipt.report.stored.len() as u64;
    response.items_duplicate += receipt.report.duplicates as u64;
    response.items_rejected += receipt.report.rejected.len() as u64;
    let room = MAX_REJECTED_NAMED.saturating_sub(response.rejected.len());
    response.rejected.extend(rejected.into_iter().take(room));
    response.items_relisted += relisted.len() as u64;
    let room = MAX_REJECTED_NAMED.saturating_sub(response.relisted.len());
    response.relisted.extend(relisted.into_iter().take(room));
    let room = MAX_REJECTED_NAMED.saturating_sub(response.waiting.len());
    response.waiting.extend(waiting.into_iter().take(room));
}

/// The stored relationships, reports and sightings of `stored` that reference an object
/// this node does not hold under its type, each with the first such id: withheld from
/// every partner until it arrives. Only told to a publisher that sees every item (to
/// another, an object it may not see would look unlike an absent one).
fn waiting_items(
    engine: &Engine,
    stored: &[&crate::model::Item],
) -> Result<Vec<RejectedItem>, Status> {
    let mut out = Vec::new();
    for item in stored {
        let crate::model::ItemKind::Context(context) = &item.kind else {
            continue;
        };
        for reference in &context.refs {
            if engine
                .store()
                .get(reference)
                .map_err(EngineError::from)?
                .is_none()
            {
                out.push(RejectedItem {
                    id: item.id.to_string(),
                    reason: format!(
                        "references {reference}, which this node does not hold: it goes to no partner until that arrives"
                    ),
                });
                break;
            }
        }
        if out.len() >= MAX_REJECTED_NAMED {
            break;
        }
    }
    Ok(out)
}

/// Most refused items a Publish answer names (the count is always complete), so that the
/// answer stays small whatever was sent.
const MAX_REJECTED_NAMED: usize = 1000;

/// The items of `bundle` the store refused, by id, with the reason `publisher` may be
/// told ([`Engine::rejection_for`]).
fn rejected_items(
    engine: &Engine,
    publisher: &crate::model::Partner,
    bundle: &crate::crypto::VerifiedBundle,
    receipt: &PublishReceipt,
) -> Vec<RejectedItem> {
    let now = now_ms();
    receipt
        .report
        .rejected
        .iter()
        .map(|(index, why)| {
            match bundle.items().iter().find(|item| item.index == *index) {
                Some(item) => RejectedItem {
                    id: item.item.id.to_string(),
                    reason: engine.rejection_for(publisher, &item.item.id, why, now),
                },
                // Not in the bundle (it cannot be, short of a bug): nothing said of it.
                None => RejectedItem {
                    id: format!("item {index}"),
                    reason: "not stored".to_owned(),
                },
            }
        })
        .collect()
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Intel for IntelService {
    async fn publish(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<PublishResponse>, Status> {
        let partner = caller(&request)?.partner.clone();
        require_writer(caller(&request)?)?;
        let connection = caller(&request)?.clone();
        let _slot = self.engine.open_publish(&partner.id)?;
        let mut stream = request.into_inner();
        let mut response = PublishResponse::default();
        let outcome = self
            .publish_stream(&connection, &partner, &mut stream, &mut response)
            .await;
        // Whatever was stored is made durable before answering, error or not.
        if let Err(error) = self.engine.flush().await {
            let status = Status::from(error);
            if response.bundle_ids.is_empty() {
                return Err(status);
            }
            // Stored, and held, but not durable: said so, lest the caller take the
            // call for refused and publish the items again under new ids, or give up
            // on what partners may already have pulled.
            return Err(Status::new(
                status.code(),
                format!(
                    "{}; but the {} bundle(s) of this call were stored: the node holds them (and serves them once it can record deliveries again), but they are not yet durable; it makes them durable once its store can write again, so do not publish them again: {}",
                    status.message(),
                    response.bundle_ids.len(),
                    response.bundle_ids.join(", ")
                ),
            ));
        }
        if let Err(status) = outcome {
            if response.bundle_ids.is_empty() {
                return Err(status);
            }
            // Earlier messages of the stream were published: say which, so the client
            // does not publish them again under new ids.
            return Err(Status::new(
                status.code(),
                format!(
                    "{}; the {} bundle(s) before it were published and are durable: {}",
                    status.message(),
                    response.bundle_ids.len(),
                    response.bundle_ids.join(", ")
                ),
            ));
        }
        tracing::info!(publisher = %partner.id, bundles = response.bundle_ids.len(), items = response.items_accepted, "published");
        Ok(Response::new(response))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let partner = caller(&request)?.partner.clone();
        require_client(caller(&request)?)?;
        let QueryRequest {
            filter,
            page_size,
            page_token,
        } = request.into_inner();
        let query = convert::item_query(filter)?;
        if page_token.len() > crate::store::MAX_CURSOR_BYTES {
            return Err(Status::invalid_argument("page_token is too long"));
        }
        let limit = match page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        // An exact-value lookup reads at most a thousand or so items per call (most
        // read one): answer it inline. Scans go to the blocking pool.
        let answer = if query.value.is_some() {
            self.engine
                .query_async(&partner, "query", &query, &page_token, limit, now_ms())
                .await?
        } else {
            let engine = self.engine.clone();
            blocking(move || {
                Ok(engine.query_blocking(
                    &partner,
                    "query",
                    &query,
                    &page_token,
                    limit,
                    now_ms(),
                )?)
            })
            .await?
        };
        let Answer { page, hold } = answer;
        let response = Response::new(QueryResponse {
            items: page.items.iter().map(ProtoStoredItem::from).collect(),
            next_page_token: page.next.unwrap_or_default(),
        });
        // The page's bytes stay counted against the caller until it has been sent.
        Ok(HeldAnswer::attach(hold, response))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let partner = caller(&request)?.partner.clone();
        require_client(caller(&request)?)?;
        let GetRequest { id } = request.into_inner();
        let id = ItemId::parse(&id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // One key lookup: answered inline.
        let found = self.engine.get(&partner, &id).await?;
        match found {
            // Withheld and absent look the same: the caller learns nothing of what it may not see.
            None => Err(Status::not_found("no such item")),
            Some(stored) => {
                let response = GetResponse {
                    item: Some(ProtoStoredItem::from(&stored)),
                };
                // Counted as a query page is (recorded already: the ledger may
                // over-state a refused answer, never under-state a sent one).
                let hold = self
                    .engine
                    .hold_answer(&partner.id, prost::Message::encoded_len(&response))?;
                Ok(HeldAnswer::attach(hold, Response::new(response)))
            }
        }
    }

    type SubscribeStream = BoxStream<ProtoStoredItem>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let partner = caller(&request)?.partner.clone();
        require_client(caller(&request)?)?;
        let connection = caller(&request)?.clone();
        let SubscribeRequest { filter } = request.into_inner();
        let query = convert::item_query(filter)?;
        let slot = self.engine.open_stream(&partner.id)?;
        let recheck = Recheck {
            engine: self.engine.clone(),
            partner: partner.id.clone(),
            include_expired: query.include_expired,
            latest_only: true,
        };
        let mut subscription = self.engine.subscribe(partner, query);
        let shutdown = self.shutdown.clone();
        let stream = checked_stream(recheck, move |tx| async move {
            let _slot = slot;
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("node is shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    withdrawal = connection.withdrawn() => {
                        let _ = tx.send(Err(Status::from(withdrawal))).await;
                        return;
                    }
                    next = subscription.next() => next,
                };
                let stored = match next {
                    Ok(stored) => stored,
                    Err(end @ SubscriptionEnd::Lagged) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(end.to_string())))
                            .await;
                        return;
                    }
                    Err(SubscriptionEnd::Engine(error)) => {
                        // Nothing leaves unrecorded.
                        let _ = tx.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                let message = ProtoStoredItem::from(stored.as_ref());
                if tx.send(Ok((message, Some(stored)))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    type ExportStream = BoxStream<ExportChunk>;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let partner = caller(&request)?.partner.clone();
        require_client(caller(&request)?)?;
        let connection = caller(&request)?.clone();
        let ExportRequest { filter } = request.into_inner();
        let query = convert::item_query(filter)?;
        let slot = self.engine.open_stream(&partner.id)?;
        let engine = self.engine.clone();
        let shutdown = self.shutdown.clone();
        let recheck = Recheck {
            engine: self.engine.clone(),
            partner: partner.id.clone(),
            include_expired: query.include_expired,
            // A page is read ahead of the client: a version superseded while it waited
            // is not sent (`Get` and `Query` would answer its id as not held).
            latest_only: true,
        };
        let stream = checked_stream(recheck, move |tx| async move {
            let _slot = slot;
            let mut cursor: Vec<u8> = Vec::new();
            loop {
                if shutdown.is_cancelled() {
                    let _ = tx
                        .send(Err(Status::unavailable("node is shutting down")))
                        .await;
                    return;
                }
                let page = {
                    let engine = engine.clone();
                    let partner = partner.clone();
                    let query = query.clone();
                    let after = cursor.clone();
                    // One ledger record per page of exported objects.
                    blocking(move || {
                        Ok(engine.query_blocking(
                            &partner,
                            "export",
                            &query,
                            &after,
                            EXPORT_PAGE,
                            now_ms(),
                        )?)
                    })
                    .await
                };
                // The page's bytes stay counted until its chunks are handed to the stream.
                let (page, _hold) = match page {
                    Ok(Answer { page, hold }) => (page, hold),
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                for stored in page.items {
                    let chunk = ExportChunk {
                        stix_json: crate::interop::write_stix_from(
                            &stored.item,
                            Some(stored.origin.as_str()),
                        ),
                        origin: stored.origin.to_string(),
                        tlp: crate::wire::Tlp::from(stored.item.tlp) as i32,
                    };
                    tokio::select! {
                        withdrawal = connection.withdrawn() => {
                            let _ = tx.send(Err(Status::from(withdrawal))).await;
                            return;
                        }
                        sent = tx.send(Ok((chunk, Some(Arc::new(stored))))) => if sent.is_err() { return },
                    }
                }
                match page.next {
                    Some(next) => cursor = next,
                    None => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// Items read per store page while exporting.
const EXPORT_PAGE: usize = 1000;

/// A response stream fed by a task through a small channel (back-pressure: the task
/// waits when the client is slow). The task ends when the client goes away.
/// Who a stream's items were decided for, to decide them once more as they leave.
struct Recheck {
    engine: Arc<Engine>,
    partner: crate::model::NodeId,
    include_expired: bool,
    /// A version superseded since it was decided is dropped too (`Subscribe`, offered
    /// every version as it is stored; `Export`, whose pages wait for a slow reader).
    latest_only: bool,
}

/// A message and the item it discloses (`None`: discloses nothing).
type Checked<T> = (T, Option<Arc<crate::store::StoredItem>>);

/// A response stream fed by a task through a small channel (back-pressure: the task
/// waits when the client is slow; the task ends when the client goes away). Each item
/// is decided again, under the policy in force, as the client takes it: an item decided
/// before a reload that narrowed the partner's policy is dropped, not sent.
fn checked_stream<T, F, Fut>(recheck: Recheck, body: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(StreamSender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    tokio::spawn(body(StreamSender {
        tx,
        timeout: recheck.engine.slow_reader_timeout(),
    }));
    Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx).filter_map(move |next| match next {
            Ok((message, Some(stored))) => if recheck.latest_only {
                recheck.engine.may_still_see_latest(
                    &recheck.partner,
                    &stored,
                    recheck.include_expired,
                )
            } else {
                recheck
                    .engine
                    .may_still_see(&recheck.partner, &stored, recheck.include_expired)
            }
            .then_some(Ok(message)),
            Ok((message, None)) => Some(Ok(message)),
            Err(status) => Some(Err(status)),
        }),
    )
}

/// The sending end of a response stream. A send that waits longer than
/// `limits.slow_reader_timeout` for the client to read gives up: the stream's task
/// ends and lets go of what it holds (its stream slot, its subscription).
struct StreamSender<T> {
    tx: tokio::sync::mpsc::Sender<Result<Checked<T>, Status>>,
    timeout: std::time::Duration,
}

/// The client is gone, or did not read in time.
struct Gone;

impl<T> StreamSender<T> {
    async fn send(&self, next: Result<Checked<T>, Status>) -> Result<(), Gone> {
        match tokio::time::timeout(self.timeout, self.tx.send(next)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                crate::limits::count(crate::limits::Limit::SlowReaderTimeout);
                tracing::info!(
                    timeout_s = self.timeout.as_secs_f64(),
                    "stream ended: the client did not read within limits.slow_reader_timeout"
                );
                Err(Gone)
            }
        }
    }

    async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// Messages queued between a stream's task and its client: few, since each was decided
/// under the policy of its moment.
const STREAM_QUEUE: usize = 2;
