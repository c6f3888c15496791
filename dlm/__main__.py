"""`python -m dlm generate ...`: one generation in process, text or JSON out."""

from __future__ import annotations

import argparse
import json
import sys
import time

from dlm.pipeline import DEFAULT_MODEL, Pipeline
from dlm.sampling import MODES, RequestError

_FLAGS = {"text_input": "prompt", "random_seed": "seed", "stop_words": "stop"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dlm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a continuation of a prompt")
    g.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder (HF layout)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--mode", choices=MODES, default=None, help="default: the model's")
    g.add_argument("--max-tokens", type=int, default=None)
    g.add_argument("--block-length", type=int, default=None)
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--steps", type=int, default=None, help="fixed passes per block (diffusion)")
    g.add_argument(
        "--factor",
        type=float,
        default=None,
        help="diffusion by Fast-dLLM's factor rule instead of the threshold: commit the n "
        "surest masked positions while (n + 1) * (1 - confidence_n) < factor",
    )
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], help="stop word (repeatable)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        pipe = Pipeline.load(args.model, device=args.device)
        req = pipe.request(
            args.prompt,
            stop_words=args.stop,
            mode=args.mode,
            max_tokens=args.max_tokens,
            block_length=args.block_length,
            threshold=args.threshold,
            steps=args.steps,
            factor=args.factor,
            temperature=args.temperature,
            seed=args.seed,
        )
    except (RequestError, ValueError, FileNotFoundError) as e:
        if isinstance(e, RequestError):  # request field -> the flag that sets it
            field = str(e).split("=")[0].strip()
            flag = _FLAGS.get(field, field.replace("_", "-"))
            print(f"error: --{flag}: {e}", file=sys.stderr)
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
                    "seconds": round(seconds, 4),
                }
            )
        )
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
