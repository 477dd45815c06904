#!/usr/bin/env python3
"""Generates the gRPC stubs of entente_client from the repository's proto/ directory.

Usage: python3 clients/python/generate_stubs.py [--proto DIR] [--out DIR]

Defaults: --proto is the repository's proto/, --out is entente_client/_generated (the
place the package looks first; ENTENTE_CLIENT_STUBS overrides it at run time). Needs
grpcio-tools (see tests/python/requirements.txt). The package also generates its stubs
on first use when it runs from a source checkout, so running this by hand is only
needed before building a wheel or to put the stubs elsewhere.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load_codegen():
    """entente_client/_codegen.py on its own (the package itself needs the stubs)."""
    spec = importlib.util.spec_from_file_location(
        "entente_client_codegen", HERE / "entente_client" / "_codegen.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_codegen = _load_codegen()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", type=Path, default=HERE.parent.parent / "proto")
    parser.add_argument("--out", type=Path, default=HERE / "entente_client" / "_generated")
    args = parser.parse_args()
    try:
        out = _codegen.generate(args.proto, args.out)
    except RuntimeError as error:
        print(f"generate_stubs: {error}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
