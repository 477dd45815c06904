"""Builds entente_client with its gRPC stubs generated from the repository's proto/.

The stubs are generated into entente_client/_generated while the package is built
(from the proto/ directory two levels up), so an installed package needs only grpcio
and protobuf at run time.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _load_codegen():
    """entente_client/_codegen.py on its own (the package itself needs the stubs)."""
    spec = importlib.util.spec_from_file_location(
        "entente_client_codegen", HERE / "entente_client" / "_codegen.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithStubs(build_py):
    def run(self):
        _codegen = _load_codegen()

        proto = HERE.parent.parent / "proto"
        out = HERE / "entente_client" / "_generated"
        if (proto / _codegen.PROTO_FILES[0]).is_file():
            _codegen.generate(proto, out)
        elif not (out / "entente" / "v1" / "intel_pb2.py").is_file():
            raise SystemExit(f"entente_client: no stubs and no proto/ at {proto}")
        super().run()
        # The stubs are data of the package: copy the tree as it is.
        target = Path(self.build_lib) / "entente_client" / "_generated"
        self.copy_tree(str(out), str(target))


setup(cmdclass={"build_py": BuildWithStubs})
