"""Load a DiffusionGemma checkpoint folder (as `save_pretrained` writes it) into `DiffusionGemma`.

Checkpoint names are ours with a prefix: `model.encoder.language_model.*` for the encoder,
`model.decoder.*` for the decoder, `lm_head.weight`. With tied weights transformers writes one name
of each shared pair (the decoder's) and each side's `layer_scalar`; either name is accepted. The
vision tower (`model.encoder.vision_tower.*`, `model.encoder.embed_vision.*`) is skipped unread;
its size is logged. A missing, mis-shaped or unknown tensor is an error that names it.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from dlm.checkpoint import INDEX, SINGLE
from dlm.gemma.config import GemmaConfig
from dlm.gemma.model import DiffusionGemma
from dlm.hf_config import CheckpointError

log = logging.getLogger(__name__)

PREFIX = {"encoder": "model.encoder.language_model.", "decoder": "model.decoder."}
VISION = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")


def checkpoint_names(name: str, tied: bool) -> list[str]:
    """The checkpoint names that may hold one of our tensors; the one transformers writes first."""
    side, _, rest = name.partition(".")
    if side not in PREFIX:
        return [name]  # lm_head.weight
    shared = tied and not rest.endswith("layer_scalar") and not rest.startswith("self_cond")
    if not shared:
        return [PREFIX[side] + rest]
    return [PREFIX["decoder"] + rest, PREFIX["encoder"] + rest]


def _headers(folder: Path) -> dict[str, tuple[Path, dict]]:
    """Checkpoint tensor name -> (file, its safetensors header entry: dtype, shape, offsets)."""
    if (folder / INDEX).exists():
        weight_map = json.loads((folder / INDEX).read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{folder / INDEX}: no 'weight_map' object")
        files = sorted({folder / f for f in weight_map.values()})
    elif (folder / SINGLE).exists():
        files = [folder / SINGLE]
    else:
        raise CheckpointError(f"{folder}: no {SINGLE} or {INDEX}")
    out = {}
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{f}: shard listed in {INDEX} is missing")
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        header.pop("__metadata__", None)
        out.update({name: (f, entry) for name, entry in header.items()})
    return out


def read_config(folder: str | Path) -> GemmaConfig:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.json (is it a checkpoint folder?)")
    return GemmaConfig.from_hf(json.loads(path.read_text()))


def load(
    folder: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[GemmaConfig, DiffusionGemma]:
    """The config and the model (eval mode, weights in `dtype`) of a checkpoint folder."""
    folder = Path(folder)
    cfg = read_config(folder)
    with torch.device("meta"):
        model = DiffusionGemma(cfg)
    expected = model.state_dict()  # shared weights appear under both sides' names
    headers = _headers(folder)
    vision = [n for n in headers if n.startswith(VISION)]
    if vision:
        nbytes = sum(
            headers[n][1]["data_offsets"][1] - headers[n][1]["data_offsets"][0] for n in vision
        )
        log.info("%s: skipped %d vision tensors (%.1f MB)", folder, len(vision), nbytes / 1e6)
    source: dict[str, str] = {}  # our name -> checkpoint name
    known: set[str] = set(vision)
    for ours, want in expected.items():
        names = checkpoint_names(ours, cfg.tie_word_embeddings)
        known.update(names)
        found = next((n for n in names if n in headers), None)
        if found is None:
            also = f" (or {names[1]!r})" if len(names) > 1 else ""
            raise CheckpointError(f"{folder}: missing tensor {names[0]!r}{also}")
        shape = tuple(headers[found][1]["shape"])
        if shape != tuple(want.shape):
            raise CheckpointError(
                f"{headers[found][0].name}: tensor {found!r} has shape {shape}, expected "
                f"{tuple(want.shape)} for this config"
            )
        source[ours] = found
    unexpected = sorted(set(headers) - known)
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensors {unexpected[:5]}")
    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[Path, set[str]] = {}
    for name in set(source.values()):
        by_file.setdefault(headers[name][0], set()).add(name)
    for f, names in by_file.items():
        with safe_open(f, "pt") as st:
            tensors.update({n: st.get_tensor(n).to(dtype) for n in names})
    model.load_state_dict({ours: tensors[n] for ours, n in source.items()}, assign=True)
    model.build_rope()
    return cfg, model.eval()
