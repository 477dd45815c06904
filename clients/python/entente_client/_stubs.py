"""Finds (and on first use from a source checkout, generates) the gRPC stubs.

Where the stubs are, in order:

1. ``ENTENTE_CLIENT_STUBS``: a directory made by ``generate_stubs.py --out DIR``;
2. ``entente_client/_generated``, written at install time or on first use.

When the node's ``proto/`` directory is found (``ENTENTE_PROTO_DIR``, or the
repository this package sits in) and ``grpcio-tools`` is installed, stubs that are
missing or were generated from other ``.proto`` files are generated again.

The generated modules import each other as ``entente.v1.*`` (protoc names modules after
the ``.proto`` paths), so the stub directory is put on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from . import _codegen

_PACKAGE = Path(__file__).resolve().parent


def _proto_root() -> Path | None:
    explicit = os.environ.get("ENTENTE_PROTO_DIR")
    if explicit:
        return Path(explicit)
    # clients/python/entente_client -> the repository root.
    candidate = _PACKAGE.parents[2] / "proto"
    if (candidate / _codegen.PROTO_FILES[0]).is_file():
        return candidate
    return None


def _stub_dir() -> Path:
    explicit = os.environ.get("ENTENTE_CLIENT_STUBS")
    if explicit:
        return Path(explicit)
    out = _PACKAGE / "_generated"
    protos = _proto_root()
    present = (out / "entente" / "v1" / "intel_pb2.py").is_file()
    if protos is not None and (
        not present or _codegen.stamp_of(out) != _codegen.proto_digest(protos)
    ):
        try:
            _codegen.generate(protos, out)
        except (RuntimeError, OSError) as error:
            if not present:
                raise ImportError(f"entente_client: cannot generate the gRPC stubs: {error}")
            warnings.warn(
                f"entente_client: the gRPC stubs in {out} were generated from other "
                f".proto files and could not be regenerated ({error}); using them anyway",
                stacklevel=2,
            )
    elif not present:
        raise ImportError(
            "entente_client: the gRPC stubs are missing; run "
            "`python3 clients/python/generate_stubs.py` in the repository, or set "
            "ENTENTE_CLIENT_STUBS to a directory it wrote"
        )
    return out


_DIR = str(_stub_dir())
if _DIR not in sys.path:
    sys.path.insert(0, _DIR)

from entente.v1 import bundle_pb2, federation_pb2, federation_pb2_grpc  # noqa: E402
from entente.v1 import intel_pb2, intel_pb2_grpc  # noqa: E402

__all__ = [
    "bundle_pb2",
    "federation_pb2",
    "federation_pb2_grpc",
    "intel_pb2",
    "intel_pb2_grpc",
]
