"""A read-only client of an Entente node's ``entente.v1.Intel`` service."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator

import grpc

from ._stubs import bundle_pb2, federation_pb2, federation_pb2_grpc, intel_pb2, intel_pb2_grpc
from .config import ClientConfig

#: Largest message accepted from the node (a full page of 1000 items fits well within).
DEFAULT_MAX_RECEIVE_BYTES = 16 * 1024 * 1024
#: Largest message this client sends (its requests are a few hundred bytes).
MAX_SEND_BYTES = 1024 * 1024
#: Items asked for per Query page (the node caps pages at 1000).
DEFAULT_PAGE_SIZE = 100
#: Deadline of one unary call, in seconds.
DEFAULT_TIMEOUT = 30.0

_PROTOCOL_VERSION = 3
_TLP_NAMES = {
    bundle_pb2.TLP_CLEAR: "CLEAR",
    bundle_pb2.TLP_GREEN: "GREEN",
    bundle_pb2.TLP_AMBER: "AMBER",
    bundle_pb2.TLP_AMBER_STRICT: "AMBER+STRICT",
    bundle_pb2.TLP_RED: "RED",
}


class EntenteError(Exception):
    """A call the node refused or that failed: the gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str, node: str = ""):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.node = node

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, node: str) -> "EntenteError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", node)


@dataclass(frozen=True)
class Provenance:
    """Where the node got an item from, as it knows it."""

    origin: str
    bundle_id: str
    #: The node that sent the bundle to this node (the origin itself for local items).
    received_from: str
    #: Smallest number of node-to-node transfers by which the node received the item.
    hops: int
    #: True when the origin's signature and certificate chain verified on the node.
    signature_verified: bool


@dataclass(frozen=True)
class Item:
    """An indicator, a revocation or a context object, with its provenance."""

    id: str
    #: ``"indicator"``, ``"revocation"`` or ``"context"``.
    kind: str
    #: ``ipv4``, ``ipv6``, ``cidr``, ``domain``, ``url``, ``email``, ``md5``, ``sha1``,
    #: ``sha256`` or ``stix-pattern``; for a context object its STIX type (``malware``,
    #: ``relationship``, ...).
    type: str
    #: The normalised value; a context object's name (a relationship's type); ``None``
    #: for a revocation.
    value: str | None
    #: ``CLEAR``, ``GREEN``, ``AMBER``, ``AMBER+STRICT`` or ``RED``.
    tlp: str
    tags: tuple[str, ...]
    modified: datetime
    provenance: Provenance
    description: str = ""
    confidence: int = 0
    kill_chain_phases: tuple[str, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    revocation_reason: str = ""
    #: The ids a context object references (a relationship's source and target).
    refs: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, stored: intel_pb2.StoredItem) -> "Item":
        item = stored.item
        p = stored.provenance
        provenance = Provenance(
            origin=p.origin,
            bundle_id=p.bundle_id,
            received_from=p.received_from,
            hops=p.hops,
            signature_verified=p.signature_verified,
        )
        common = dict(
            id=item.id,
            tlp=_TLP_NAMES.get(item.tlp, f"UNKNOWN({item.tlp})"),
            tags=tuple(item.tags),
            modified=_from_ms(item.modified_unix_ms),
            provenance=provenance,
        )
        which = item.WhichOneof("kind")
        if which == "context":
            c = item.context
            return cls(
                kind="context",
                type=c.object_type,
                value=_context_name(c.stix_properties),
                refs=tuple(c.refs),
                **common,
            )
        if which == "revocation":
            return cls(
                kind="revocation",
                type=item.revocation.indicator_type,
                value=None,
                revocation_reason=item.revocation.reason,
                **common,
            )
        i = item.indicator
        return cls(
            kind="indicator",
            type=i.indicator_type,
            value=i.value,
            description=i.description,
            confidence=i.confidence,
            kill_chain_phases=tuple(i.kill_chain_phases),
            valid_from=_from_ms(i.valid_from_unix_ms) if i.valid_from_unix_ms else None,
            valid_until=(
                _from_ms(i.valid_until_unix_ms) if i.HasField("valid_until_unix_ms") else None
            ),
            **common,
        )

    def to_dict(self) -> dict:
        """The item JSON object the ``entente`` CLI prints too (README, "JSON output"):
        times in RFC 3339, UTC, with milliseconds."""
        return {
            "id": self.id,
            "kind": self.kind,
            "type": self.type,
            "value": self.value,
            "tlp": self.tlp,
            "tags": list(self.tags),
            "modified": _rfc3339(self.modified),
            "description": self.description,
            "confidence": self.confidence,
            "kill_chain_phases": list(self.kill_chain_phases),
            "valid_from": _rfc3339(self.valid_from) if self.valid_from else None,
            "valid_until": _rfc3339(self.valid_until) if self.valid_until else None,
            "revocation_reason": self.revocation_reason,
            "refs": list(self.refs),
            "provenance": {
                "origin": self.provenance.origin,
                "bundle_id": self.provenance.bundle_id,
                "received_from": self.provenance.received_from,
                "hops": self.provenance.hops,
                "signature_verified": self.provenance.signature_verified,
            },
        }


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _from_ms(ms: int) -> datetime:
    # Whole milliseconds, exactly (``fromtimestamp(ms / 1000)`` can lose one to rounding).
    return _EPOCH + timedelta(milliseconds=ms)


