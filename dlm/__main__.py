"""`python -m dlm generate ...`: one generation in process, text or JSON out.

    python -m dlm generate --prompt 'def fib(n):' --mode ar            # the PyTorch engine
    python -m dlm generate --engine build/engines/default-<hash> ...   # a built engine

`--engine DIR` runs the engine folder `python -m export` built (`make engine`: the one
`make serve` serves) through the same factory as the server (`dlm.engines.load_engine`), so
that in-process and served figures (`--json`: seconds, forward passes) can be compared."""

from __future__ import annotations

import argparse
import json
import sys
import time

from dlm import schema
from dlm.engines import DTYPES
from dlm.pipeline import DEFAULT_MODEL, Pipeline
from dlm.sampling import RequestError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dlm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a continuation of a prompt")
    g.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder (HF layout)")
    g.add_argument("--prompt", required=True)
    k = g.add_argument_group("generation knobs (default: the model's generation_config)")
    schema.add_arguments(k)
    g.add_argument(
        "--engine",
        default=None,
        help="engine folder with manifest.json (python -m export); default: the PyTorch engine",
    )
    g.add_argument("--device", default="cpu")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="the PyTorch engine's weights and KV (auto: bf16 on a GPU, fp32 on the CPU)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        pipe = Pipeline.load(args.model, args.device, engine_dir=args.engine, dtype=args.dtype)
        knobs = schema.from_arguments(args)
        stops = knobs.pop("stop_words")
        fields = {schema.BY_NAME[name].field: value for name, value in knobs.items()}
        req = pipe.request(args.prompt, stop_words=stops, **fields)
    except (RequestError, ValueError, FileNotFoundError) as e:
        if isinstance(e, RequestError):  # request field -> the flag that sets it
            field = str(e).split("=")[0].split(":")[0].strip()
            print(f"error: {schema.flag_of(field)}: {e}", file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = pipe.generate([req])[0]
    seconds = time.perf_counter() - t0
    text = pipe.tokenizer.decode(res.token_ids)
    if args.json:
        print(
            json.dumps(
                {
                    "text": text,
                    "token_ids": res.token_ids,
                    "num_forward_passes": res.num_forward_passes,
                    "num_output_tokens": res.num_output_tokens,
                    "finish_reason": res.finish_reason,
                    "mode": req.mode,
                    "engine": type(pipe.engine).__name__,
                    "seconds": round(seconds, 4),
                }
            )
        )
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
