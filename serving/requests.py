"""Text and knobs in, a validated request out (the `preprocessing` model), and the request's
form on the way to the `dlm` model: `input_ids` INT32 [n] plus a JSON string of the knobs.

Defaults come from the model folder's `generation_config.json` exactly as in
`python -m dlm generate` (both go through `Pipeline.request`), so a request gives the same
tokens in process and through the server.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from dlm import schema
from dlm.config import ModelConfig
from dlm.engines import model_config, served_defaults
from dlm.gemma.config import GemmaConfig
from dlm.pipeline import Pipeline
from dlm.sampling import GenerationRequest, Limits, RequestError
from dlm.tokenizer import TextTokenizer

# Request fields that travel as JSON (prompt_ids travel as a tensor).
FIELDS = tuple(f.name for f in dataclasses.fields(GenerationRequest) if f.name != "prompt_ids")


@dataclasses.dataclass
class _ConfigOnly:
    """What `Pipeline.request` needs of an engine: its config (no weights here)."""

    config: ModelConfig | GemmaConfig


# A BPE token rarely spans more than a few bytes: a prompt above this many bytes per allowed token
# is refused before tokenising it (a 1 MB prompt costs no tokeniser time).
MAX_BYTES_PER_TOKEN = 32


class Preprocessor:
    def __init__(
        self,
        folder: str | Path,
        limits: Limits | None = None,
        chat_template: bool = False,
        build: str | Path | None = None,
    ) -> None:
        """`build`: the folder of the engine served (`serving.engine.served_build`), whose
        manifest holds the block lengths chosen for it; None: the folder's defaults alone."""
        self.config = model_config(folder)
        self.tokenizer = TextTokenizer(folder)
        limits = limits or Limits()
        self.max_prompt_tokens = limits.max_prompt_tokens
        self.max_prompt_bytes = limits.max_prompt_tokens * MAX_BYTES_PER_TOKEN
        self.pipeline = Pipeline(
            _ConfigOnly(self.config),
            self.tokenizer,
            served_defaults(folder, build),
            limits,
        )
        if chat_template and not self.tokenizer.chat_template:
            raise ValueError(f"apply_chat_template=true but {folder} has no chat_template")
        self.chat_template = chat_template

    def __call__(
        self, text: str | bytes, stop_words: list | None = None, **knobs
    ) -> GenerationRequest:
        """A validated request; knobs that are None take the model's defaults.

        Raises RequestError naming the field (text_input, max_tokens, mode, ...).
        """
        size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "replace"))
        if size > self.max_prompt_bytes:
            raise RequestError(
                f"text_input=<{size} bytes>: must be at most {self.max_prompt_bytes} bytes "
                f"(and {self.max_prompt_tokens} tokens)"
            )
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(f"text_input: must be UTF-8 text ({e})") from None
        stops = []
        for s in stop_words or []:
            try:
                stops.append(s.decode("utf-8") if isinstance(s, bytes) else str(s))
            except UnicodeDecodeError as e:
                raise RequestError(f"stop_words: must be UTF-8 text ({e})") from None
        if self.chat_template and text:
            text = self.tokenizer.apply_chat_template(text)
        return self.pipeline.request(text, stop_words=stops, **knobs)


# How the responses of a request go, beside its knobs on the wire (all False unless given):
# stream; block_views (the rest of the block being denoised); ensemble: it came through the
# ensemble, whose cancellations arrive in the dlm instance's inbox (serving.cancel), so the
# request's own is_cancelled(), an IPC to the server that never says yes there, is not asked.
DELIVERY = ("stream", "block_views", "ensemble")


def served_limits(params: dict[str, str]) -> Limits:
    """The deployment's request limits, from a model's config.pbtxt parameters (`fill
    --max-prompt-tokens / --max-output-tokens`): preprocessing and dlm check the same."""
    return Limits(int(params["MAX_PROMPT_TOKENS"]), int(params["MAX_OUTPUT_TOKENS"]))


def to_wire(request: GenerationRequest, **delivery: bool) -> tuple[np.ndarray, str]:
    """(input_ids INT32 [n], JSON of the knobs and the DELIVERY flags given)."""
    unknown = sorted(set(delivery) - set(DELIVERY))
    if unknown:
        raise ValueError(f"delivery flags {unknown}: known {list(DELIVERY)}")
    knobs = {k: getattr(request, k) for k in FIELDS}
    knobs.update({k: bool(v) for k, v in delivery.items()})
    return np.asarray(request.prompt_ids, np.int32), json.dumps(knobs)


def from_wire(
    input_ids: np.ndarray, payload: str | bytes
) -> tuple[GenerationRequest, dict[str, bool]]:
    """(request, every DELIVERY flag) from `to_wire`'s form."""
    knobs = json.loads(payload)  # a JSONDecodeError is a ValueError: the caller's error reply
    if not isinstance(knobs, dict):
        raise RequestError(f"request: must be a JSON object, got {type(knobs).__name__}")
    delivery = {k: bool(knobs.pop(k, False)) for k in DELIVERY}
    unknown = sorted(set(knobs) - set(FIELDS))
    if unknown:
        raise RequestError(f"request: unknown fields {unknown}; known: {list(FIELDS)}")
    ids = [int(i) for i in np.asarray(input_ids).reshape(-1)]
    return GenerationRequest(ids, **knobs), delivery


# Ensemble input -> GenerationRequest field, for the knobs of one value (dlm.schema).
SCALAR_INPUTS = {k.name: k.field for k in schema.KNOBS if k.field and not k.many}


def scalar(name: str, array: np.ndarray):
    """One value of a [1] (or [1, 1]) input as a Python value; FP32 as its shortest decimal
    (0.9 stays 0.9, as on the command line)."""
    flat = np.asarray(array).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"{name}: must hold exactly one value, got {flat.size}")
    v = flat[0]
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"{name}: must be UTF-8 text ({e})") from None
    if isinstance(v, np.floating):
        return float(str(v))
    return v.item() if isinstance(v, np.generic) else v


def from_inputs(pre: Preprocessor, inputs: dict[str, np.ndarray]):
    """The ensemble's input tensors (absent optional ones left out) -> (input_ids, request JSON).

    Raises RequestError naming the field."""
    for name in schema.REQUIRED:  # optional in config.pbtxt: their absence is answered here
        if name not in inputs:
            k = schema.BY_NAME[name]
            raise RequestError(f"{name}: required input missing ({k.help}, {k.dtype} [1])")
    text = np.asarray(inputs["text_input"]).reshape(-1)
    if text.size != 1:
        raise RequestError(f"text_input: must hold exactly one prompt, got {text.size}")
    knobs = {
        field: scalar(name, inputs[name]) for name, field in SCALAR_INPUTS.items() if name in inputs
    }
    stops = list(np.asarray(inputs["stop_words"]).reshape(-1)) if "stop_words" in inputs else []
    request = pre(text[0], stop_words=stops, **knobs)
    flags = {
        k: bool(scalar(k, inputs[k])) if k in inputs else False
        for k in ("stream", "return_block_text")
    }
    # TensorRT-LLM's input (sent by genai-perf): outputs never repeat the prompt here.
    if "exclude_input_in_output" in inputs and not scalar(
        "exclude_input_in_output", inputs["exclude_input_in_output"]
    ):
        raise RequestError(
            "exclude_input_in_output: only true is supported (text_output never repeats the "
            "prompt); leave it out or send true"
        )
    return to_wire(
        request, stream=flags["stream"], block_views=flags["return_block_text"], ensemble=True
    )
