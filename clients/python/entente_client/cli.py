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
    return filters


def parser() -> argparse.ArgumentParser:
    connection = _connection_options()
    filters = _filter_options()
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="one JSON object per line")
    top = argparse.ArgumentParser(
        prog=PROG, description="Read-only client of an Entente node (query, get, subscribe)."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    query = commands.add_parser(
        "query",
        parents=[connection, filters, output],
        help="items this client may see, every page",
    )
    query.add_argument("--since", help="modified at or after: RFC 3339, or 30m, 24h, 7d")
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


def _line(item) -> str:
    value = item.value if item.value is not None else "(revoked)"
    p = item.provenance
    return (
        f"{item.id}  {item.type:<12} {value}  TLP:{item.tlp}  origin={p.origin} "
        f"hops={p.hops} modified={item.modified.isoformat(timespec='seconds')}"
        + ("" if p.signature_verified else " UNVERIFIED")
    )


def _details(item) -> str:
    p = item.provenance
    rows = [
        ("id", item.id),
        ("type", item.type),
        ("value", item.value) if item.value is not None else ("revoked", "yes"),
        ("marking", f"TLP:{item.tlp}"),
        ("tags", ", ".join(item.tags)),
        ("modified", item.modified.isoformat(timespec="seconds")),
    ]
    if item.valid_until:
        rows.append(("valid until", item.valid_until.isoformat(timespec="seconds")))
    if item.description:
        rows.append(("description", item.description))
    if item.revocation_reason:
        rows.append(("reason", item.revocation_reason))
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


def _emit(item, as_json: bool) -> None:
    print(json.dumps(item.to_dict(), sort_keys=True) if as_json else _line(item), flush=True)


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
            shown = 0
            for item in client.query(
                value=args.value,
                type=args.type,
                tag=args.tag,
                origin=args.origin,
                since=args.since,
                include_expired=args.include_expired,
                page_size=args.page_size,
                limit=args.limit,
            ):
                _emit(item, args.json)
                shown += 1
            if not args.json:
                print(f"{shown} items", file=sys.stderr)
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
            print(json.dumps(item.to_dict(), sort_keys=True) if args.json else _details(item))
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
            for item in subscription:
                _emit(item, args.json)
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
