//! The TAXII 2.1 resources: discovery, the API root, the node's one collection, its
//! objects, manifest, object, versions, and the status of a write. Each handler checks
//! the request, converts it, calls the engine, and converts the answer; the engine
//! decides what the caller may see or write and records every disclosure.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde::Serialize;
use serde_json::{Value, json};

use super::next::{Cursor, NextTokens, Scope, Session};
use super::params::{self, Params, format_timestamp};
use super::statuses::Statuses;
use crate::engine::{AnswerHold, Delivery, Engine, EngineError, now_ms};
use crate::interop::{Defaults, EnvelopeEntry, EnvelopeError, write_stix_from};
use crate::model::{ItemId, NodeId, Partner, PartnerKind, Role};
use crate::policy::PageTokenError;
use crate::store::{ItemQuery, StoredItem};

/// The TAXII media type.
pub const TAXII_MEDIA_TYPE: &str = "application/taxii+json;version=2.1";
/// The STIX media type of the objects served.
pub const STIX_MEDIA_TYPE: &str = "application/stix+json;version=2.1";
/// Longest request path accepted, bytes.
const MAX_PATH_BYTES: usize = 1024;
/// Most objects in one POST.
pub const MAX_POST_OBJECTS: usize = 10_000;
/// Most JSON values (scalars, arrays and objects) read from one POST body: ten thousand
/// objects of fifty values each. `max_body_bytes` alone does not bound what reading
/// a body takes (`[]` is two bytes of text and 32 or more in memory), and the envelope is
/// held while its objects are read a second time as STIX.
const MAX_POST_VALUES: usize = 500_000;
/// Time a client has to send a request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// The API root's path.
const API_ROOT: &str = "/api/";

/// Who is calling, as configured now.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The partner in force now.
    pub partner: Partner,
    /// Authenticated with HTTP Basic credentials (read-only, whatever its role).
    pub basic: bool,
    /// The connection's read-ahead of listing pages, if it keeps one.
    pub read_ahead: Option<Arc<ReadAhead>>,
    /// The connection's certificate access, if it presented a certificate: a reload
    /// that demotes or removes the caller withdraws it.
    pub access: Option<crate::transport::ConnectionInfo>,
}

impl Caller {
    /// Whether the caller may write: analysts, admins and the node's operator, with a
    /// certificate.
    fn can_write(&self) -> bool {
        !self.basic
            && match self.partner.kind {
                PartnerKind::Local => true,
                PartnerKind::Client => matches!(self.partner.role, Role::Analyst | Role::Admin),
                PartnerKind::Node => false,
            }
    }

    /// Whether the caller may still write now: the request was authorised when its head
    /// arrived, and a reload while its body was sent (or while it waited for its
    /// publishing rate) may have demoted or removed the caller since.
    fn may_still_write(&self) -> bool {
        self.can_write()
            && self
                .access
                .as_ref()
                .is_some_and(|access| access.withdrawal().is_none())
    }
}

/// The TAXII resources of one node.
pub struct Handlers {
    engine: Arc<Engine>,
    node: NodeId,
    collection_id: String,
    max_body_bytes: usize,
    /// Seals the `next` of listings.
    next_tokens: Arc<NextTokens>,
    /// Status resources of recent writes.
    statuses: Arc<Statuses>,
}

type Answer = Response<Full<Bytes>>;

