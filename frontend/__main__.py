"""`python -m frontend`: the OpenAI-compatible front door against a running Triton."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from frontend.app import MAX_BODY_BYTES, Settings, create_app

PORT = 9000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m frontend", description=__doc__)
    p.add_argument("--triton", default="127.0.0.1:8001", help="Triton's gRPC address")
    p.add_argument(
        "--model",
        default="models/default",
        help="checkpoint folder (tokenizer, chat template, generation defaults): the one Triton "
        "serves",
    )
    p.add_argument("--model-name", help="the model id clients send (default: the folder's name)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (loopback unless given)"
    )
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument(
        "--api-key",
        default=os.environ.get("DLM_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1/* (default: $DLM_API_KEY)",
    )
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s frontend %(message)s")
    app = create_app(
        Settings(args.triton, args.model, args.model_name, args.api_key, args.max_body_bytes)
    )
    print(
        f"front door: http://{args.host}:{args.port}/ (OpenAI API under /v1) -> Triton "
        f"{args.triton}",
        flush=True,
    )
    # httptools: uvicorn's C HTTP parser; the asyncio loop, which grpc.aio supports
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", http="httptools", loop="asyncio"
    )


if __name__ == "__main__":
    main()
