"""CUDA graphs of the PyTorch engine's passes: a pass replayed, not launched kernel by kernel.

Eagerly, Python launches every kernel of a pass one after another: on the H200 the 8B preset's
AR step over 2,048 cached tokens took 22.6 ms eager and 10.0 ms as a CUDA graph (3.3 ms is the
weight-read floor; benchmarks/results/gpu_forward_h200.md). A graph has fixed shapes and fixed
addresses, so `PassGraphs` pads each packed batch to a bucket: rows and tokens per row to
ROWS / TOKENS, outputs per row to TOKENS (at most the tokens), keys (the longest row's cache
and new tokens) to a power of two from MIN_KEYS, within the cache's capacity. Padding rows sit
in the cache's scratch slot, padding tokens write there, and keys past a row's length are
masked as in any ragged batch (`dlm.kv.PaddedSlotPass`), so a few graphs serve every pass of a
run: AR steps, drafts and verifications, denoise and commit passes.

A graph's inputs are static buffers: one int64 and one float32 tensor on the device, filled
from pinned host twins by one copy each; its outputs (token and confidence, in one float64
buffer) come back in one device-to-host copy per step. Each shape is captured the first time a
pass needs it (its warm-up runs are that pass itself: writing the same K/V again changes
nothing), each graph in a memory pool of its own: graphs sharing one pool and deleted one by one
failed an allocator assertion in torch 2.11 on the H200 (`benchmarks/gpu_harness.capture`), so
each graph keeps its own pass's activations and logits. Only passes of at most MAX_GRAPH_TOKENS
padded tokens are graphed (the launch-bound ones: a larger pass has more work per kernel), which
bounds a graph's pool (the 8B preset's logits over its 131k vocabulary: 67 MB in bf16 at 256
tokens); at most MAX_GRAPHS shapes are kept, the least recently replayed dropped for a new one
(a long-running server meets new key lengths as its contexts grow). Larger passes run eagerly,
as do batches with penalties. A cache that grows (a new slot, a longer capacity) has new
tensors: the graphs captured over the old ones are dropped.

Off CUDA the same padded pass runs eagerly (`capture=False`): what a graph replays is what the
tests compare with the eager engine, token for token and pass for pass, on any machine. That a
capture of it runs and replays the same tokens needs a GPU: `test_cuda_graphs_give_the_eager_tokens`
and `benchmarks/gpu_forward.py` (section "Real samplers: engine eager vs CUDA graphs") check it.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict

import numpy as np
import torch

from dlm.kv import PaddedSlotPass, SlotCache
from dlm.model import DiffusionLM
from dlm.passes import run_pass

log = logging.getLogger(__name__)

ROWS = (1, 2, 4, 8, 16, 32, 64)  # rows of a batch, padded up to one of these
TOKENS = (1, 2, 4, 8, 16, 32, 64)  # tokens (and outputs) per row, the same
MIN_KEYS = 64  # keys are padded to a power of two, at least this
MAX_GRAPHS = 64  # shapes kept at most; the least recently replayed goes for a new one
MAX_GRAPH_TOKENS = 256  # padded rows x tokens of a graphed pass at most
# The int64 inputs of a graph, in its one buffer: name -> shape, with R rows, T tokens, K outputs.
INT_INPUTS = {
    "input_ids": ("R", "T"),
    "out_index": ("R", "K"),
    "past_len": ("R",),
    "n_new": ("R",),
    "tail": ("R",),
    "fork": ("R",),
    "seed": ("R",),
    "slot": ("R",),
}


def bucket(n: int, sizes: tuple[int, ...]) -> int | None:
    """The smallest size >= n, None when n is larger than all."""
    return next((s for s in sizes if s >= n), None)


class PassGraphs:
    """The padded passes of one engine (model and cache), captured as CUDA graphs if
    `capture`, else run eagerly (see module doc)."""

    def __init__(self, model: DiffusionLM, cache: SlotCache, denoise_step, capture: bool) -> None:
        """denoise_step: the engine's DenoiseStep, told whether a row samples (`sample=`)."""
        if cache.scratch is None:
            raise ValueError("PassGraphs needs a SlotCache with a scratch slot (scratch=True)")
        self.model, self.cache, self.capture = model, cache, capture
        self.denoise_step = denoise_step
        self.graphs: OrderedDict[tuple, Graph] = OrderedDict()  # least recently used first
        self._storage = cache.k.data_ptr()
        self.failed: str | None = None  # why a capture failed: then every pass runs eagerly

    def shape(self, feed: dict[str, np.ndarray]) -> tuple[int, int, int, int, bool] | None:
        """(rows, tokens, outputs, keys, sampling) of the graph that runs this packed batch;
        None when it runs eagerly."""
        b, t = feed["input_ids"].shape
        rows, tokens = bucket(b, ROWS), bucket(t, TOKENS)
        if rows is None or tokens is None or feed["penalty_len"].any():
            return None
        if rows * tokens > MAX_GRAPH_TOKENS:
            return None
        outs = bucket(feed["out_index"].shape[1], TOKENS)
        end = int((feed["past_len"] + feed["n_new"]).max())
        keys = min(max(MIN_KEYS, 1 << (end - 1).bit_length()), self.cache.capacity)
        return rows, tokens, outs, keys, bool((feed["temperature"] > 0).any())

    def run(self, slots: list[int], feed: dict[str, np.ndarray]):
        """(token [B, K], confidence [B, K]) NumPy arrays of the batch, None if it runs eagerly.
        The cache must already hold room for the pass (`SlotCache.reserve`)."""
        key = None if self.failed else self.shape(feed)
        if key is None:
            return None
        if self.cache.k.data_ptr() != self._storage:  # the cache grew: graphs of the old one
            self.graphs.clear()
            self._storage = self.cache.k.data_ptr()
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            return graph.run(slots, feed)
        try:
            graph = Graph(self, *key)
            out = graph.run(slots, feed)  # its first run captures it
        except Exception as e:
            if not self.capture:
                raise
            self.failed = f"{type(e).__name__}: {e}"
            self.graphs.clear()
            log.warning("CUDA graph capture failed (%s); the engine runs eagerly", self.failed)
            return None
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)  # no replay is running: each run syncs
        self.graphs[key] = graph
        return out


