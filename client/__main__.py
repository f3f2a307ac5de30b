"""``python -m client health ADDRESS``: a probe of the standard gRPC health service.

Prints the status and exits 0 when the server is SERVING, 1 otherwise (for container HEALTHCHECKs).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["health", "main"]


def health(address: str, service: str, timeout: float) -> str:
    """The health status name of ``service`` ("" is the whole server) at ``address``."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return f"UNREACHABLE ({error.code().name}: {error.details()})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client")
    commands = parser.add_subparsers(dest="command", required=True)
    probe = commands.add_parser("health", help="check a server's health service")
    probe.add_argument("address", help="HOST:PORT")
    probe.add_argument("--service", default="", help="a service name; empty for the whole server")
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    status = health(args.address, args.service, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
