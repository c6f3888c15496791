"""OrtEngine with small steps on a spinning pool (spin_rows=2) against one that never spins
(spin_rows=0), the two alternating: ms per engine step over 128 cached positions, rows x new
tokens (median of 7 x 15 steps each, 3 rounds), then tokens/s per mode at batch 1."""

import statistics
import time

from dlm import engines
from dlm.engine import PassRequest
from dlm.sampling import GenerationRequest, generate
from dlm.tokenizer import TextTokenizer
from dlm.train.prompts import held_out_prompts
from export import engine_dir
from export.ort_engine import OrtEngine

build = engine_dir("models/default")
cfg = engines.model_config("models/default")
onnx = build / engines.read_manifest(build)["files"]["onnx"]
eng = {n: OrtEngine(onnx, cfg, threads=2, spin_rows=n) for n in (2, 0)}
SHAPES = ((1, 1), (1, 4), (1, 12), (2, 12), (4, 4), (16, 1))
for e in eng.values():
    e.step([PassRequest(s, 0, list(range(5, 133)), 0, True, 1) for s in range(16)])
times = {n: {s: [] for s in SHAPES} for n in eng}
for r in range(3):
    for n in eng if r % 2 == 0 else reversed(list(eng)):
        for rows, t in SHAPES:
            passes = [
                PassRequest(s, 128, [7] * t, t if t > 1 else 0, False, t) for s in range(rows)
            ]
            for _ in range(5):
                eng[n].step(passes)
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(15):
                    eng[n].step(passes)
                times[n][rows, t].append((time.perf_counter() - t0) / 15 * 1e3)
print("| spin_rows | " + " | ".join(f"{r}x{t}" for r, t in SHAPES) + " |")
print("|---|" + "---|" * len(SHAPES))
for n in eng:
    print(f"| {n} | " + " | ".join(f"{statistics.median(times[n][s]):.2f}" for s in SHAPES) + " |")
print(
    "| 0 / 2 | "
    + " | ".join(
        f"{statistics.median(times[0][s]) / statistics.median(times[2][s]):.2f}" for s in SHAPES
    )
    + " |"
)
tok = TextTokenizer("models/default")
prompts = [tok.encode(x.prompt) for x in held_out_prompts(8)]
print("\n| mode | spin_rows=2 tok/s | spin_rows=0 tok/s | ratio | same tokens |")
print("|---|---|---|---|---|")
for mode, block in (("ar", None), ("self_spec", 4), ("diffusion", None)):
    stats, outs = {n: 0.0 for n in eng}, {}
    for r in range(2):
        for n in eng if r % 2 == 0 else reversed(list(eng)):
            t0, runs = time.perf_counter(), []
            for x in prompts:
                kw = {"block_length": block} if block else {}
                runs += generate(
                    eng[n], [GenerationRequest(list(x), mode=mode, max_tokens=64, **kw)]
                )
            stats[n] += sum(r.num_output_tokens for r in runs) / (time.perf_counter() - t0) / 2
            outs[n] = [r.token_ids for r in runs]
    name = mode + (f" block {block}" if block else "")
    print(
        f"| {name} | {stats[2]:.1f} | {stats[0]:.1f} | {stats[2] / stats[0]:.2f} "
        f"| {outs[2] == outs[0]} |"
    )