def _context_name(stix_properties: str) -> str:
    """A context object's ``name`` (or a relationship's ``relationship_type``)."""
    try:
        properties = json.loads(stix_properties) if stix_properties else {}
    except ValueError:
        return ""
    for key in ("name", "relationship_type"):
        value = properties.get(key) if isinstance(properties, dict) else None
        if isinstance(value, str):
            return value
    return ""


def _rfc3339(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


_SPAN = re.compile(r"^(?:\d+[smhdw])+$")
_SPAN_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: Fewest digits of a bare number read as Unix milliseconds (as the ``entente`` CLI).
_MIN_UNIX_MS_DIGITS = 12
_FORMS = (
    "expected a span back from now (30m, 24h, 7d, 1h30m), an RFC 3339 date or time "
    "(2026-01-31, 2026-01-31T12:00:00Z), today, yesterday, now, or Unix milliseconds"
)


def _now_ms() -> int:
    return int((datetime.now(timezone.utc) - _EPOCH) / timedelta(milliseconds=1))


def since_ms(since: datetime | int | str | None, now: int | None = None) -> int:
    """``since`` as Unix milliseconds, read as the ``entente`` CLI reads ``--since``: a
    datetime; Unix milliseconds (an int, or text of at least 12 digits); a span back
    from now such as ``30m``, ``24h``, ``7d`` or ``1h30m``; an RFC 3339 date and time or
    a date alone (midnight UTC); ``now``, ``today`` or ``yesterday`` (midnight UTC).
    ``None`` is 0. ``now`` (Unix milliseconds) is the present, for tests."""
    if since is None:
        return 0
    if isinstance(since, bool):
        raise ValueError("since: not a time")
    if isinstance(since, int):
        return since
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise ValueError("since: a datetime needs a time zone")
        return int((since - _EPOCH) / timedelta(milliseconds=1))
    now = _now_ms() if now is None else now
    text = since.strip()
    if not text:
        raise ValueError(f"since: empty; {_FORMS}")
    word = text.lower()
    day = 86_400_000
    if word == "now":
        return now
    if word == "today":
        return now // day * day
    if word == "yesterday":
        return (now // day - 1) * day
    if text.isdigit():
        if len(text) < _MIN_UNIX_MS_DIGITS:
            raise ValueError(
                f"since: {text!r}: a number needs a unit (30m, 24h, 7d); Unix milliseconds "
                f"have at least {_MIN_UNIX_MS_DIGITS} digits"
            )
        return int(text)
    if _SPAN.match(text):
        span = sum(int(n) * _UNIT_MS[unit] for n, unit in _SPAN_PART.findall(text))
        return now - span
    if _DATE.match(text):
        try:
            when = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"since: {text!r}: not a time; {_FORMS}") from None
        return int((when - _EPOCH) / timedelta(milliseconds=1))
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"since: {text!r}: not a time; {_FORMS}") from None
    if when.tzinfo is None:
        raise ValueError(f"since: {text!r} has no time zone (add Z or +00:00)")
    return int((when - _EPOCH) / timedelta(milliseconds=1))


def item_filter(
    value: str | None = None,
    type: str | None = None,
    tag: str | None = None,
    origin: str | None = None,
    since: datetime | int | str | None = None,
    include_expired: bool = False,
) -> intel_pb2.ItemFilter:
    """The node's ``ItemFilter``; every given condition must hold."""
    return intel_pb2.ItemFilter(
        value=value or "",
        indicator_type=type or "",
        tag=tag or "",
        origin=origin or "",
        modified_since_unix_ms=since_ms(since),
        include_expired=include_expired,
    )


