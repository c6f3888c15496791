"""One ONNX Runtime session, intra-op spinning on or off (argv[2]) plus session config entries
(argv[3:], key=value): ms per pass of 1 row x 1 / 4 / 32 tokens and 16 rows x 1 token over 128
cached positions.

    PYTHONPATH=. python probe_spin.py build/engines/<engine>/denoiser.onnx 0|1 [key=value ...]
"""

import statistics
import sys
import time

import onnxruntime as ort

from dlm.engines import model_config
from export import parity

cfg = model_config("models/default")
opts = ort.SessionOptions()
opts.add_session_config_entry("session.intra_op.allow_spinning", sys.argv[2])
opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
for kv in sys.argv[3:]:
    k, v = kv.split("=")
    opts.add_session_config_entry(k, v)
opts.intra_op_num_threads = 2
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
names = [o.name for o in s.get_outputs()]
out = []
for rows, t in ((1, 1), (1, 4), (1, 32), (16, 1)):
    n = rows
    case = parity.PassCase("x", (128,) * n, (t,) * n, (0 if t == 1 else t,) * n, (t,) * n)
    feed = parity.case_inputs(cfg, case)
    for _ in range(20):
        s.run(names, feed)
    ts = []
    for _ in range(9):
        t0 = time.perf_counter()
        for _ in range(20):
            s.run(names, feed)
        ts.append((time.perf_counter() - t0) / 20 * 1e3)
    out.append(f"{rows}x{t}: {statistics.median(ts):.3f}")
print(f"spin={sys.argv[2]} {sys.argv[3:]}: " + ", ".join(out), flush=True)
