"""Read-only Python client for an Entente node: query, get and subscribe over mutual TLS.

>>> from entente_client import Client
>>> with Client.from_config_file("researcher.uni-x.toml") as node:
...     for item in node.query(type="domain", since="7d"):
...         print(item.value, item.tlp, item.provenance.origin)

See ``clients/python/README.md``.
"""

from .client import (
    DEFAULT_MAX_RECEIVE_BYTES,
    DEFAULT_PAGE_SIZE,
    Client,
    EntenteError,
    Item,
    Provenance,
    Subscription,
    item_filter,
    since_ms,
)
from .config import ClientConfig, ConfigError

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientConfig",
    "ConfigError",
    "DEFAULT_MAX_RECEIVE_BYTES",
    "DEFAULT_PAGE_SIZE",
    "EntenteError",
    "Item",
    "Provenance",
    "Subscription",
    "item_filter",
    "since_ms",
]
