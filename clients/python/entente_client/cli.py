"""``python -m entente_client query|get|subscribe``: the read-only client from a shell.

The connection comes from a client configuration (``--config FILE``, the TOML file
``entente certs client`` writes, or ``ENTENTE_CLIENT_CONFIG``) or from flags
(``--address``, ``--node-id``, ``--cert``, ``--key``, ``--ca``); flags override the file.

Exit status: 0 on success, 1 when the node refused or the call failed (the gRPC status
code and message are printed), 2 for a usage or configuration error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timezone
from pathlib import Path

PROG = "python -m entente_client"


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("ENTENTE_CLIENT_CONFIG") or None,
        help="client configuration TOML ([client] section); default $ENTENTE_CLIENT_CONFIG",
    )
    group.add_argument("--address", help="host:port of the node")
    group.add_argument("--node-id", help="the node's id, checked against its certificate")
    group.add_argument("--cert", type=Path, help="client certificate (PEM)")
    group.add_argument("--key", type=Path, help="client private key (PEM)")
    group.add_argument(
        "--ca", type=Path, action="append", help="federation CA certificate (PEM); repeatable"
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="deadline of each call in seconds (30)"
    )
    return common


def _filter_options() -> argparse.ArgumentParser:
    filters = argparse.ArgumentParser(add_help=False)
    group = filters.add_argument_group("filters (all given must hold)")
    group.add_argument("--value", help="exact value (normalised: lower-case domain, ...)")
    group.add_argument("--type", help="ipv4, ipv6, cidr, domain, url, email, md5, sha1, sha256")
    group.add_argument("--tag")
    group.add_argument("--origin", help="node id of the origin")
    group.add_argument("--include-expired", action="store_true")
    group.add_argument(
        "--tlp",
        action="append",
        type=_tlp,
        metavar="MARKING",
        help="only items with this marking: clear, green, amber, amber+strict or red "
        "(repeatable; checked by this client)",
    )
    return filters


_TLPS = {"CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"}


def _tlp(text: str) -> str:
    """A marking as the ``entente`` CLI reads it: any case, ``TLP:`` prefix optional."""
    upper = text.strip().upper().removeprefix("TLP:").replace("_", "+").replace("-", "+")
    upper = "CLEAR" if upper == "WHITE" else upper
    if upper not in _TLPS:
        raise argparse.ArgumentTypeError(
            f"unknown TLP marking {text!r} (expected CLEAR, GREEN, AMBER, AMBER+STRICT or RED)"
        )
    return upper


def parser() -> argparse.ArgumentParser:
    connection = _connection_options()
    filters = _filter_options()
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json",
        action="store_true",
        help="one item JSON object per line (the same objects as `entente ... --json`)",
    )
    top = argparse.ArgumentParser(
        prog=PROG, description="Read-only client of an Entente node (query, get, subscribe)."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    query = commands.add_parser(
        "query",
        parents=[connection, filters, output],
        help="items this client may see, every page",
    )
    query.add_argument(
        "--since",
        metavar="TIME",
        help="modified at or after TIME: a span back from now (30m, 24h, 7d), an RFC 3339 "
        "date or time, today, yesterday, or Unix milliseconds",
    )
    query.add_argument("--limit", type=int, help="stop after N items")
    query.add_argument("--page-size", type=int, default=100, help="items per page (100)")
    get = commands.add_parser(
        "get", parents=[connection, output], help="one item with its provenance"
    )
    get.add_argument("id", help="indicator--<uuid>")
    subscribe = commands.add_parser(
        "subscribe",
        parents=[connection, filters, output],
        help="print items as the node accepts them",
    )
    subscribe.add_argument("--count", type=int, help="stop after N items")
    return top


def _config(args):
    from .config import ClientConfig, ConfigError

    base = ClientConfig.from_toml(args.config) if args.config else None
    fields = {
        "address": args.address or (base.address if base else None),
        "node_id": args.node_id or (base.node_id if base else None),
        "cert": args.cert or (base.cert if base else None),
        "key": args.key or (base.key if base else None),
        "trust_anchors": tuple(args.ca) if args.ca else (base.trust_anchors if base else ()),
    }
    flags = {"address": "--address", "node_id": "--node-id", "cert": "--cert", "key": "--key"}
    for name, flag in flags.items():
        if not fields[name]:
            raise ConfigError(f"{flag} (or --config) is required")
    if not fields["trust_anchors"]:
        raise ConfigError("--ca (or --config) is required: the federation CA certificate")
    return ClientConfig(
        id=base.id if base else "",
        crls=base.crls if base else (),
        **fields,
    )


_HEADER = ("ID", "TYPE", "TLP", "ORIGIN", "HOPS", "MODIFIED", "TAGS", "VALUE")
#: Least width of each padded column (the value, last, is never padded), as the
#: ``entente`` CLI's table.
_MIN_WIDTHS = (47, 12, 12, 16, 4, 20, 8)
_MAX_WIDTH = 40


def _modified(when) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(item) -> tuple[str, ...]:
    p = item.provenance
    return (
        item.id,
        item.type,
        item.tlp,
        p.origin,
        f"{p.hops}" + ("" if p.signature_verified else " UNVERIFIED"),
        _modified(item.modified),
        ",".join(item.tags) if item.tags else "-",
        item.value if item.value is not None else "(revoked)",
    )


def _widths(rows) -> list[int]:
    widths = [max(w, len(name)) for w, name in zip(_MIN_WIDTHS, _HEADER)]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], min(len(cell), _MAX_WIDTH))
    return widths


def _line(row, widths) -> str:
    padded = "".join(cell + " " * (max(w - len(cell), 0) + 2) for cell, w in zip(row, widths))
    return (padded + row[-1]).rstrip()


def _details(item) -> str:
    p = item.provenance
    rows = [
        ("id", item.id),
        ("type", item.type),
        ("value", item.value) if item.value is not None else ("revoked", "yes"),
        ("marking", f"TLP:{item.tlp}"),
        ("tags", ", ".join(item.tags)),
        ("modified", _modified(item.modified)),
    ]
    if item.valid_until:
        rows.append(("valid until", _modified(item.valid_until)))
    if item.description:
        rows.append(("description", item.description))
    if item.kind == "revocation":
        rows.append(("reason", item.revocation_reason))
    if item.refs:
        rows.append(("refs", ", ".join(item.refs)))
    rows += [
        ("origin", p.origin),
        ("bundle", p.bundle_id),
        ("received from", f"{p.received_from} ({p.hops} hops)"),
        (
            "signature",
            "origin signature verified" if p.signature_verified else "NOT VERIFIED",
        ),
    ]
    return "\n".join(f"{k + ':':<15}{v}" for k, v in rows)


def _json(item) -> str:
    """The item JSON object as one line: keys sorted, no spaces, UTF-8 (the same bytes as
    the ``entente`` CLI prints)."""
    return json.dumps(item.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _count(n: int) -> str:
    return "1 item" if n == 1 else f"{n} items"


def _selected(item, args) -> bool:
    return not args.tlp or item.tlp in args.tlp


def _run(args) -> int:
    import grpc

    from .client import Client, EntenteError

    config = _config(args)
    if config.crls:
        print(
            f"{PROG}: note: the CRLs in the configuration are not checked by this client",
            file=sys.stderr,
        )
    with Client(config, timeout=args.timeout) as client:
        if args.command == "query":
            if args.limit is not None and args.limit < 0:
                raise ValueError("--limit: not negative")
            items = (
                item
                for item in client.query(
                    value=args.value,
                    type=args.type,
                    tag=args.tag,
                    origin=args.origin,
                    since=args.since,
                    include_expired=args.include_expired,
                    page_size=args.page_size,
                    # With --tlp, the limit counts the items selected here.
                    limit=None if args.tlp else args.limit,
                )
                if _selected(item, args)
            )
            shown = 0
            widths = None
            page: list = []

            def flush() -> None:
                nonlocal widths
                if not page:
                    return
                if widths is None:
                    widths = _widths(_row(i) for i in page)
                    print(_line(_HEADER, widths))
                for i in page:
                    print(_line(_row(i), widths), flush=True)
                page.clear()

            for item in items:
                if args.limit is not None and shown >= args.limit:
                    break
                shown += 1
                if args.json:
                    print(_json(item), flush=True)
                    continue
                # Columns fit the first page, as the entente CLI's table does.
                page.append(item)
                if len(page) >= max(args.page_size, 1):
                    flush()
            if not args.json:
                flush()
                print(_count(shown), file=sys.stderr)
            return 0
        if args.command == "get":
            item = client.get(args.id)
            if item is None:
                raise EntenteError(
                    grpc.StatusCode.NOT_FOUND,
                    f"{args.id}: no such item on {config.node_id} "
                    f"(or not visible to {config.id or 'this client'})",
                    config.node_id,
                )
            print(_json(item) if args.json else _details(item))
            return 0
        # subscribe
        if args.count is not None and args.count < 1:
            raise ValueError("--count: at least 1")
        subscription = client.subscribe(
            value=args.value,
            type=args.type,
            tag=args.tag,
            origin=args.origin,
            include_expired=args.include_expired,
        )
        with subscription:
            subscription.wait_open()
            print(f"subscribed to {config.node_id}", file=sys.stderr, flush=True)
            received = 0
            widths = _widths(())
            if not args.json:
                print(_line(_HEADER, widths), flush=True)
            for item in subscription:
                if not _selected(item, args):
                    continue
                print(_json(item) if args.json else _line(_row(item), widths), flush=True)
                received += 1
                if args.count is not None and received >= args.count:
                    break
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Imported here so `--help` works even before the stubs exist.
    try:
        from .client import EntenteError
        from .config import ConfigError
    except ImportError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except EntenteError as error:
        print(f"{PROG}: {args.command}: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