/// The routes served.
enum Route<'a> {
    Discovery,
    ApiRoot,
    Collections,
    Collection(&'a str),
    Objects(&'a str),
    Manifest(&'a str),
    Object(&'a str, &'a str),
    Versions(&'a str, &'a str),
    Status(&'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = trimmed.split('/').collect();
    Some(match segments.as_slice() {
        ["taxii2"] => Route::Discovery,
        ["api"] => Route::ApiRoot,
        ["api", "collections"] => Route::Collections,
        ["api", "collections", c] => Route::Collection(c),
        ["api", "collections", c, "objects"] => Route::Objects(c),
        ["api", "collections", c, "manifest"] => Route::Manifest(c),
        ["api", "collections", c, "objects", o] => Route::Object(c, o),
        ["api", "collections", c, "objects", o, "versions"] => Route::Versions(c, o),
        ["api", "status", s] => Route::Status(s),
        _ => return None,
    })
}

impl Handlers {
    /// The resources of node `node` over `engine`, taking request bodies of at most
    /// `max_body_bytes`.
    pub fn new(
        engine: Arc<Engine>,
        node: &NodeId,
        max_body_bytes: usize,
    ) -> Result<Self, ring::error::Unspecified> {
        Ok(Self {
            engine: engine.clone(),
            node: node.clone(),
            collection_id: collection_id(node),
            max_body_bytes,
            next_tokens: Arc::new(NextTokens::new()?),
            statuses: Arc::new(Statuses::load(engine.store().clone(), now_ms())),
        })
    }

    /// Answers one authenticated request.
    pub async fn handle(&self, caller: &Caller, request: Request<Incoming>) -> Answer {
        let (parts, body) = request.into_parts();
        if caller.partner.kind == PartnerKind::Node {
            return error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "TAXII is served to clients; peer nodes use the federation service",
            );
        }
        let path = parts.uri.path();
        if path.len() > MAX_PATH_BYTES {
            return error(StatusCode::NOT_FOUND, "Not Found", "no such resource");
        }
        let Some(route) = route(path) else {
            return error(StatusCode::NOT_FOUND, "Not Found", "no such resource");
        };
        if !accepts_taxii(&parts.headers) {
            return error(
                StatusCode::NOT_ACCEPTABLE,
                "Not Acceptable",
                "this server answers application/taxii+json;version=2.1 only",
            );
        }
        let mut params = match params::parse(parts.uri.query()) {
            Ok(params) => params,
            Err(problem) => return error(StatusCode::BAD_REQUEST, "Bad Request", &problem),
        };
        let method = &parts.method;
        // HEAD is answered as GET, through the same checks and policy gate (and recorded
        // in the ledger as the GET it stands for: its status and headers tell what that
        // would serve); the HTTP layer sends the headers without the body.
        let reads = method == Method::GET || method == Method::HEAD;
        // Objects are dated in the caller's collection from when its policy in force
        // now began to apply to it.
        if reads
            && matches!(
                route,
                Route::Objects(_) | Route::Manifest(_) | Route::Object(..) | Route::Versions(..)
            )
        {
            params.listed_since_ms = match self.engine.listed_since(&caller.partner.id, now_ms()) {
                Ok(since) => since,
                Err(e) => return engine_error(&e),
            };
            params.embargo_ms = self
                .engine
                .policy()
                .partner(&caller.partner.id)
                .map_or(0, |p| p.embargo_ms);
        }
        // The collection exists for callers whose policy gives them something to read.
        let visible = self.engine.receives_anything(&caller.partner.id);
        let collection = |c: &str| visible && c == self.collection_id;
        match route {
            Route::Objects(c) if collection(c) && method == Method::POST => {
                self.add_objects(caller, &parts.headers, body).await
            }
            // TAXII's Delete An Object is not offered: what a node published is signed
            // and replicated, and is withdrawn by revoking it, which every node holding
            // it follows. Answered alike for any id, held, withheld or absent.
            Route::Object(..) if method == Method::DELETE => with_allow(
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method Not Allowed",
                    "objects are not deleted: revoke an indicator instead, by adding a new version with \"revoked\": true (POST to the objects resource) or with entente revoke",
                ),
                "GET, HEAD",
            ),
            _ if !reads => with_allow(
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method Not Allowed",
                    "this resource is read with GET or HEAD (objects are added with POST)",
                ),
                if matches!(route, Route::Objects(_)) {
                    "GET, HEAD, POST"
                } else {
                    "GET, HEAD"
                },
            ),
            Route::Discovery => self.discovery(&parts.headers),
            Route::ApiRoot => self.api_root(),
            // The collection is listed for a caller whose policy gives it something to
            // read; one whose policy gives it nothing sees none (TAXII's empty answer).
            Route::Collections => match self.collection(caller) {
                Some(listed) => taxii(StatusCode::OK, &json!({ "collections": [listed] })),
                None => taxii(StatusCode::OK, &json!({})),
            },
            Route::Collection(c) if collection(c) => match self.collection(caller) {
                Some(listed) => taxii(StatusCode::OK, &listed),
                None => not_found_collection(),
            },
            Route::Objects(c) if collection(c) => self.objects(caller, &params, false).await,
            Route::Manifest(c) if collection(c) => self.objects(caller, &params, true).await,
            Route::Object(c, id) if collection(c) => self.object(caller, id, &params, false).await,
            Route::Versions(c, id) if collection(c) => self.object(caller, id, &params, true).await,
            Route::Status(id) => self.status(caller, id),
            _ => not_found_collection(),
        }
    }

    fn discovery(&self, headers: &HeaderMap) -> Answer {
        // The API root's URL as the client reached this server; a Host header that is
        // not a plain host name or address gives a URL relative to it.
        let root = match headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| plain_host(h))
        {
            Some(host) => format!("https://{host}{API_ROOT}"),
            None => API_ROOT.to_owned(),
        };
        taxii(
            StatusCode::OK,
            &json!({
                "title": format!("Entente node {}", self.node),
                "description": "Indicators this node holds, as the caller's sharing policy allows",
                "default": root,
                "api_roots": [root],
            }),
        )
    }

    fn api_root(&self) -> Answer {
        taxii(
            StatusCode::OK,
            &json!({
                "title": format!("Entente node {}", self.node),
                "versions": [TAXII_MEDIA_TYPE],
                "max_content_length": self.max_body_bytes,
            }),
        )
    }

    /// The collection as `caller` sees it, if its policy gives it anything to read.
    fn collection(&self, caller: &Caller) -> Option<Value> {
        if !self.engine.receives_anything(&caller.partner.id) {
            return None;
        }
        Some(json!({
            "id": self.collection_id,
            "title": "Indicators",
            "description": "Every indicator this node holds that the caller's sharing policy allows it to see",
            "can_read": true,
            "can_write": caller.can_write(),
            "media_types": [STIX_MEDIA_TYPE],
        }))
    }

    /// Objects or manifest of the collection: a page through `Engine::query_blocking`
    /// (recorded in the ledger), or the `match[id]` objects through `Engine::get` (the
    /// latest version) or, when `match[version]` asks for other versions, through
    /// `Engine::versions_blocking` as the object resource reads them, with the marking
    /// definitions and origin identities the page's objects are the first of the
    /// listing to refer to. A listing without `match[id]` serves the latest version of
    /// each object and refuses any other `match[version]`. `next` is sealed
    /// ([`NextTokens`]).
    async fn objects(&self, caller: &Caller, params: &Params, manifest: bool) -> Answer {
        let path = if manifest {
            "taxii-manifest"
        } else {
            "taxii-objects"
        };
        // A listing without `match[id]` goes through the collection by the latest
        // version of each object: a filter that asks for other versions is refused
        // rather than answered with the latest.
        if params.ids.is_none() && !params.version.latest_only() {
            return error(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "match[version] other than last is served on listings only with match[id]; without it a listing serves the latest version of each object (an object's versions: objects/{id}/versions/, or objects/?match[id]={id}&match[version]=all)",
            );
        }
        let scope_text = params.scope();
        let scope = Scope {
            caller: &caller.partner.id,
            path,
            query: &scope_text,
        };
        let mut session = match &params.next {
            None => Session::start(if params.ids.is_some() {
                Cursor::Ids(0)
            } else {
                Cursor::Engine(Vec::new())
            }),
            Some(next) => match self.next_tokens.open(&scope, next) {
                Some(session) => session,
                None => return bad_next(),
            },
        };
        if params.admits_any() && params.ids.is_none() {
            return self.listing(caller, params, session, path, manifest).await;
        }
        // What the page serves: items, and the other objects (marking definitions,
        // identities, the extension definition) with the date added of the item that
        // brought them.
        let mut extra: Vec<(Value, i64)> = Vec::new();
        let (items, more) = if let Some(ids) = params.ids.as_ref().filter(|_| params.admits_any()) {
            // Where the listing goes on: an id, and part way through its versions the
            // last one served.
            let (mut at, mut after) = match session.cursor {
                Cursor::Ids(at) => (at, None),
                Cursor::IdVersions(at, after) => (at, Some(after)),
                _ => return bad_next(),
            };
            let mut found: Vec<StoredItem> = Vec::new();
            while at < ids.len() && found.len() + extra.len() < params.limit {
                let id = &ids[at];
                let resumed = after.take();
                at += 1;
                if ids[..at - 1].contains(id) {
                    continue;
                }
                match self.supporting_object(caller, id).await {
                    Ok(Some(object)) => {
                        if object_admitted(params, &object) {
                            // Asked for by id, it comes with no item to date it: it is
                            // dated by its own version (these objects never change).
                            let added = object_time(&object).unwrap_or(0);
                            extra.push((object, added));
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(answer) => return answer,
                }
                // An id that is not an indicator or context object id is held by no node.
                let Ok(id) = ItemId::parse(id) else { continue };
                if !params.version.latest_only() {
                    // Other versions than the latest: the id's versions the caller may
                    // see, each through the policy gate of the versions resource,
                    // within the room left on the page.
                    let room = params.limit - found.len() - extra.len();
                    let (page, more, _) =
                        match self.versions(caller, id, params, path, resumed, room).await {
                            Ok(read) => read,
                            Err(answer) => return answer,
                        };
                    let last = page.last().map(|s| s.item.modified_ms);
                    found.extend(page);
                    if let (true, Some(last)) = (more, last) {
                        at -= 1;
                        after = Some(last);
                        break;
                    }
                    continue;
                }
                // Filtered before it is recorded: what the filters leave out is not
                // served, so not disclosed.
                let wanted = |s: &StoredItem| self.passes(params, s);
                match self.engine.get_where(&caller.partner, &id, wanted).await {
                    Ok(Some(stored)) => found.push(stored),
                    Ok(None) => {}
                    Err(e) => return engine_error(&e),
                }
            }
            // In the order added; one id's versions stay oldest first.
            found.sort_by_key(|s| s.accepted_ms);
            session.cursor = match after {
                Some(after) => Cursor::IdVersions(at, after),
                None => Cursor::Ids(at),
            };
            (found, at < ids.len())
        } else {
            (Vec::new(), false)
        };
        let next = if more {
            match self.next_tokens.seal(&scope, &session) {
                Some(next) => Some(next),
                None => return internal(),
            }
        } else {
            None
        };
        page_answer(params, manifest, &items, extra, next.as_deref())
    }

    /// A page of the collection in the order items were added, through the engine: the
    /// page this connection's read-ahead prepared when it is still what the page would
    /// be now ([`ReadAhead`]), else one made here. Either way it is recorded in the ledger
    /// before it is answered, and the page after it is prepared.
    async fn listing(
        &self,
        caller: &Caller,
        params: &Params,
        session: Session,
        path: &'static str,
        manifest: bool,
    ) -> Answer {
        let key = read_ahead_key(&caller.partner.id, path, params);
        let prepared = match caller.read_ahead.as_ref().and_then(|r| r.take(&key)) {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        let listed = match prepared.filter(|listed| self.engine.still_current(&listed.delivery)) {
            Some(listed) => listed,
            None => {
                let made = self
                    .lister()
                    .list(
                        caller.partner.clone(),
                        params.clone(),
                        session,
                        path,
                        manifest,
                    )
                    .await;
                match made {
                    Ok(listed) => listed,
                    Err(answer) => return answer,
                }
            }
        };
        if let Err(e) = self.engine.record(&listed.delivery).await {
            return engine_error(&e);
        }
        if let (Some(read_ahead), Some((next, session))) = (&caller.read_ahead, listed.following) {
            let mut params = params.clone();
            params.next = Some(next);
            let key = read_ahead_key(&caller.partner.id, path, &params);
            let (lister, partner) = (self.lister(), caller.partner.clone());
            let task = tokio::spawn(async move {
                lister
                    .list(partner, params, session, path, manifest)
                    .await
                    .ok()
            });
            read_ahead.put(key, task);
        }
        // HTTP/1.1 answers one request at a time per connection, so the answer budget
        // is only checked while the page is made, not held while it is written.
        drop(listed.hold);
        listed.answer
    }

    fn lister(&self) -> Lister {
        Lister {
            engine: self.engine.clone(),
            next_tokens: self.next_tokens.clone(),
        }
    }

    /// Whether an item passes the filters applied after the engine: `match[type]`,
    /// `match[spec_version]`, `match[version]` and `added_after`.
    fn passes(&self, params: &Params, stored: &StoredItem) -> bool {
        params.admits(stored.item.id.stix_type())
            && params.version.allows(stored.item.modified_ms)
            && params.added_after_passes(stored.accepted_ms)
    }

    /// The marking definition or origin identity `id` names, if the caller may have it:
    /// the definition of a TLP 2.0 marking its policy lets through, the revocation
    /// extension's definition and the project identity (to anyone), or the identity of
    /// this node or a configured peer node of which it may see at least one item. An
    /// origin whose every item is withheld from the caller has no identity for it, as
    /// for one the node never heard of. `Ok(None)` for any other id.
    async fn supporting_object(&self, caller: &Caller, id: &str) -> Result<Option<Value>, Answer> {
        if let Some(tlp) = crate::interop::tlp2_marking(id) {
            let visible = self
                .engine
                .policy()
                .marking_visible(&caller.partner.id, tlp);
            return Ok(visible.then(|| crate::interop::tlp_marking_definition(tlp)));
        }
        // The definition of a revocation's properties and the project identity that
        // defines it are the same on every node and say nothing of what is held: served
        // by id to any caller, as listings serve them beside revocations.
        if let Some(object) = crate::interop::revocation_extension()
            .into_iter()
            .find(|object| object.get("id").and_then(Value::as_str) == Some(id))
        {
            return Ok(Some(object));
        }
        if !id.starts_with("identity--") {
            return Ok(None);
        }
        let policy = self.engine.policy();
        let origin = std::iter::once(&self.node)
            .chain(
                policy
                    .partners()
                    .filter(|p| p.kind == PartnerKind::Node)
                    .map(|p| &p.id),
            )
            .find(|origin| crate::interop::identity_id(origin.as_str()) == id)
            .cloned();
        let Some(origin) = origin else {
            return Ok(None);
        };
        let engine = self.engine.clone();
        let partner = caller.partner.clone();
        let asked = origin.clone();
        let seen =
            tokio::task::spawn_blocking(move || engine.sees_any_from(&partner, &asked)).await;
        match seen {
            Ok(Ok(true)) => Ok(Some(crate::interop::identity(origin.as_str()))),
            Ok(Ok(false)) => Ok(None),
            Ok(Err(e)) => Err(engine_error(&e)),
            Err(_) => Err(internal()),
        }
    }

    /// One object, or its versions (the node holds the latest version of each id). A
    /// withheld id is answered exactly as an absent one.
    async fn object(&self, caller: &Caller, id: &str, params: &Params, versions: bool) -> Answer {
        match self.supporting_object(caller, id).await {
            Ok(Some(object)) if object_admitted(params, &object) => {
                let body = if versions {
                    json!({ "more": false, "versions": [object_version(&object)] })
                } else {
                    json!({ "more": false, "objects": [object] })
                };
                return taxii(StatusCode::OK, &body);
            }
            Ok(Some(_)) => return object_not_found(),
            Ok(None) => {}
            Err(answer) => return answer,
        }
        let Ok(item_id) = ItemId::parse(id) else {
            return object_not_found();
        };
        // The latest version alone is what `Engine::get` gives; older versions, and the
        // versions resource, read every version held.
        if !versions && params.version.latest_only() && params.next.is_none() {
            let wanted = |s: &StoredItem| self.passes(params, s);
            let found = match self
                .engine
                .get_where(&caller.partner, &item_id, wanted)
                .await
            {
                Ok(found) => found,
                Err(e) => return engine_error(&e),
            };
            let Some(stored) = found else {
                return object_not_found();
            };
            let object = write_stix_from(&stored.item, Some(stored.origin.as_str()));
            let body = envelope(false, None, [object]);
            return with_dates(
                raw_taxii(StatusCode::OK, body),
                std::slice::from_ref(&stored),
                params,
            );
        }
        let path = if versions {
            "taxii-versions"
        } else {
            "taxii-object"
        };
        let scope_text = format!("{}id={id};", params.scope());
        let scope = Scope {
            caller: &caller.partner.id,
            path,
            query: &scope_text,
        };
        // Versions are strictly increasing, so a page goes on after the last version
        // served (which holds when a compaction drops older ones).
        let after = match &params.next {
            None => None,
            Some(next) => match self.next_tokens.open(&scope, next).map(|s| s.cursor) {
                Some(Cursor::After(ms)) => Some(ms),
                _ => return bad_next(),
            },
        };
        // The versions resource lists every version; the object resource those
        // `match[version]` selects.
        let selecting = if versions {
            let mut all = params.clone();
            all.version = params::VersionFilter {
                all: true,
                ..params::VersionFilter::default()
            };
            all
        } else {
            params.clone()
        };
        let (page, more, total) = match self
            .versions(caller, item_id, &selecting, path, after, params.limit)
            .await
        {
            Ok(read) => read,
            Err(answer) => return answer,
        };
        if total == 0 {
            return object_not_found();
        }
        let next = match (more, page.last()) {
            (true, Some(last)) => {
                let session = Session::start(Cursor::After(last.item.modified_ms));
                match self.next_tokens.seal(&scope, &session) {
                    Some(next) => Some(next),
                    None => return internal(),
                }
            }
            _ => None,
        };
        if !versions {
            let objects = page
                .iter()
                .map(|s| write_stix_from(&s.item, Some(s.origin.as_str())));
            let body = envelope(more, next.as_deref(), objects);
            return with_dates(raw_taxii(StatusCode::OK, body), &page, params);
        }
        let mut body = serde_json::Map::new();
        body.insert("more".into(), json!(more));
        if let Some(next) = next {
            body.insert("next".into(), json!(next));
        }
        {
            let listed: Vec<String> = page
                .iter()
                .map(|s| format_timestamp(s.item.modified_ms))
                .collect();
            body.insert("versions".into(), json!(listed));
        }
        with_dates(taxii(StatusCode::OK, &Value::Object(body)), &page, params)
    }

    /// The versions of `id` that `params` selects (`match[type]`, `added_after`, then
    /// `match[version]`) among those the caller may see, oldest first, read by
    /// `Engine::versions_blocking`: the latest as `Engine::get` decides it, each older one
    /// by `Policy::decide_superseded`, withheld and absent alike left out. Of those after
    /// version `after`, at most `room` are returned, and recorded in the ledger on `path`
    /// before they are; also whether more follow, and how many were selected in all.
    async fn versions(
        &self,
        caller: &Caller,
        id: ItemId,
        params: &Params,
        path: &'static str,
        after: Option<i64>,
        room: usize,
    ) -> Result<(Vec<StoredItem>, bool, usize), Answer> {
        let engine = self.engine.clone();
        let partner = caller.partner.clone();
        let filter = params.clone();
        let read = tokio::task::spawn_blocking(move || {
            engine.versions_blocking(&partner, &id, path, |visible| {
                let visible: Vec<StoredItem> = visible
                    .into_iter()
                    .filter(|s| {
                        filter.admits(s.item.id.stix_type())
                            && filter.added_after_passes(s.accepted_ms)
                    })
                    .collect();
                let chosen = filter.version.select(visible, |s| s.item.modified_ms);
                let total = chosen.len();
                let mut rest: Vec<StoredItem> = chosen
                    .into_iter()
                    .filter(|s| after.is_none_or(|after| s.item.modified_ms > after))
                    .collect();
                let more = rest.len() > room;
                rest.truncate(room);
                (rest, (more, total))
            })
        })
        .await;
        match read {
            Ok(Ok((page, (more, total)))) => Ok((page, more, total)),
            Ok(Err(e)) => Err(engine_error(&e)),
            Err(_) => Err(internal()),
        }
    }

    /// Adds objects: the envelope's indicators are read by the STIX import, signed and
    /// stored as the node's own bundle in the caller's name (`Engine::sign`, which
    /// applies the publishing rules, then `Engine::store_own`), made durable, and
    /// answered with a complete status resource.
    async fn add_objects(&self, caller: &Caller, headers: &HeaderMap, body: Incoming) -> Answer {
        if !caller.can_write() {
            let answer = error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "this client may read but not write",
            );
            return refuse_body(headers, body, answer).await;
        }
        if !is_taxii_content(headers) {
            let answer = error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "objects are sent as application/taxii+json;version=2.1",
            );
            return refuse_body(headers, body, answer).await;
        }
        // One of the caller's publish slots before the body is read, so the bodies held
        // at once are bounded per caller as publishes are.
        let slot = match self.engine.open_publish(&caller.partner.id) {
            Ok(slot) => slot,
            Err(e) => return refuse_body(headers, body, engine_error(&e)).await,
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            // A client that waits for an interim answer before it sends the body gets
            // the refusal instead, and sends nothing.
            let waits = headers
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if waits {
                return too_large(self.max_body_bytes);
            }
            0
        } else {
            self.max_body_bytes
        };
        let read = tokio::time::timeout(BODY_TIMEOUT, read_body(body, limit)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(BodyRefused::TooLarge)) => return too_large(self.max_body_bytes),
            Ok(Err(BodyRefused::Unreadable)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    "the request body ended before its declared length, or is malformed",
                );
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "Request Timeout",
                    "the request body did not arrive in time",
                );
            }
        };
        // Authorised again now that the body is here: a writer that a reload demoted or
        // removed while it was sending is refused as any withdrawn connection is.
        if !caller.may_still_write() {
            return unauthorized();
        }
        let request_ms = now_ms();
        // Parsing (up to `max_body_bytes` of JSON) runs off the async workers. The
        // envelope's objects are read as a STIX bundle, by the same import the command
        // line uses: no default marking, so an object without one is refused.
        let origin = self.node.to_string();
        let engine = self.engine.clone();
        let publisher = caller.partner.clone();
        let read = tokio::task::spawn_blocking(move || {
            // A name given twice in one object is refused, as in a file: which of the
            // two the writer's tool meant cannot be told. The body is read once,
            // straight into the import's objects.
            let defaults = Defaults {
                origin: Some(origin),
                ..Defaults::default()
            };
            let (mut parsed, entries) = crate::interop::parse_envelope(
                &bytes,
                MAX_POST_VALUES,
                MAX_POST_OBJECTS,
                &defaults,
                now_ms(),
            )?;
            drop(bytes);
            // What the status needs of the items is taken first; the items themselves
            // go into the signed bundles.
            let stored_at = item_places(&parsed.items);
            let items = std::mem::take(&mut parsed.items);
            // Within the caller's publishing rate, the objects are stored on this
            // thread too; else the request waits (off this thread) first.
            let wait = engine.publish_delay(&publisher.id, items.len());
            let (items, outcomes) = if wait.is_zero() {
                (Vec::new(), Some(store_objects(&engine, &publisher, items)))
            } else {
                (items, None)
            };
            Ok((parsed, stored_at, entries, wait, items, outcomes))
        })
        .await;
        let (parsed, stored_at, entries, wait, items, outcomes) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(EnvelopeError::ObjectCount)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    &format!("an envelope holds 1 to {MAX_POST_OBJECTS} objects"),
                );
            }
            Ok(Err(problem)) => {
                return error(StatusCode::BAD_REQUEST, "Bad Request", &problem.to_string());
            }
            Err(_) => return internal(),
        };
        let outcomes = match outcomes {
            Some(outcomes) => outcomes,
            None => {
                tokio::time::sleep(wait).await;
                if !caller.may_still_write() {
                    return unauthorized();
                }
                let engine = self.engine.clone();
                let publisher = caller.partner.clone();
                let stored =
                    tokio::task::spawn_blocking(move || store_objects(&engine, &publisher, items))
                        .await;
                match stored {
                    Ok(outcomes) => outcomes,
                    Err(_) => return internal(),
                }
            }
        };
        let stored = outcomes.iter().filter(|o| o.is_ok()).count();
        // The status is kept, then the store flushed, so the status is durable when the
        // write is.
        let (id, bytes) =
            status_resource(&entries, &stored_at, &parsed.errors, &outcomes, request_ms);
        drop((parsed, stored_at, entries, outcomes));
        let engine = self.engine.clone();
        let owner = caller.partner.id.clone();
        let statuses = self.statuses.clone();
        let kept = {
            let bytes = bytes.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                statuses.keep(&id, &owner, bytes, now_ms());
                engine.store().flush()
            })
            .await
        };
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, stored, "TAXII publish: flush failed");
                return not_durable(&e, stored, &id, &bytes);
            }
            Err(_) => return internal(),
        }
        drop(slot);
        tracing::info!(publisher = %caller.partner.id, stored, "published through TAXII");
        raw_taxii(StatusCode::ACCEPTED, bytes)
    }

    /// A status resource of the caller's own write; anyone else's is not found.
    fn status(&self, caller: &Caller, id: &str) -> Answer {
        match self.statuses.get(id, &caller.partner.id, now_ms()) {
            Some(bytes) => raw_taxii(StatusCode::OK, bytes),
            None => error(StatusCode::NOT_FOUND, "Not Found", "no such status"),
        }
    }
}

