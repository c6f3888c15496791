"""`python -m client`: generate through the server and watch the block being denoised.

Streams over gRPC by default (tritonclient); `--http` uses Triton's HTTP generate endpoints.
On a terminal the live line shows the end of the committed text and, highlighted, the block
being denoised with one placeholder per masked position; then the final text and statistics
(tokens, forward passes, tokens per forward, seconds, tokens/s). Ctrl-C cancels the request.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys

from client.api import ClientError, GrpcClient, HttpClient, Update
from dlm import schema


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--url", default=None, help="host:port (default 127.0.0.1:8001, or :8000 " "with --http)"
    )
    p.add_argument("--model", default="ensemble", help="Triton model name")
    p.add_argument("--http", action="store_true", help="HTTP generate endpoints, not gRPC")
    p.add_argument(
        "--generate-endpoint",
        choices=("generate", "generate_stream"),
        default=None,
        help="with --http: which endpoint (default: generate_stream when streaming)",
    )
    p.add_argument(
        "--no-stream", action="store_true", help="one response with the whole answer (no live view)"
    )
    p.add_argument("--no-block", action="store_true", help="do not show the block live")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per response")
    k = p.add_argument_group("generation knobs (default: the model's generation_config)")
    schema.add_arguments(k, max_tokens=64)
    return p


class LiveLine:
    """One terminal line, redrawn: the committed text's tail, then the block in reverse video."""

    def __init__(self, out=sys.stderr) -> None:
        self.out, self.text = out, ""

    def __call__(self, u: Update) -> None:
        self.text += u.text
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        block = _visible(u.block_text)
        tail = _visible(self.text)[-max(0, width - len(block)) :] if width > len(block) else ""
        self.out.write(f"\r\x1b[K{tail}\x1b[7m{block[:width]}\x1b[0m")
        self.out.flush()

    def clear(self) -> None:
        self.out.write("\r\x1b[K")
        self.out.flush()


def _visible(s: str) -> str:
    return s.replace("\n", "\u23ce").replace("\t", "\u21e5")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stream = not args.no_stream
    live = stream and not args.no_block and not args.json and sys.stderr.isatty()
    knobs = schema.from_arguments(args)
    max_tokens = knobs.pop("max_tokens")
    knobs.update(stream=stream, return_block_text=True if live else None)
    on_update, line = None, None
    if live:
        on_update = line = LiveLine()
    elif stream and not args.json:

        def on_update(u: Update) -> None:
            sys.stdout.write(u.text)
            sys.stdout.flush()

    try:
        if args.http:
            client = HttpClient(args.url or "127.0.0.1:8000", args.model, args.timeout)
            result = client.generate(
                args.prompt, max_tokens, on_update, endpoint=args.generate_endpoint, **knobs
            )
        else:
            client = GrpcClient(args.url or "127.0.0.1:8001", args.model, args.timeout)
            result = client.generate(args.prompt, max_tokens, on_update, **knobs)
    except ClientError as e:
        if line:
            line.clear()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the stream is closed with cancel_requests on the way out
        if line:
            line.clear()
        print("cancelled", file=sys.stderr)
        return 130
    if args.json:
        out = {k: v for k, v in dataclasses.asdict(result).items() if k != "updates"}
        out.update(
            tokens_per_forward=result.tokens_per_forward, tokens_per_second=result.tokens_per_second
        )
        print(json.dumps(out))
        return 0
    if line:
        line.clear()
    if line or not stream:
        print(result.text)
    else:
        print()
    print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
