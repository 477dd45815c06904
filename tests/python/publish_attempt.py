"""Tries Intel.Publish through entente_client's connection, as a read-only client would.

Usage: publish_attempt.py CLIENT_CONFIG VALUE
Sends one GREEN domain item with value VALUE on the raw Intel stub of
entente_client.Client. Prints the gRPC status code name the node answered with (OK when
the publish was accepted) and exits 0; any other failure exits non-zero.
Needs clients/python on PYTHONPATH.
"""

import sys

import grpc

from entente_client import Client
from entente_client._stubs import bundle_pb2, intel_pb2


def main() -> int:
    config, value = sys.argv[1:3]
    item = bundle_pb2.Item(
        tlp=bundle_pb2.TLP_GREEN,
        tags=["publish-attempt"],
        indicator=bundle_pb2.Indicator(indicator_type="domain", value=value),
    )
    with Client.from_config_file(config) as client:
        try:
            client.intel.Publish(
                iter([intel_pb2.PublishRequest(items=[item])]), timeout=client.timeout
            )
        except grpc.RpcError as error:
            print(error.code().name)
            print(error.details(), file=sys.stderr)
            return 0
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