/// The objects `stored` is the first item of the listing to refer to, and that pass
/// the listing's filters: the TLP 2.0 marking definition of its marking, the identity
/// of its origin, and for a revocation the extension definition of its properties
/// (with the identity that defines it). Each is served, and marked served in
/// `session`, only if it fits in `room` objects (it then takes one); one that the
/// filters leave out is marked without taking room, as the listing never serves it.
fn supporting_objects(
    session: &mut Session,
    params: &Params,
    stored: &StoredItem,
    room: &mut usize,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut fits = |objects: Vec<Value>, out: &mut Vec<Value>| -> bool {
        let admitted: Vec<Value> = objects
            .into_iter()
            .filter(|object| object_admitted(params, object))
            .collect();
        if admitted.len() > *room {
            return false;
        }
        *room -= admitted.len();
        out.extend(admitted);
        true
    };
    let tlp = stored.item.tlp;
    if !session.served_marking(tlp)
        && fits(vec![crate::interop::tlp_marking_definition(tlp)], &mut out)
    {
        session.first_marking(tlp);
    }
    if !session.served_origin(&stored.origin)
        && fits(
            vec![crate::interop::identity(stored.origin.as_str())],
            &mut out,
        )
    {
        session.first_origin(&stored.origin);
    }
    if crate::interop::uses_revocation_extension(&stored.item) {
        for (part, object) in crate::interop::revocation_extension()
            .into_iter()
            .enumerate()
        {
            if !session.served_revocation_extension(part) && fits(vec![object], &mut out) {
                session.mark_revocation_extension(part);
            }
        }
    }
    out
}

