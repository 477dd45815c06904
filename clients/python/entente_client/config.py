"""Client configuration: the same ``[client]`` TOML file the node's CLI writes.

``entente certs client --dir DIR --id ID --node HOST:PORT --node-id NODE_ID`` writes
``DIR/ID.toml``::

    [client]
    id = "researcher.uni-x"          # the first DNS SAN of cert
    cert = "researcher.uni-x.crt"
    key = "researcher.uni-x.key"     # mode 0600
    trust_anchors = ["ca.crt"]       # the federation CA
    crls = []
    node = "hq.example.org:7443"     # host:port of the node
    node_id = "redmond.hq"           # checked against the node's certificate

Relative paths are resolved against the file's directory, as the node does.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_FIELDS = {"id", "cert", "key", "trust_anchors", "crls", "node", "node_id"}
_MAX_CONFIG_BYTES = 64 * 1024
# Certificates, keys and CA bundles are small; anything larger is not one.
_MAX_PEM_BYTES = 1024 * 1024


def _read_bounded(path: Path, limit: int, label: str) -> bytes:
    """The file's bytes (reading at most ``limit + 1`` of them); a file that cannot be
    read or is larger than ``limit`` is a ConfigError starting with ``label``."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise ConfigError(f"{label}: {error.strerror or error}") from None
    if len(data) > limit:
        raise ConfigError(f"{label}: larger than {limit} bytes")
    return data


class ConfigError(Exception):
    """A client configuration that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ClientConfig:
    """How to reach one node: its address and id, and this client's TLS identity.

    The trust anchors are always passed to gRPC explicitly; the machine's default
    roots (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, ``SSL_CERT_FILE``, ...) are never used.
    """

    #: ``host:port`` of the node.
    address: str
    #: The node's id; the node's certificate must name it.
    node_id: str
    #: PEM certificate chain of this client, leaf first.
    cert: Path
    #: PEM private key of this client.
    key: Path
    #: PEM CA certificates the node's certificate must chain to (the federation CA).
    trust_anchors: tuple[Path, ...]
    #: This client's id (informational; the node reads it from the certificate).
    id: str = ""
    #: CRL files named by the configuration. grpcio cannot check them; see the README.
    crls: tuple[Path, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.trust_anchors:
            raise ConfigError("trust_anchors: at least one CA certificate is required")
        if not self.node_id:
            raise ConfigError("node_id: the node's id is required")
        _check_address(self.address)

    @classmethod
    def from_toml(cls, path: str | Path) -> "ClientConfig":
        """Loads a ``[client]`` configuration file."""
        path = Path(path)
        data = _read_bounded(path, _MAX_CONFIG_BYTES, str(path))
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: {error}") from None
        if "client" not in doc:
            raise ConfigError(
                f"{path}: no [client] section; this client needs a client configuration "
                "(`entente certs client ... --node HOST:PORT --node-id NODE_ID` writes one)"
            )
        client = doc["client"]
        unknown = sorted(set(client) - _FIELDS)
        if unknown:
            raise ConfigError(f"{path}: client.{unknown[0]}: unknown field")
        base = path.resolve().parent

        def text(name: str) -> str:
            value = client.get(name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: client.{name}: a non-empty string is required")
            return value

        def paths(name: str, required: bool) -> tuple[Path, ...]:
            value = client.get(name, [] if not required else None)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: client.{name}: a list of file names is required")
            return tuple(base / v for v in value)

        try:
            return cls(
                address=text("node"),
                node_id=text("node_id"),
                cert=base / text("cert"),
                key=base / text("key"),
                trust_anchors=paths("trust_anchors", True),
                id=text("id"),
                crls=paths("crls", False),
            )
        except ConfigError as error:
            message = str(error)
            if message.startswith(str(path)):
                raise
            raise ConfigError(f"{path}: client.{message}") from None

    def credentials_material(self) -> tuple[bytes, bytes, bytes]:
        """(root certificates, private key, certificate chain) as PEM bytes."""

        def read(what: str, file: Path) -> bytes:
            data = _read_bounded(file, _MAX_PEM_BYTES, f"{what} {file}")
            if b"-----BEGIN" not in data:
                raise ConfigError(f"{what} {file}: not a PEM file")
            return data

        roots = b"".join(read("trust anchor", a).rstrip(b"\n") + b"\n" for a in self.trust_anchors)
        _check_key_mode(self.key)
        return roots, read("key", self.key), read("certificate", self.cert)


def _check_key_mode(key: Path) -> None:
    """Refuses a private key that others than its owner may read or write, as the
    command-line client does: on a shared machine it would be anyone's."""
    try:
        mode = os.stat(key).st_mode
    except OSError as error:
        raise ConfigError(f"key {key}: {error.strerror or error}") from None
    if mode & 0o077:
        raise ConfigError(
            f"key {key}: private key has mode {mode & 0o777:04o}: it must be readable by "
            f"its owner only (chmod 600 {key})"
        )


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"node: {address!r} is not host:port")
