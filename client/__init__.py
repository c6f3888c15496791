"""Clients of the `ensemble` model over tritonclient gRPC streaming or Triton's HTTP generate
endpoints: `python -m client --help`, and `client.api` for Python (see README.md)."""

from client.api import ClientError, GrpcClient, HttpClient, Result, Update

__all__ = ["ClientError", "GrpcClient", "HttpClient", "Result", "Update"]
