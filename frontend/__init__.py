"""The OpenAI-compatible front door and the playground page (`python -m frontend`).

A FastAPI server that talks to a running Triton over gRPC; no torch in it. `make serve` starts
it beside tritonserver on 127.0.0.1:9000.
"""
