"""Calls grpc.health.v1.Health/Check on an Entente node with a client certificate.

Usage: health_check.py ADDRESS NODE_ID CA_CERT CLIENT_CERT CLIENT_KEY SERVICE
Prints the serving status name, or the gRPC error code name, and exits 0 either way;
any other failure exits non-zero.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    address, node_id, ca, cert, key, service = sys.argv[1:7]
    with open(ca, "rb") as f:
        root = f.read()
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private_key = f.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private_key, certificate_chain=chain
    )
    # The node is addressed by IP; its certificate names it by node id.
    options = [("grpc.ssl_target_name_override", node_id)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=20)
        except grpc.RpcError as error:
            print(error.code().name)
            return 0
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