/// How many of an engine page's first `items` a listing page can serve within
/// `params.limit` objects, counting the items that pass the filters applied after the
/// engine and the objects they are the first to refer to (as the listing serves them,
/// from `session`). When not even the first fits with all it brings, none is served:
/// the page is then what fits of the first item's objects, with the session that marks
/// them served. A listing so always moves on, by at least one object a page.
#[allow(clippy::type_complexity)]
fn items_that_fit(
    params: &Params,
    session: Session,
    items: &[StoredItem],
) -> (usize, Option<(Session, Vec<(Value, i64)>)>) {
    let mut counting = session.clone();
    let mut objects = 0usize;
    for (at, stored) in items.iter().enumerate() {
        let listed = params.version.allows(stored.item.modified_ms)
            && params.added_after_passes(stored.accepted_ms);
        if !listed {
            continue;
        }
        let mut unbounded = usize::MAX;
        let brings = usize::from(params.admits(stored.item.id.stix_type()))
            + supporting_objects(&mut counting, params, stored, &mut unbounded).len();
        if objects + brings <= params.limit {
            objects += brings;
            continue;
        }
        if objects > 0 {
            return (at, None);
        }
        // The first item listed does not fit with all it brings (the items skipped
        // before it bring nothing).
        let mut marked = session;
        let mut room = params.limit;
        let served = supporting_objects(&mut marked, params, stored, &mut room);
        if served.is_empty() {
            return (at + 1, None);
        }
        let served = served
            .into_iter()
            .map(|object| (object, params.date_added(stored.accepted_ms)))
            .collect();
        return (0, Some((marked, served)));
    }
    (items.len(), None)
}

