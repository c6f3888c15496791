"""The PyTorch engine's KV cache: preallocated slots, written once per token, read in place.

`SlotCache` holds two tensors [L, slots, Hkv, capacity, D] on the engine's device and in its
dtype; a sequence owns one slot while it lives, and its length is all a rollback or a release
changes. Both dimensions grow by doubling when a sequence finds no free slot or a pass reaches
past the capacity (up to the model's context: 262,144 positions for the 8B preset would be 18 GB
a slot in bf16, so a slot starts at FIRST_CAPACITY); serving's limits keep the pool at its
first size or one doubling. `SlotPass` is one pass's view of it, the K/V layout that
`DiffusionLM.run` attends through (the other is `dlm.model.ConcatKV`): in each layer the pass's
new keys/values are written into their rows' slots right after the cached ones (the valid
tokens only, one indexed copy per tensor), then the rows' slots up to the longest row are the
attention's keys. Rows whose slots are consecutive (a batch of one always) are a view of the
cache, so nothing of the past is copied; other batches gather their rows once per layer. GQA
runs in the attention kernel (`enable_gqa`), without repeating K/V. A pass that does not write
(a diffusion denoise pass) leaves the length as it was: what it wrote past it is overwritten
later, never read.

Against `ConcatKV` (what the ONNX graph does): no gather of every row's past into fresh tensors,
no concatenation of past and new in every layer, no repeated K/V for GQA, no copy when one
sequence outgrows its storage (the pool copies only when it doubles).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dlm.config import ModelConfig

FIRST_SLOTS = 8  # slots allocated at first; doubled whenever a sequence finds none free
FIRST_CAPACITY = 1024  # positions a slot holds at first (at most the model's context)


class SlotCache:
    def __init__(
        self,
        cfg: ModelConfig,
        device: torch.device,
        dtype: torch.dtype,
        slots: int = FIRST_SLOTS,
        scratch: bool = False,
    ) -> None:
        """scratch: one more slot, never a sequence's, that a padded pass (`PaddedSlotPass`)
        writes its padding tokens into."""
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.capacity = min(cfg.max_position, FIRST_CAPACITY)
        self.k = self._zeros(slots + scratch, self.capacity)
        self.v = self._zeros(slots + scratch, self.capacity)
        self.free = list(range(slots))
        self.scratch = slots if scratch else None
        self.slot: dict[int, int] = {}  # seq_id -> its slot
        self.length: dict[int, int] = {}  # seq_id -> cached positions

    def _zeros(self, slots: int, capacity: int) -> torch.Tensor:
        # zeros, never uninitialised memory: a masked-out NaN would still leak through 0 x NaN
        c = self.cfg
        shape = (c.num_layers, slots, c.num_kv_heads, capacity, c.head_dim)
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    def cached(self, seq_id: int) -> int:
        return self.length.get(seq_id, 0)

    def truncate(self, seq_id: int, length: int) -> None:
        if seq_id in self.length:
            self.length[seq_id] = min(self.length[seq_id], length)

    def commit(self, seq_id: int, length: int) -> None:
        """The sequence's first `length` positions hold its keys/values."""
        self.length[seq_id] = length

    def slots_of(self, seq_ids: list[int]) -> list[int]:
        """The slot of each sequence, a free one for a new sequence (more slots if none is)."""
        for sid in seq_ids:
            if sid not in self.slot:
                if not self.free:
                    self._grow()
                self.slot[sid] = self.free.pop(0)
                self.length.setdefault(sid, 0)
        return [self.slot[sid] for sid in seq_ids]

    def _grow(self) -> None:
        old = self.slots  # the scratch slot, if any, keeps its index
        self.k = torch.cat([self.k, self._zeros(old, self.capacity)], dim=1)
        self.v = torch.cat([self.v, self._zeros(old, self.capacity)], dim=1)
        self.free.extend(range(old, 2 * old))

    def reserve(self, end: int) -> None:
        """Room for positions [0, end) in every slot (`end` is checked against the context)."""
        if end > self.capacity:
            more = min(self.cfg.max_position, max(2 * self.capacity, end)) - self.capacity
            self.k = torch.cat([self.k, self._zeros(self.slots, more)], dim=3)
            self.v = torch.cat([self.v, self._zeros(self.slots, more)], dim=3)
            self.capacity += more

    def hold(self, slots: int, positions: int) -> None:
        """Room for `slots` sequences of `positions` each (at most the model's context), taken
        at once while the cache is empty: a server on a GPU takes its KV memory when it loads,
        and what its CUDA graphs captured stays valid (`dlm.graphs`: a cache that grows has
        new tensors)."""
        if self.slot:
            raise RuntimeError("SlotCache.hold: sequences hold slots already")
        scratch = self.scratch is not None
        slots = max(slots, self.slots - scratch)
        self.capacity = max(self.capacity, min(self.cfg.max_position, positions))
        self.k = self._zeros(slots + scratch, self.capacity)
        self.v = self._zeros(slots + scratch, self.capacity)
        self.free = list(range(slots))
        self.scratch = slots if scratch else None

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def release(self, seq_id: int) -> None:
        if seq_id in self.slot:
            self.free.append(self.slot.pop(seq_id))
            self.free.sort()  # the lowest free slots first: batches stay consecutive more often
        self.length.pop(seq_id, None)

    def __len__(self) -> int:
        return len(self.slot)


