"""One AR pass at a long context, in process and through the real tritonserver, against the
weight-read floor.

    python -m benchmarks.served_pass --preset nemotron-labs-diffusion-8b --device cuda
    python -m benchmarks.served_pass --model models/default --device cpu --context 512

1. the model: --model DIR, or --preset P with random weights made on the device in the served
   dtype and saved once under build/served_pass/ (`gpu_harness.random_checkpoint`: its BPE
   tokenizer, trained on a little stdlib, is at most 65,536 tokens, which becomes the vocabulary);
2. in process: the PyTorch engine as `dlm` serves it (`load_engine`: bf16 and CUDA graphs on a
   GPU) runs an AR request with a prompt of --context tokens for --tokens tokens, and the same
   request for one token; one AR pass = the difference / (tokens - 1): the prefill cancels out;
3. through Triton: the same two requests over gRPC, streamed (`--stream-interval-ms 0`: an AR
   step is one response: every token also crosses postprocessing and the client) and with one
   response; the same
   difference, and the median gap between streamed responses;
4. the floor: the weights a pass reads (all but the embedding table) / memory bandwidth (the
   data sheet on a GPU, a measured copy on a CPU), each time against it.
Medians of --repeats runs a side, the sides alternating. Prints markdown. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.cpu_precision import copy_bandwidth
from benchmarks.gpu_harness import peak_bandwidth, random_checkpoint, weight_bytes_per_pass
from dlm.cost import cpu_name
from dlm.engines import TORCH_DTYPES, load_engine, served_defaults, torch_dtype
from dlm.pipeline import Pipeline
from dlm.sampling import Limits, generate
from dlm.tokenizer import TextTokenizer
from dlm.train.sources import stdlib_dir


def long_prompt(tok: TextTokenizer, tokens: int) -> str:
    """Text of about `tokens` tokens (the standard library's own source)."""
    ids: list[int] = []
    for f in sorted(stdlib_dir().glob("*.py")):
        ids += tok.encode(f.read_text(errors="replace"))
        if len(ids) >= tokens:
            break
    return tok.decode(ids[:tokens])


def in_process(pipe: Pipeline, prompt: str, tokens: int, end_id: int) -> tuple[float, int]:
    """(seconds, tokens) of one AR request (generate syncs with the device every step)."""
    request = pipe.request(prompt, max_tokens=tokens, mode="ar", end_id=end_id)
    t0 = time.perf_counter()
    (result,) = generate(pipe.engine, [request], pipe.limits)
    return time.perf_counter() - t0, result.num_output_tokens


def served(
    client, prompt: str, tokens: int, end_id: int, stream: bool, gaps: list[float]
) -> tuple[float, int]:
    """(seconds, tokens) of one AR request through Triton; streamed, the gaps between its
    responses go to `gaps`."""
    arrivals: list[float] = []
    t0 = time.perf_counter()
    got = client.generate(
        prompt,
        tokens,
        lambda u: arrivals.append(time.perf_counter()),
        mode="ar",
        stream=stream,
        end_id=end_id,
    )
    gaps += [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return time.perf_counter() - t0, got.num_output_tokens


def pass_seconds(run, tokens: int) -> float:
    """One AR pass: (a request of `tokens` - the same of one token) / the passes between."""
    (full, n), (one, _) = run(tokens), run(1)
    if n < 2:
        raise RuntimeError(f"the request ended after {n} token: no AR pass to time")
    return (full - one) / (n - 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.served_pass",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a checkpoint folder")
    src.add_argument("--preset", help="random weights of this preset (dlm.config)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU, fp32 on the CPU) | ...")
    p.add_argument("--context", type=int, default=2048, help="prompt tokens (the cached context)")
    p.add_argument("--tokens", type=int, default=32, help="AR tokens per timed request")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="engine threads (CPU; 0: the default)")
    args = p.parse_args(argv)
    dtype = torch_dtype(args.dtype, args.device)
    model = Path(args.model) if args.model else None
    if model is None:
        out = Path("build") / "served_pass" / f"{args.preset}-{dtype}"
        t0 = time.perf_counter()
        weights = getattr(torch, TORCH_DTYPES[dtype])
        model = random_checkpoint(args.preset, out, args.device, weights)
        print(f"# random {args.preset} in {dtype}: {model} ({time.perf_counter() - t0:.0f} s)")
    from model_repository.local_server import LocalServer

    engine = load_engine(model, None, args.device, args.threads, dtype)
    tok = TextTokenizer(model)
    limits = Limits(max_prompt_tokens=args.context + 64, max_output_tokens=args.tokens)
    pipe = Pipeline(engine, tok, served_defaults(model, None), limits)
    prompt = long_prompt(tok, args.context)
    context = len(tok.encode(prompt))
    end_id = engine.config.mask_token_id  # a token no AR step of a trained model picks: no eos
    weight_bytes = weight_bytes_per_pass(engine.model)
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(args.device))
        bandwidth, source = peak_bandwidth(name)
    else:
        name, bandwidth = cpu_name(), copy_bandwidth()
        source = f"{bandwidth / 1e9:.1f} GB/s (a 512 MiB copy, read + write, measured here)"
    floor = weight_bytes / bandwidth if bandwidth else None
    print(
        f"# AR pass at {context} cached tokens: {model}, {dtype}, {name}\n\n"
        f"- weights read per pass {weight_bytes / 1e9:.2f} GB; bandwidth {source}; floor "
        + (f"{floor * 1e3:.2f} ms" if floor else "none")
        + f"\n- {args.tokens} AR tokens per request, {args.repeats} runs a side alternating\n"
    )
    fill = ["--backend", "torch", "--device", args.device, "--dtype", args.dtype]
    fill += ["--threads", str(args.threads), "--max-prompt-tokens", str(limits.max_prompt_tokens)]
    fill += ["--max-output-tokens", str(args.tokens)]
    fill += ["--stream-interval-ms", "0"]  # a response per step: the gap between two is a step
    from client.api import GrpcClient

    with LocalServer(model, Path(tempfile.mkdtemp(prefix="dlm-pass-")), fill, 900) as server:
        client = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=600)
        gaps: list[float] = []
        sides = {
            "in process": lambda n: in_process(pipe, prompt, n, end_id),
            "through Triton, streamed": lambda n: served(client, prompt, n, end_id, True, gaps),
            "through Triton, one response": lambda n: served(
                client, prompt, n, end_id, False, gaps
            ),
        }
        for run in sides.values():
            pass_seconds(run, 4)  # warm-up: kernels chosen, graphs captured, shapes seen
        gaps.clear()
        runs: dict[str, list[float]] = {side: [] for side in sides}
        for r in range(args.repeats):
            for side in list(sides)[:: 1 if r % 2 == 0 else -1]:  # ABC CBA ...
                runs[side].append(pass_seconds(sides[side], args.tokens))
        client.close()
    print("| side | AR pass ms (median) | runs | x floor |")
    print("|---|---|---|---|")
    rows = {**runs, "through Triton, gap between streamed responses": [statistics.median(gaps)]}
    for side, xs in rows.items():
        ms = statistics.median(xs) * 1e3
        ratio = f"{ms / (floor * 1e3):.2f}" if floor else "n/a"
        print(f"| {side} | {ms:.2f} | {', '.join(f'{x * 1e3:.2f}' for x in xs)} | {ratio} |")
    process = statistics.median(runs["in process"])
    for side in ("through Triton, streamed", "through Triton, one response"):
        print(
            f"\n{side} / in process: {statistics.median(runs[side]) / process:.2f}x the pass time"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