/// Whether an object other than an item passes `match[type]`, `match[spec_version]` and
/// `match[version]` (its version is its `modified`, or `created` when it has none).
fn object_admitted(params: &Params, object: &Value) -> bool {
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
    params.admits(kind) && object_time(object).is_some_and(|v| params.version.allows(v))
}

/// The version of an object other than an item (its `modified`, or `created` when it
/// has none), in ms since the epoch.
fn object_time(object: &Value) -> Option<i64> {
    object
        .get("modified")
        .or_else(|| object.get("created"))
        .and_then(Value::as_str)
        .and_then(params::timestamp)
}

/// The version of an object other than an item, as TAXII writes it.
fn object_version(object: &Value) -> String {
    object
        .get("modified")
        .or_else(|| object.get("created"))
        .and_then(Value::as_str)
        .and_then(params::timestamp)
        .map(format_timestamp)
        .unwrap_or_default()
}

/// Signs and stores `items` as this node's own bundles in `publisher`'s name
/// (`Engine::sign`, which applies the publishing rules, then `Engine::store_own`), and
/// gives each item's outcome: stored, or the reason it was not. When the publishing
/// rules refuse an item, the others are not held back: each is then signed and stored
/// alone, in order (so a revocation still finds the indicator before it).
fn store_objects(
    engine: &Engine,
    publisher: &Partner,
    items: Vec<crate::model::Item>,
) -> Vec<Result<(), String>> {
    let mut outcomes: Vec<Result<(), String>> = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    loop {
        let mut chunk: Vec<crate::model::Item> = items
            .by_ref()
            .take(crate::crypto::MAX_ITEMS_PER_BUNDLE)
            .collect();
        let count = chunk.len();
        if count == 0 {
            break;
        }
        let now = now_ms();
        // A new version goes no further than the version it replaces went: a TAXII
        // writer cannot name recipients, so it cannot mean to widen them. Once signed,
        // the items are the bundle's (and `chunk` is empty).
        let stored = engine
            .sign_keeping_distribution(publisher, &mut chunk, now)
            .and_then(|signed| engine.store_own(&signed, now).map(|r| (signed, r)));
        match stored {
            Ok((signed, receipt)) => {
                let mut chunk_outcomes = vec![Ok(()); count];
                let signed = signed.items();
                // Neither stored nor refused: taken for a version held. Unless it is held
                // as given, it is not stored, and the status says why.
                let report = &receipt.report;
                let decided: std::collections::HashSet<u32> = report
                    .stored
                    .iter()
                    .copied()
                    .chain(report.rejected.iter().map(|(index, _)| *index))
                    .collect();
                for item in signed {
                    if decided.contains(&item.index) {
                        continue;
                    }
                    let unstored = engine.unstored_version(publisher, &item.item, now_ms());
                    let why = match unstored {
                        Ok(None) => continue,
                        Ok(Some(why)) => why,
                        Err(e) => {
                            tracing::error!(error = %e, "TAXII publish: a held version could not be read");
                            "the node could not tell whether it holds this version".to_owned()
                        }
                    };
                    if let Some(slot) = chunk_outcomes.get_mut(item.index as usize) {
                        *slot = Err(why);
                    }
                }
                for (index, reason) in &receipt.report.rejected {
                    let at = *index as usize;
                    let item = signed
                        .get(at)
                        .filter(|v| v.index == *index)
                        .or_else(|| signed.iter().find(|v| v.index == *index));
                    if let (Some(slot), Some(item)) = (chunk_outcomes.get_mut(at), item) {
                        *slot =
                            Err(engine.rejection_for(publisher, &item.item.id, reason, now_ms()));
                    }
                }
                outcomes.extend(chunk_outcomes);
            }
            // Refused before signing: the chunk is whole, each of its items tried alone.
            Err(EngineError::Unpublishable(_)) if count > 1 && chunk.len() == count => {
                for item in chunk {
                    outcomes.extend(store_objects(engine, publisher, vec![item]));
                }
            }
            Err(EngineError::Unpublishable(why)) => {
                // Alone, the item is item 0: its reason is said without the number.
                let why = why.strip_prefix("item 0: ").unwrap_or(&why).to_owned();
                outcomes.extend(std::iter::repeat_n(Err(why), count));
            }
            // The store cannot write (a full disk): refused before anything was stored.
            Err(EngineError::Store(e)) if e.is_io() => {
                tracing::error!(error = %e, "TAXII publish refused: the store cannot write");
                let why = if e.is_disk_full() {
                    "not stored: the node's disk is full; writes are refused until the operator frees space"
                } else {
                    "not stored: the node's store cannot write to its disk now"
                };
                outcomes.extend(std::iter::repeat_n(Err(why.to_owned()), count));
            }
            Err(e) => {
                tracing::error!(error = %e, "TAXII publish failed");
                outcomes.extend(std::iter::repeat_n(
                    Err("the node could not store this object".to_owned()),
                    count,
                ));
            }
        }
    }
    outcomes
}

/// The answer to a write whose last flush failed (the store cannot write): 503, and
/// what became of the objects. None accepted: nothing was stored, and the write may be
/// sent again later. Some accepted (stored now, or held already): they are held but
/// not yet durable, which the node makes them once its store can write
/// again; the status resource (in `details`, and kept under its id) says which.
fn not_durable(
    e: &crate::store::StoreError,
    accepted: usize,
    status_id: &str,
    status: &Bytes,
) -> Answer {
    let why = if e.is_disk_full() {
        "the node's disk is full"
    } else {
        "the node's store cannot write to its disk now"
    };
    if accepted == 0 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            &format!("{why}: nothing was stored; send the objects again later"),
        );
    }
    let status: Value = serde_json::from_slice(status).unwrap_or(Value::Null);
    taxii(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({
            "title": "Service Unavailable",
            "description": format!(
                "{why}: {accepted} object(s) were accepted (stored, or held already) and the node holds them, but they are not yet durable; the node makes them durable once its store can write again. Status {status_id} lists them: do not send them again"
            ),
            "http_status": "503",
            "details": { "status": status },
        }),
    )
}

/// Where each item of a write is in `items`, for the status of the write: by id (in
/// lower case, as ids are parsed) and version, each object of an envelope answered by
/// its own item, and by id alone (the first item of each id) for an object whose
/// version does not say which.
#[derive(Default)]
struct ItemPlaces {
    by_version: HashMap<(String, i64), usize>,
    by_id: HashMap<String, usize>,
    /// Each item's version, ms since the epoch.
    versions: Vec<i64>,
}

impl ItemPlaces {
    /// The place of the item of id `id` (in lower case) and version `version_ms`.
    fn find_version(&self, id: &str, version_ms: Option<i64>) -> Option<usize> {
        version_ms
            .and_then(|ms| self.by_version.get(&(id.to_owned(), ms)))
            .copied()
    }
}

fn item_places(items: &[crate::model::Item]) -> ItemPlaces {
    let mut places = ItemPlaces::default();
    for (at, item) in items.iter().enumerate() {
        let id = item.id.as_str().to_owned();
        places.by_id.entry(id.clone()).or_insert(at);
        places
            .by_version
            .entry((id, item.modified_ms))
            .or_insert(at);
        places.versions.push(item.modified_ms);
    }
    places
}

/// What a write's status says of an object of a type the node does not store: the
/// types it stores, from the list of context object types, so it stays true.
fn not_carried() -> String {
    let context: Vec<&str> = crate::model::IndicatorType::ALL
        .into_iter()
        .filter(|t| t.is_context())
        .map(|t| t.as_str())
        .collect();
    format!(
        "not stored: this node holds indicators and the objects around them of these types: {}",
        context.join(", ")
    )
}

