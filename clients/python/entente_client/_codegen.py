"""Generates the Python gRPC stubs from the node's ``proto/`` directory.

The stubs are written by ``grpcio-tools`` and never edited by hand. They live in a
directory of their own (``entente_client/_generated`` by default) together with a
stamp: the SHA-256 of the ``.proto`` files they were generated from, so a stale copy is
noticed and replaced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

#: The ``.proto`` files of the node, relative to the proto root.
PROTO_FILES = (
    "entente/v1/bundle.proto",
    "entente/v1/intel.proto",
    "entente/v1/federation.proto",
    "entente/v1/admin.proto",
)

STAMP = "PROTO_SHA256"


def proto_digest(proto_root: Path) -> str:
    """SHA-256 over the names and contents of the ``.proto`` files."""
    digest = hashlib.sha256()
    for name in PROTO_FILES:
        digest.update(name.encode() + b"\0")
        digest.update((proto_root / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def stamp_of(out_dir: Path) -> str | None:
    try:
        return (out_dir / STAMP).read_text().strip()
    except OSError:
        return None


def generate(proto_root: Path, out_dir: Path) -> Path:
    """Generates the stubs for the files of ``proto_root`` into ``out_dir``.

    The new tree is built beside ``out_dir`` and moved into place, so a reader never
    sees a half-written directory and two concurrent generators do not mix files.
    """
    try:
        from grpc_tools import protoc
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "generating the stubs needs grpcio-tools: "
            "python3 -m pip install -r tests/python/requirements.txt"
        ) from error
    proto_root = proto_root.resolve()
    out_dir = out_dir.resolve()
    missing = [name for name in PROTO_FILES if not (proto_root / name).is_file()]
    if missing:
        raise RuntimeError(f"{proto_root}: missing {', '.join(missing)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".stubs-", dir=out_dir.parent))
    try:
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *PROTO_FILES,
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed (exit {code}) on {proto_root}")
        (scratch / STAMP).write_text(proto_digest(proto_root) + "\n")
        _replace(scratch, out_dir)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


def _replace(new: Path, target: Path) -> None:
    """Moves ``new`` to ``target``, replacing an older tree."""
    try:
        os.rename(new, target)
        return
    except OSError:
        pass
    # An older tree is in the way: move it aside, then put the new one in place.
    if stamp_of(target) == stamp_of(new):
        return  # another process generated the same stubs meanwhile
    old = Path(tempfile.mkdtemp(prefix=".stubs-old-", dir=target.parent))
    try:
        os.rename(target, old / "tree")
    except OSError:
        pass
    try:
        os.rename(new, target)
    except OSError:
        if stamp_of(target) != stamp_of(new):
            raise
    shutil.rmtree(old, ignore_errors=True)
