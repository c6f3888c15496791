"""The request schema: every input a client can send, written once.

Each `Knob` names an input of the `ensemble` (Triton's TensorRT-LLM tensor names where it has one),
its Triton data type, whether it is required or a list, the `GenerationRequest` field it sets and
its help. Derived from this table, nowhere else written: the `input [...]` of the ensemble's and
preprocessing's config.pbtxt and the ensemble's input map (`model_repository.fill`), the inputs
preprocessing reads and converts (`serving.requests`), the client's tensor types (`client.api`),
the knob flags of both command lines (`add_arguments`), perf_analyzer's input data and the fields
of the OpenAI-compatible front door (`openai`: the standard field a knob answers to, the others
taken from the body under their own name as extensions). The bounds
of each value are checked in one place, `GenerationRequest.validate`, whose errors name the input.

Torch-free (and `dlm/__init__` imports nothing), so the client and the fill tool use it as is.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

MODES = ("ar", "diffusion", "self_spec", "auto")


@dataclass
class Limits:
    """Server-side bounds on a request (prompt and output lengths); a deployment sets the first
    two (`fill --max-prompt-tokens / --max-output-tokens`)."""

    max_prompt_tokens: int = 768
    max_output_tokens: int = 512
    max_block_length: int = 128

    @property
    def longest(self) -> int:
        """Most cached positions one request may reach: prompt, output and a block beyond."""
        return self.max_prompt_tokens + self.max_output_tokens + self.max_block_length


# Triton data type -> (config.pbtxt type, NumPy dtype name, Python type of one value)
TYPES = {
    "BYTES": ("TYPE_STRING", "object", str),
    "INT32": ("TYPE_INT32", "int32", int),
    "UINT64": ("TYPE_UINT64", "uint64", int),
    "FP32": ("TYPE_FP32", "float32", float),
    "BOOL": ("TYPE_BOOL", "bool", bool),
}


@dataclass(frozen=True)
class Knob:
    name: str  # the input's name
    dtype: str  # Triton data type, a key of TYPES
    help: str
    field: str | None = None  # the GenerationRequest field it sets; None: a response option
    required: bool = False  # optional to Triton all the same: preprocessing names it if absent
    many: bool = False  # a list of values (dims [-1]), not one
    flag: str | None = None  # command-line flag, if not --name with dashes
    choices: tuple[str, ...] = ()
    cli: bool = True  # a generation knob of both command lines
    # The OpenAI request field it answers to: "" its own name (an extension field), None not
    # offered by the front door.
    openai: str | None = ""

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def openai_name(self) -> str | None:
        return self.name if self.openai == "" else self.openai

    @property
    def python_type(self) -> type:
        return TYPES[self.dtype][2]


KNOBS: tuple[Knob, ...] = (
    Knob(
        "text_input",
        "BYTES",
        "the prompt",
        required=True,
        flag="--prompt",
        cli=False,
        openai="prompt",
    ),
    Knob("max_tokens", "INT32", "tokens to generate", field="max_tokens", required=True),
    Knob("stream", "BOOL", "one response per newly committed text", cli=False),
    Knob(
        "temperature",
        "FP32",
        "0: greedy, else Gumbel-max sampling (canvas diffusion follows t_max -> t_min instead)",
        field="temperature",
    ),
    Knob(
        "random_seed",
        "UINT64",
        "seed of the counter-based sampling noise",
        field="seed",
        flag="--seed",
        openai="seed",
    ),
    Knob(
        "stop_words",
        "BYTES",
        "stop word (repeatable)",
        field="stop_sequences",
        many=True,
        flag="--stop",
        openai="stop",
    ),
    Knob("end_id", "INT32", "token that ends the text (default: the model's eos)", field="end_id"),
    Knob("mode", "BYTES", "generation mode", field="mode", choices=MODES),
    Knob(
        "block_length",
        "INT32",
        "tokens per block (diffusion, self_spec; auto: the largest it may choose; "
        "DiffusionGemma: its canvas); default: the block the build chose for the mode from its "
        "pass times, else the model's",
        field="block_length",
    ),
    Knob(
        "threshold",
        "FP32",
        "diffusion: commit masked positions at least this confident",
        field="threshold",
    ),
    Knob("steps", "INT32", "diffusion: fixed passes per block instead", field="steps"),
    Knob(
        "factor",
        "FP32",
        "diffusion by Fast-dLLM's factor rule instead of the threshold: commit the n surest "
        "masked positions while (n + 1) * (1 - confidence_n) < factor",
        field="factor",
    ),
    Knob(
        "repetition_penalty",
        "FP32",
        "divide (multiply, if negative) the logits of tokens already generated by this; 1: off",
        field="repetition_penalty",
    ),
    Knob(
        "frequency_penalty",
        "FP32",
        "subtract this times a token's count so far from its logit, in [-2, 2]; 0: off",
        field="frequency_penalty",
    ),
    Knob(
        "presence_penalty",
        "FP32",
        "subtract this from the logit of every token generated so far, in [-2, 2]; 0: off",
        field="presence_penalty",
    ),
    Knob(
        "max_denoising_steps",
        "INT32",
        "canvas diffusion (DiffusionGemma): the most denoising steps per canvas",
        field="max_denoising_steps",
    ),
    Knob(
        "entropy_bound",
        "FP32",
        "canvas: each step accepts the k lowest-entropy tokens whose entropy sum, less the "
        "largest, is at most this",
        field="entropy_bound",
    ),
    Knob("t_min", "FP32", "canvas: the temperature of the last step", field="t_min"),
    Knob("t_max", "FP32", "canvas: the temperature of the first step", field="t_max"),
    Knob(
        "stability_threshold",
        "INT32",
        "canvas: done once its argmax held this many steps and is confident",
        field="stability_threshold",
    ),
    Knob(
        "confidence_threshold",
        "FP32",
        "canvas: confident while the mean token entropy is below this",
        field="confidence_threshold",
    ),
    Knob("return_block_text", "BOOL", "stream the block being denoised as block_text", cli=False),
    Knob(
        "exclude_input_in_output",
        "BOOL",
        "TensorRT-LLM's flag, sent by genai-perf: true (the only behaviour here) is accepted",
        cli=False,
        openai=None,
    ),
)
BY_NAME = {k.name: k for k in KNOBS}
REQUIRED = tuple(k.name for k in KNOBS if k.required)


def generation_defaults(folder: str | Path) -> dict:
    """`generation_config.json` of a model folder (block_length, threshold, ...), or {}; the
    keys that are null left out, and transformers' DiffusionGemma `sampler_config` read as
    the `entropy_bound` it holds."""
    path = Path(folder) / "generation_config.json"
    if not path.exists():
        return {}
    found = json.loads(path.read_text())
    sampler = found.pop("sampler_config", None) or {}
    if sampler.get("entropy_bound") is not None:
        found["entropy_bound"] = sampler["entropy_bound"]
    return {k: v for k, v in found.items() if v is not None}


def pbtxt_inputs(indent: str = "  ") -> str:
    """The lines of a config.pbtxt `input [ ... ]` block (batch dimension implied)."""
    rows = []
    for k in KNOBS:
        dims = "-1" if k.many else "1"
        rows.append(
            f'{indent}{{ name: "{k.name}" data_type: {TYPES[k.dtype][0]} dims: [ {dims} ] '
            "optional: true }"
        )
    return ",\n".join(rows)


def pbtxt_input_map(indent: str = "      ") -> str:
    """The ensemble's first step: every input handed to preprocessing under its own name."""
    return "\n".join(f'{indent}input_map {{ key: "{k.name}" value: "{k.name}" }}' for k in KNOBS)


def add_arguments(group: argparse._ActionsContainer, **defaults) -> None:
    """The knob flags (--max-tokens, --mode, ...) on a command line; `defaults` by input name
    (otherwise None: the model's generation_config decides)."""
    for k in KNOBS:
        if not k.cli:
            continue
        kw: dict = {"help": k.help, "default": defaults.get(k.name), "dest": k.name}
        if k.many:
            kw.update(action="append", default=list(defaults.get(k.name, [])))
        elif k.choices:
            kw["choices"] = k.choices
        else:
            kw["type"] = k.python_type
        group.add_argument(k.option, **kw)


def from_arguments(args: argparse.Namespace) -> dict:
    """The knobs given on a command line made by `add_arguments`, by input name."""
    return {k.name: getattr(args, k.name) for k in KNOBS if k.cli}


def flag_of(name: str) -> str:
    """The command-line flag that sets an input (for errors that name the input)."""
    k = BY_NAME.get(name) or next((k for k in KNOBS if k.field == name), None)
    return k.option if k is not None else "--" + name.replace("_", "-")