/// The status of a write: every object of the envelope is a success (stored, or held
/// already as given; its version as the node holds it, to the millisecond) or a failure
/// with its reason. Returns the status's id and its JSON text.
fn status_resource(
    entries: &[EnvelopeEntry],
    places: &ItemPlaces,
    errors: &[crate::interop::InputError],
    outcomes: &[Result<(), String>],
    request_ms: i64,
) -> (String, Bytes) {
    let mut successes = Vec::with_capacity(entries.len());
    let mut failures = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let carried = entry.kind.as_deref().is_some_and(|kind| {
            kind == "indicator" || crate::model::IndicatorType::context_type(kind).is_some()
        });
        // A success with the version as stored (to the millisecond), or the reason.
        let outcome: Result<Option<i64>, String> = if !carried {
            Err(not_carried())
        } else {
            // Ids are parsed in lower case; most are written so and need no copy.
            let id = if entry.id.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(entry.id.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(entry.id.as_str())
            };
            // The import's refusal of this object, if it refused it (looked for only
            // when the object is not found by its id and version).
            let refused = || {
                let (whole, within) = (format!("objects[{index}]"), format!("objects[{index}] "));
                errors
                    .iter()
                    .find(|e| e.position == whole || e.position.starts_with(&within))
            };
            // The item this object was read into: by its id and version, else (when the
            // import did not refuse it) the first item of its id.
            let place = places
                .find_version(id.as_ref(), entry.version_ms)
                .or_else(|| {
                    refused()
                        .is_none()
                        .then(|| places.by_id.get(id.as_ref()).copied())
                        .flatten()
                });
            match place {
                Some(at) => outcomes
                    .get(at)
                    .cloned()
                    .unwrap_or_else(|| Err("not stored".into()))
                    .map(|()| places.versions.get(at).copied()),
                None => Err(refused()
                    .or_else(|| errors.iter().find(|e| e.position == "input"))
                    .map_or_else(|| "not accepted".to_owned(), |e| e.reason.clone())),
            }
        };
        match outcome {
            Ok(stored) => successes.push(StatusDetail {
                id: &entry.id,
                version: stored
                    .map(format_timestamp)
                    .or_else(|| entry.version.clone()),
                message: None,
            }),
            Err(reason) => failures.push(StatusDetail {
                id: &entry.id,
                version: entry.version.clone(),
                message: Some(reason.chars().take(500).collect()),
            }),
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let status = StatusResource {
        id: &id,
        status: "complete",
        request_timestamp: format_timestamp(request_ms),
        total_count: entries.len(),
        success_count: successes.len(),
        successes,
        failure_count: failures.len(),
        failures,
        pending_count: 0,
        pendings: Vec::new(),
    };
    let bytes = serde_json::to_vec(&status)
        .map(Bytes::from)
        .unwrap_or_default();
    (id, bytes)
}

/// A TAXII status resource, written as it is stored and served.
#[derive(Serialize)]
struct StatusResource<'a> {
    id: &'a str,
    status: &'static str,
    request_timestamp: String,
    total_count: usize,
    success_count: usize,
    successes: Vec<StatusDetail<'a>>,
    failure_count: usize,
    failures: Vec<StatusDetail<'a>>,
    pending_count: usize,
    pendings: Vec<StatusDetail<'a>>,
}

/// One object of a status resource.
#[derive(Serialize)]
struct StatusDetail<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// The collection's id: a UUID (version 5 layout) derived from the node id, so it
/// stays the same across restarts.
fn collection_id(node: &NodeId) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("entente TAXII collection of {node}").as_bytes(),
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Whether a Host header is a plain host (name, IPv4 or bracketed IPv6) and port.
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Splits a media type into its lower-case type and its `version` parameter.
fn media_type(text: &str) -> (String, Option<String>) {
    let mut parts = text.split(';');
    let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let version = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("version")
            .then(|| v.trim().trim_matches('"').to_owned())
    });
    (kind, version)
}

/// Whether the `Accept` header allows a TAXII 2.1 answer (no header: anything goes).
/// The most specific range that matches decides, and one with `q=0` refuses (so
/// `application/taxii+json;q=0, */*` allows no TAXII answer).
fn accepts_taxii(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(ACCEPT) else {
        return true;
    };
    let Ok(accept) = accept.to_str() else {
        return false;
    };
    let mut best: Option<(u8, bool)> = None;
    for range in accept.split(',').take(32) {
        let (kind, version) = media_type(range);
        let specific = match kind.as_str() {
            "*/*" => 0,
            "application/*" => 1,
            "application/taxii+json" => match version.as_deref() {
                None => 2,
                Some("2.1") => 3,
                Some(_) => continue,
            },
            _ => continue,
        };
        let allowed = !refused_by_weight(range);
        if best.is_none_or(|(at, _)| specific > at) {
            best = Some((specific, allowed));
        } else if best.is_some_and(|(at, _)| specific == at) && !allowed {
            best = Some((specific, false));
        }
    }
    best.is_some_and(|(_, allowed)| allowed)
}

/// Whether a media range's `q` parameter is zero (`q=0`, `q=0.0`, `q=0.000`).
fn refused_by_weight(range: &str) -> bool {
    range.split(';').skip(1).any(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            let v = v.trim();
            k.trim().eq_ignore_ascii_case("q")
                && v.starts_with('0')
                && v.bytes().all(|b| b == b'0' || b == b'.')
        })
    })
}

/// Whether the `Content-Type` is TAXII 2.1.
fn is_taxii_content(headers: &HeaderMap) -> bool {
    let Some(Ok(content)) = headers.get(CONTENT_TYPE).map(HeaderValue::to_str) else {
        return false;
    };
    let (kind, version) = media_type(content);
    kind == "application/taxii+json" && version.is_none_or(|v| v == "2.1")
}

/// What making a listing page needs, apart from the request that asks for it.
#[derive(Clone)]
struct Lister {
    engine: Arc<Engine>,
    next_tokens: Arc<NextTokens>,
}

/// A listing page made: its answer, what serving it discloses (recorded before it is
/// answered), the bytes it holds of the caller's answer budget, and the `next` of the
/// page after it with the session that token opens.
struct Listed {
    answer: Answer,
    delivery: Delivery,
    hold: AnswerHold,
    following: Option<(String, Session)>,
}

impl Lister {
    /// One page of the listing `params` asks for, from `session`, under the policy in
    /// force (`Engine::query_fitted_unrecorded`, which the policy gate decides), with the
    /// marking definitions and origin identities its items are the first of the listing
    /// to refer to, within `limit` objects in all.
    async fn list(
        self,
        partner: Partner,
        params: Params,
        mut session: Session,
        path: &'static str,
        manifest: bool,
    ) -> Result<Listed, Answer> {
        let Cursor::Engine(token) = &session.cursor else {
            return Err(bad_next());
        };
        let query = ItemQuery {
            added_after_ms: params.accepted_after(),
            // A TAXII collection holds objects, expired or not: `valid_until` says.
            include_expired: true,
            ..ItemQuery::default()
        };
        let engine = self.engine.clone();
        let scan_partner = partner.clone();
        let limit = params.limit;
        let token = token.clone();
        let (fit_params, fit_session) = (params.clone(), session.clone());
        let page = tokio::task::spawn_blocking(move || {
            engine.query_fitted_unrecorded(
                &scan_partner,
                path,
                &query,
                &token,
                limit,
                now_ms(),
                |items| items_that_fit(&fit_params, fit_session, items),
                |stored| {
                    fit_params.admits(stored.item.id.stix_type())
                        && fit_params.version.allows(stored.item.modified_ms)
                        && fit_params.added_after_passes(stored.accepted_ms)
                },
            )
        })
        .await;
        let mut extra: Vec<(Value, i64)> = Vec::new();
        let (items, next, hold, delivery) = match page {
            Ok(Ok((crate::engine::Answer { page, hold }, first_only, delivery))) => {
                // No item fits with all it brings: the page serves what of that first
                // item's objects fits, and the listing goes on from it.
                if let Some((marked, objects)) = first_only {
                    session = marked;
                    extra = objects;
                }
                (page.items, page.next, hold, delivery)
            }
            Ok(Err(e)) => return Err(engine_error(&e)),
            Err(e) => {
                tracing::error!(error = %e, "TAXII query task failed");
                return Err(internal());
            }
        };
        let items: Vec<StoredItem> = items
            .into_iter()
            .filter(|s| {
                params.version.allows(s.item.modified_ms)
                    && params.added_after_passes(s.accepted_ms)
            })
            .collect();
        let served = items
            .iter()
            .filter(|s| params.admits(s.item.id.stix_type()))
            .count();
        // The objects these items are the first of the listing to refer to; they come
        // only from items the caller may see. The engine cut the page so that they fit
        // within `limit`.
        let mut room = params.limit.saturating_sub(served);
        for stored in &items {
            for object in supporting_objects(&mut session, &params, stored, &mut room) {
                extra.push((object, params.date_added(stored.accepted_ms)));
            }
        }
        let items: Vec<StoredItem> = items
            .into_iter()
            .filter(|s| params.admits(s.item.id.stix_type()))
            .collect();
        let following = match next {
            Some(next) => {
                session.cursor = Cursor::Engine(next);
                let scope_text = params.scope();
                let scope = Scope {
                    caller: &partner.id,
                    path,
                    query: &scope_text,
                };
                match self.next_tokens.seal(&scope, &session) {
                    Some(token) => Some((token, session)),
                    None => return Err(internal()),
                }
            }
            None => None,
        };
        let next = following.as_ref().map(|(token, _)| token.as_str());
        Ok(Listed {
            answer: page_answer(&params, manifest, &items, extra, next),
            delivery,
            hold,
            following,
        })
    }
}