class SlotPass:
    """One pass over a `SlotCache`: rows in `slots`, each with `past_len` cached positions and
    `n_new` valid new tokens, host arrays (the indices are made on the host and reach the device
    in one copy, with no sync back); the K/V layout `DiffusionLM.run` attends through."""

    def __init__(
        self,
        cache: SlotCache,
        slots: list[int],
        past_len: np.ndarray,
        n_new: np.ndarray,
        dense: bool = False,
    ) -> None:
        """dense: every query sees every key (see `dense`): the attention then gets no mask,
        which lets a fused kernel run (flash attention on a GPU)."""
        self.cache, self.dense = cache, dense
        self.end = int((past_len + n_new).max())  # the keys: positions [0, end) of every row
        row, token = np.nonzero(np.arange(n_new.max())[None, :] < n_new[:, None])  # valid tokens
        b, n = len(slots), len(row)  # n >= b: every row has a token

        def per_row(x) -> np.ndarray:
            return np.pad(np.asarray(x, np.int64), (0, n - b))

        where = np.stack([row, token, np.asarray(slots)[row], past_len[row] + token])
        index = torch.from_numpy(np.concatenate([where, [per_row(past_len), per_row(slots)]]))
        index = index.to(cache.device)
        self.row, self.token, self.slot_of_token, self.position = index[:4]
        self.new_start = index[4, :b]  # a row's new tokens go right after its cache
        first = slots[0]
        self.consecutive = slots == list(range(first, first + b))
        self.rows = slice(first, first + b) if self.consecutive else index[5, :b]

    def keys(self, new: int) -> int:
        return self.end

    def attend(self, layer: int, q, k, v, mask: torch.Tensor) -> torch.Tensor:
        cache_k, cache_v = self.cache.k[layer], self.cache.v[layer]  # [S, Hkv, capacity, D]
        at = (self.slot_of_token, slice(None), self.position)
        cache_k[at] = k[self.row, :, self.token]  # [N, Hkv, D]
        cache_v[at] = v[self.row, :, self.token]
        keys, values = (c[:, :, : self.end][self.rows] for c in (cache_k, cache_v))
        return F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=None if self.dense else mask[:, None],
            enable_gqa=q.shape[1] != k.shape[1],
        )


class PaddedSlotPass(SlotPass):
    """A `SlotPass` of fixed shapes whose indices are made on the device from device tensors
    (what a CUDA graph replays, `dlm.graphs`: no host arrays, no shape that depends on the data).
    slots, past_len, n_new [B]: padding rows sit in the cache's scratch slot with one new token.
    All B x `tokens` positions write, the padding ones at the scratch slot's first position;
    the keys are the first `keys` positions of every row's slot, masked past the row's length
    as in any ragged batch."""

    def __init__(self, cache: SlotCache, slots, past_len, n_new, keys: int, tokens: int) -> None:
        self.cache, self.dense, self.end = cache, False, keys
        b, dev = slots.shape[0], slots.device
        self.row = torch.arange(b, device=dev).repeat_interleave(tokens)
        self.token = torch.arange(tokens, device=dev).repeat(b)
        valid = self.token < n_new[self.row]
        self.slot_of_token = torch.where(valid, slots[self.row], cache.scratch)
        self.position = torch.where(valid, past_len[self.row] + self.token, 0)
        self.new_start, self.rows, self.consecutive = past_len, slots, False


def dense(feed: dict[str, np.ndarray]) -> bool:
    """Whether every query of a packed batch sees every key of its pass: rows of one length,
    cache and new tokens alike, no fork, each either one token (an AR step) or all
    bidirectional (a diffusion denoise pass)."""
    n, past = feed["n_new"], feed["past_len"]
    t = feed["input_ids"].shape[1]
    one_shape = bool((n == t).all() and (past == past[0]).all())
    return one_shape and not feed["fork"].any() and (t == 1 or bool((feed["tail"] == n).all()))