class Graph:
    """One padded pass shape: its static buffers, and its CUDA graph once captured."""

    def __init__(self, owner: PassGraphs, rows: int, tokens: int, outs: int, keys: int, sample):
        self.owner, self.keys, self.sample = owner, keys, sample
        device, pinned = owner.cache.device, owner.capture
        sizes = {"R": rows, "T": tokens, "K": outs}
        shapes = {name: tuple(sizes[d] for d in dims) for name, dims in INT_INPUTS.items()}
        total = sum(int(np.prod(s)) for s in shapes.values())
        self.ints = torch.zeros(total, dtype=torch.int64, device=device)
        self.temps = torch.zeros(rows, dtype=torch.float32, device=device)
        self.out = torch.zeros(2, rows, outs, dtype=torch.float64, device=device)
        self.host_ints = torch.zeros(total, dtype=torch.int64, pin_memory=pinned)
        self.host_temps = torch.zeros(rows, dtype=torch.float32, pin_memory=pinned)
        self.host_out = torch.zeros(2, rows, outs, dtype=torch.float64, pin_memory=pinned)
        self.views, self.host_views, at = {}, {}, 0
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            self.views[name] = self.ints[at : at + n].view(shape)
            self.host_views[name] = self.host_ints.numpy()[at : at + n].reshape(shape)
            at += n
        self.graph: torch.cuda.CUDAGraph | None = None

    def forward(self) -> None:
        """The padded pass over the static buffers (what the graph holds)."""
        x = {**self.views, "temperature": self.temps}
        cache = self.owner.cache
        layout = PaddedSlotPass(
            cache, x["slot"], x["past_len"], x["n_new"], self.keys, x["input_ids"].shape[1]
        )
        step = functools.partial(self.owner.denoise_step, sample=self.sample)
        token, confidence, *_ = run_pass(self.owner.model, x, step, penalties=False, kv=layout)
        self.out[0].copy_(token)
        self.out[1].copy_(confidence)

    def run(self, slots: list[int], feed: dict[str, np.ndarray]):
        b, k = feed["out_index"].shape
        t = feed["input_ids"].shape[1]
        host = self.host_views
        self.host_ints.zero_()
        self.host_temps.zero_()
        host["n_new"][:] = 1  # padding rows: one token in the scratch slot (a query sees a key)
        host["slot"][:] = self.owner.cache.scratch
        for name in ("past_len", "n_new", "tail", "fork", "seed"):
            host[name][:b] = feed[name]
        host["slot"][:b] = slots
        host["input_ids"][:b, :t] = feed["input_ids"]
        host["out_index"][:b, :k] = feed["out_index"]
        self.host_temps.numpy()[:b] = feed["temperature"]
        self.ints.copy_(self.host_ints, non_blocking=True)
        self.temps.copy_(self.host_temps, non_blocking=True)
        if not self.owner.capture:
            self.forward()
        else:
            if self.graph is None:
                self.graph = self._capture()
            self.graph.replay()
        self.host_out.copy_(self.out, non_blocking=True)
        if self.owner.capture:
            torch.cuda.current_stream(self.owner.cache.device).synchronize()
        out = self.host_out.numpy()
        return out[0, :b, :k].astype(np.int64), out[1, :b, :k].astype(np.float32)

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (as torch asks before a capture), then capture. Both run
        this very pass: its K/V are written again, the same values."""
        with torch.cuda.device(self.owner.cache.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.forward()
        return graph