/// One connection's next listing page, made while its client reads the page before it.
/// A client that pages through a listing asks for that page next; it is served if the
/// request is the same (caller, resource, filters, `limit` and `next`), it is asked for
/// within [`READ_AHEAD_TTL`], and nothing that decided it has changed since: the same
/// policy in force, no bundle accepted and no compaction (`Engine::still_current`);
/// else it is dropped and the page made again. Recorded in the ledger only when
/// served. It holds its bytes of the caller's answer budget while it waits, at most one
/// per connection, until the connection's next listing or its close.
#[derive(Default)]
pub struct ReadAhead(std::sync::Mutex<Option<Prepared>>);

/// How long a page made ahead waits for the request that asks for it.
const READ_AHEAD_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// A page being made ahead, for the request `key` names.
struct Prepared {
    key: String,
    since: std::time::Instant,
    task: tokio::task::JoinHandle<Option<Listed>>,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadAhead")
    }
}

impl ReadAhead {
    /// The page made ahead for `key`, if that is the request it was made for; any other
    /// is dropped.
    fn take(&self, key: &str) -> Option<tokio::task::JoinHandle<Option<Listed>>> {
        let prepared = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        if prepared.key == key && prepared.since.elapsed() < READ_AHEAD_TTL {
            Some(prepared.task)
        } else {
            prepared.task.abort();
            None
        }
    }

    fn put(&self, key: String, task: tokio::task::JoinHandle<Option<Listed>>) {
        let prepared = Prepared {
            key,
            since: std::time::Instant::now(),
            task,
        };
        let old = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(prepared);
        if let Some(old) = old {
            old.task.abort();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let prepared = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(prepared) = prepared {
            prepared.task.abort();
        }
    }
}

/// Which request a page made ahead answers: the caller, the resource, every filter,
/// `limit` and `next`.
fn read_ahead_key(caller: &NodeId, path: &str, params: &Params) -> String {
    format!(
        "{caller}\n{path}\n{}\nlimit={}\nnext={}",
        params.scope(),
        params.limit,
        params.next.as_deref().unwrap_or("")
    )
}

/// A page's answer: its items (as STIX objects, or as manifest entries) then the other
/// objects they bring, `more` and `next`, and the date headers of its items.
fn page_answer(
    params: &Params,
    manifest: bool,
    items: &[StoredItem],
    extra: Vec<(Value, i64)>,
    next: Option<&str>,
) -> Answer {
    // The headers date the items only: a page of the objects an item brings, served
    // before the item itself, must not give a client an `added_after` past that item.
    let dates: Vec<i64> = items
        .iter()
        .map(|s| params.date_added(s.accepted_ms))
        .collect();
    if !manifest {
        let objects = items
            .iter()
            .map(|s| write_stix_from(&s.item, Some(s.origin.as_str())))
            .chain(extra.into_iter().map(|(object, _)| object.to_string()));
        let body = envelope(next.is_some(), next, objects);
        return dated(raw_taxii(StatusCode::OK, body), &dates);
    }
    let objects: Vec<Value> = items
        .iter()
        .map(|s| {
            json!({
                "id": s.item.id.as_str(),
                "date_added": format_timestamp(params.date_added(s.accepted_ms)),
                "version": format_timestamp(s.item.modified_ms),
                "media_type": STIX_MEDIA_TYPE,
            })
        })
        .chain(extra.iter().map(|(object, added)| {
            json!({
                "id": object.get("id"),
                "date_added": format_timestamp(*added),
                "version": object_version(object),
                "media_type": STIX_MEDIA_TYPE,
            })
        }))
        .collect();
    let mut body = serde_json::Map::new();
    body.insert("more".into(), json!(next.is_some()));
    if let Some(next) = next {
        body.insert("next".into(), json!(next));
    }
    body.insert("objects".into(), Value::Array(objects));
    dated(taxii(StatusCode::OK, &Value::Object(body)), &dates)
}

/// An envelope's JSON text from its objects' text: `more`, `next` when there is one,
/// then `objects`, written as `serde_json` writes the same object.
fn envelope(more: bool, next: Option<&str>, objects: impl IntoIterator<Item = String>) -> Bytes {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(if more {
        b"{\"more\":true,"
    } else {
        b"{\"more\":false,"
    });
    if let Some(next) = next {
        out.extend_from_slice(b"\"next\":");
        // Writing into a vector does not fail.
        let _ = serde_json::to_writer(&mut out, next);
        out.push(b',');
    }
    out.extend_from_slice(b"\"objects\":[");
    for (n, object) in objects.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(object.as_bytes());
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

fn taxii(status: StatusCode, body: &Value) -> Answer {
    raw_taxii(status, Bytes::from(body.to_string()))
}

fn raw_taxii(status: StatusCode, body: Bytes) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TAXII_MEDIA_TYPE));
    response
}

/// Adds the `Allow` header a 405 carries.
fn with_allow(mut response: Answer, methods: &'static str) -> Answer {
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(methods));
    response
}

/// Adds `X-TAXII-Date-Added-First` and `-Last` for the items of an answer, as the
/// caller's collection dates them ([`Params::date_added`]).
fn with_dates(response: Answer, items: &[StoredItem], params: &Params) -> Answer {
    let dates: Vec<i64> = items
        .iter()
        .map(|s| params.date_added(s.accepted_ms))
        .collect();
    dated(response, &dates)
}

/// Adds `X-TAXII-Date-Added-First` and `-Last` for objects added at `dates`.
fn dated(mut response: Answer, dates: &[i64]) -> Answer {
    let first = dates.iter().copied().min();
    let last = dates.iter().copied().max();
    for (name, at) in [
        ("x-taxii-date-added-first", first),
        ("x-taxii-date-added-last", last),
    ] {
        if let Some(at) = at {
            if let Ok(value) = HeaderValue::from_str(&format_timestamp(at)) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
}

/// A TAXII error message.
pub fn error(status: StatusCode, title: &str, description: &str) -> Answer {
    taxii(
        status,
        &json!({
            "title": title,
            "description": description,
            "http_status": status.as_u16().to_string(),
        }),
    )
}

/// The one answer to a caller that is not authenticated: nothing says why.
pub fn unauthorized() -> Answer {
    let mut response = taxii(
        StatusCode::UNAUTHORIZED,
        &json!({ "title": "Unauthorized", "http_status": "401" }),
    );
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"TAXII\", charset=\"UTF-8\""),
    );
    response
}

/// The one answer for an object the caller cannot have: absent and withheld alike.
fn object_not_found() -> Answer {
    error(StatusCode::NOT_FOUND, "Not Found", "no such object")
}

fn not_found_collection() -> Answer {
    error(StatusCode::NOT_FOUND, "Not Found", "no such collection")
}

fn bad_next() -> Answer {
    error(
        StatusCode::BAD_REQUEST,
        "Bad Request",
        "next is not a value this server gave for this query",
    )
}