class Subscription:
    """Items as the node accepts them; iterate to receive, ``cancel()`` to stop.

    Each item is checked against the client's policy on the node before it is sent, so
    only what the client may see arrives. The stream has no deadline.
    """

    def __init__(self, call, node: str):
        self._call = call
        self._node = node

    def wait_open(self, timeout: float | None = 30.0) -> None:
        """Returns once the node has accepted the subscription (its response headers
        arrived): items accepted from then on are delivered. Raises EntenteError when
        the call failed instead, or when nothing arrived within ``timeout`` seconds
        (``None`` waits for ever)."""
        opened = threading.Event()
        self._call.add_done_callback(lambda _call: opened.set())
        waiter = threading.Thread(
            target=lambda: (self._call.initial_metadata(), opened.set()), daemon=True
        )
        waiter.start()
        if not opened.wait(timeout):
            self._call.cancel()
            raise EntenteError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the subscription did not open within {timeout} s",
                self._node,
            )
        if self._call.done() and self._call.code() != grpc.StatusCode.OK:
            raise EntenteError(self._call.code(), self._call.details() or "", self._node)

    def __iter__(self) -> Iterator[Item]:
        try:
            for stored in self._call:
                yield Item.from_proto(stored)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and self._call.cancelled():
                return
            raise EntenteError.from_rpc(error, self._node) from None

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class Client:
    """A connection to one node as one client certificate.

    >>> with Client(ClientConfig.from_toml("researcher.uni-x.toml")) as node:
    ...     for item in node.query(tag="campaign:x"):
    ...         print(item.value, item.tlp, item.provenance.origin)

    The node's certificate must chain to the configured trust anchors and name the
    configured node id; nothing else (no system roots) is trusted.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    ):
        roots, key, chain = config.credentials_material()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=key, certificate_chain=chain
        )
        options = [
            # The node is often addressed by IP; its certificate names it by node id, and
            # the TLS handshake checks that name.
            ("grpc.ssl_target_name_override", config.node_id),
            ("grpc.default_authority", config.node_id),
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            # Straight to the node, never through a proxy from the environment.
            ("grpc.enable_http_proxy", 0),
        ]
        self.config = config
        self.timeout = timeout
        self._channel = grpc.secure_channel(config.address, credentials, options=options)
        #: The generated ``entente.v1.Intel`` stub, for calls this class does not wrap.
        self.intel = intel_pb2_grpc.IntelStub(self._channel)
        self._federation = federation_pb2_grpc.FederationStub(self._channel)

    @classmethod
    def from_config_file(cls, path, **kwargs) -> "Client":
        return cls(ClientConfig.from_toml(path), **kwargs)

    @property
    def node_id(self) -> str:
        return self.config.node_id

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, error: grpc.RpcError) -> EntenteError:
        return EntenteError.from_rpc(error, self.node_id)

    def hello(self) -> dict:
        """Who answered and how it sees this client: ``node_id``, ``caller_id``,
        ``caller_role`` (``read_only``, ``analyst`` or ``admin``), ``software_version``."""
        request = federation_pb2.HelloRequest(
            node_id=self.config.id, protocol_version=_PROTOCOL_VERSION, capabilities=["hello"]
        )
        try:
            reply = self._federation.Hello(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return {
            "node_id": reply.node_id,
            "caller_id": reply.caller_id,
            "caller_role": reply.caller_role,
            "software_version": reply.software_version,
        }

    def query(
        self,
        *,
        value: str | None = None,
        type: str | None = None,
        tag: str | None = None,
        origin: str | None = None,
        since: datetime | int | str | None = None,
        include_expired: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        limit: int | None = None,
    ) -> Iterator[Item]:
        """Every item matching the filter that this client may see, following the node's
        pages. ``value`` is an exact (normalised) value; ``since`` is a datetime, Unix
        milliseconds, RFC 3339 text or a duration such as ``24h``; ``limit`` stops early."""
        if not 0 < page_size <= 1000:
            raise ValueError("page_size: 1 to 1000")
        request = intel_pb2.QueryRequest(
            filter=item_filter(value, type, tag, origin, since, include_expired),
            page_size=page_size,
        )
        return self._pages(request, limit)

    def _pages(self, request: intel_pb2.QueryRequest, limit: int | None) -> Iterator[Item]:
        shown = 0
        seen_tokens: set[bytes] = set()
        while True:
            try:
                page = self.intel.Query(request, timeout=self.timeout)
            except grpc.RpcError as error:
                raise self._error(error) from None
            for stored in page.items:
                if limit is not None and shown >= limit:
                    return
                yield Item.from_proto(stored)
                shown += 1
            if not page.next_page_token or (limit is not None and shown >= limit):
                return
            # A node that hands back a token it gave before would page forever.
            if page.next_page_token in seen_tokens:
                raise EntenteError(
                    grpc.StatusCode.DATA_LOSS,
                    "the node repeated a page token; stopping",
                    self.node_id,
                )
            seen_tokens.add(page.next_page_token)
            request.page_token = page.next_page_token

    def get(self, id: str) -> Item | None:
        """One item with its provenance, or ``None`` when the node has no such item or
        withholds it from this client (the node answers both alike)."""
        try:
            reply = self.intel.Get(intel_pb2.GetRequest(id=id), timeout=self.timeout)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error(error) from None
        return Item.from_proto(reply.item)

    def subscribe(
        self,
        *,
        value: str | None = None,
        type: str | None = None,
        tag: str | None = None,
        origin: str | None = None,
        include_expired: bool = False,
    ) -> Subscription:
        """Items matching the filter as the node accepts them (new items only; use
        ``query`` to catch up). Iterate the result; cancel it to stop."""
        request = intel_pb2.SubscribeRequest(
            filter=item_filter(value, type, tag, origin, None, include_expired)
        )
        return Subscription(self.intel.Subscribe(request), self.node_id)