/// Why a request body was not taken.
enum BodyRefused {
    /// Past its limit.
    TooLarge,
    /// Cut off before its end, or malformed.
    Unreadable,
}

/// Most bytes of a body refused as too large that are read and dropped before the
/// answer, so that a client still sending it reads the 413 rather than a connection
/// reset (a client that declares more gets the 413 at once, and likely the reset).
const MOST_DRAINED: u64 = 64 * 1024 * 1024;

/// How long the rest of a body refused as too large is waited for, from one piece to
/// the next, before the refusal is answered anyway.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The request body, if it holds at most `limit` bytes. A longer one is refused; what
/// it declares or sends beyond the limit, up to [`MOST_DRAINED`] bytes in all and while
/// it keeps coming ([`DRAIN_IDLE`]), is read and dropped first (never kept).
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyRefused> {
    let declared = http_body::Body::size_hint(&body).exact();
    let mut kept = Vec::with_capacity(declared.map_or(0, |n| n.min(limit as u64) as usize));
    let mut seen: u64 = 0;
    let mut over = declared.is_some_and(|n| n > limit as u64);
    if over && declared.is_some_and(|n| n > MOST_DRAINED) {
        return Err(BodyRefused::TooLarge);
    }
    loop {
        let frame = if over {
            match tokio::time::timeout(DRAIN_IDLE, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Err(BodyRefused::TooLarge),
            }
        } else {
            body.frame().await
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            // Cut off or malformed: never taken for a whole body.
            Some(Err(_)) if over => return Err(BodyRefused::TooLarge),
            Some(Err(_)) => return Err(BodyRefused::Unreadable),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len() as u64);
        if seen > limit as u64 {
            over = true;
            kept = Vec::new();
        }
        if over {
            if seen > MOST_DRAINED {
                return Err(BodyRefused::TooLarge);
            }
            continue;
        }
        kept.extend_from_slice(&data);
    }
    if over {
        Err(BodyRefused::TooLarge)
    } else {
        Ok(Bytes::from(kept))
    }
}

fn too_large(limit: usize) -> Answer {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Payload Too Large",
        &format!("a request body holds at most {limit} bytes (taxii.max_body_bytes)"),
    )
}

fn internal() -> Answer {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        "the node could not answer; its log says why",
    )
}

/// An engine error as a TAXII answer; internal detail goes to the log only.
fn engine_error(e: &EngineError) -> Answer {
    match e {
        // A compaction renumbers what a listing's `next` pointed into: say so, rather
        // than that the value was never given.
        EngineError::PageToken(PageTokenError::Stale) => error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "next is no longer valid: the node compacted its store since it was given; start the listing again without next",
        ),
        EngineError::PageToken(_) => bad_next(),
        EngineError::TooManyPublishes { .. } | EngineError::TooManyUnsentAnswers { .. } => error(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            &e.to_string(),
        ),
        EngineError::LedgerUnavailable { .. } => {
            tracing::error!(error = %e, "TAXII delivery refused");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "the node cannot record deliveries now",
            )
        }
        other => {
            tracing::error!(error = %other, "TAXII request failed");
            internal()
        }
    }
}

/// Answers a request refused before its body was read so that the client reads the
/// answer, not a connection reset: the body is read and dropped first, within the same
/// bounds as for a body refused as too large (at most 64 MiB, a pause of at most 2 s),
/// unless the client waits for an interim answer (`Expect: 100-continue`) and so sends
/// nothing yet.
async fn refuse_body(headers: &HeaderMap, body: Incoming, answer: Answer) -> Answer {
    let waits = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits {
        let _ = tokio::time::timeout(BODY_TIMEOUT, read_body(body, 0)).await;
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `next` from before a compaction is refused saying so, not as a value the
    /// server never gave.
    #[tokio::test]
    async fn a_next_from_before_a_compaction_is_refused_saying_so() {
        async fn body(answer: Answer) -> String {
            let bytes = http_body_util::BodyExt::collect(answer.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
        let stale = engine_error(&EngineError::PageToken(PageTokenError::Stale));
        assert_eq!(stale.status(), StatusCode::BAD_REQUEST);
        assert!(body(stale).await.contains("compacted"));
        let invalid = engine_error(&EngineError::PageToken(PageTokenError::Invalid));
        assert!(body(invalid).await.contains("not a value this server gave"));
    }

    #[test]
    fn routes() {
        assert!(matches!(route("/taxii2/"), Some(Route::Discovery)));
        assert!(matches!(
            route("/api/collections/x/objects/"),
            Some(Route::Objects("x"))
        ));
        assert!(matches!(
            route("/api/collections/x/objects/y/versions/"),
            Some(Route::Versions("x", "y"))
        ));
        assert!(route("/api/collections/x/other/").is_none());
        assert!(route("relative").is_none());
    }

    #[test]
    fn media_types() {
        let mut headers = HeaderMap::new();
        assert!(accepts_taxii(&headers));
        for (accept, ok) in [
            ("application/taxii+json;version=2.1", true),
            ("application/taxii+json", true),
            ("text/html, */*;q=0.1", true),
            ("application/taxii+json;version=2.0", false),
            ("application/json", false),
            ("application/stix+json;version=2.1", false),
            ("application/taxii+json;version=2.1;q=0", false),
            ("application/taxii+json;q=0, */*", false),
            ("*/*;q=0", false),
            ("application/taxii+json;version=2.1;q=0.5, */*;q=0", true),
            (
                "application/taxii+json;q=0.0, application/taxii+json;version=2.1",
                true,
            ),
            ("application/*;q=0.000, application/taxii+json", true),
            ("application/taxii+json;q=0.01", true),
        ] {
            headers.insert(ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(accepts_taxii(&headers), ok, "{accept}");
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(TAXII_MEDIA_TYPE));
        assert!(is_taxii_content(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_taxii_content(&headers));
    }

    #[test]
    fn collection_id_is_a_stable_uuid() {
        let node = NodeId::new("redmond.hq").unwrap();
        let id = collection_id(&node);
        assert_eq!(id, collection_id(&node));
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        assert_ne!(id, collection_id(&NodeId::new("berlin.office").unwrap()));
    }

    fn stored_from(origin: &NodeId) -> StoredItem {
        use crate::model::{Indicator, IndicatorType, Item, ItemKind, StixProperties, Tlp};
        let item = Item {
            id: ItemId::new_random(),
            modified_ms: 1_700_000_000_000,
            tlp: Tlp::Green,
            tags: Vec::new(),
            kind: ItemKind::Indicator(Indicator {
                indicator_type: IndicatorType::Domain,
                value: "a.example".into(),
                description: String::new(),
                confidence: 50,
                kill_chain_phases: Vec::new(),
                valid_from_ms: 1_700_000_000_000,
                valid_until_ms: None,
                properties: StixProperties::none(),
            }),
        };
        StoredItem {
            item,
            bundle_id: crate::model::BundleId::new_random(),
            index: 0,
            origin: origin.clone(),
            received_from: origin.clone(),
            hops: 1,
            accepted_ms: 1_700_000_000_000,
        }
    }

    /// With `limit=1`, an item whose origin's identity was not served yet takes two
    /// pages: the identity, then the item. When the listing already remembers as many
    /// origins as it can, the identity page must still move the listing on.
    #[test]
    fn a_page_of_one_moves_on_past_an_origin_beyond_those_remembered() {
        let params = params::parse(Some("limit=1")).unwrap();
        let mut session = Session::start(Cursor::Engine(Vec::new()));
        session.first_marking(crate::model::Tlp::Green);
        for n in 0..super::super::next::MAX_REMEMBERED_ORIGINS {
            session.first_origin(&NodeId::new(&format!("node-{n}.example")).unwrap());
        }
        let item = stored_from(&NodeId::new("late.example").unwrap());
        let items = [item];
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(
                pages <= 3,
                "the listing serves the same page again and again"
            );
            match items_that_fit(&params, session.clone(), &items) {
                (0, Some((marked, objects))) => {
                    assert_eq!(objects.len(), 1);
                    session = marked;
                }
                (kept, None) => {
                    assert_eq!(kept, 1);
                    break;
                }
                (kept, Some(_)) => panic!("{kept} items kept with a page of objects alone"),
            }
        }
    }
}
