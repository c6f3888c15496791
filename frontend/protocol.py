"""The OpenAI API as the front door speaks it: request bodies checked and turned into the
ensemble's inputs (`dlm.schema`), answers turned into OpenAI's objects. No I/O here.

Standard fields: `model`, `prompt` (a string or a list of strings) or `messages`, `max_tokens`
(`max_completion_tokens` in chat), `temperature`, `seed`, `stop`, `n`, `stream`,
`stream_options.include_usage`, `user`. The schema's other knobs (`mode`, `block_length`,
`threshold`, `steps`, `factor`, `end_id`, `return_block_text`) are extension fields of the body
(`extra_body` in the official client). A standard field that is not supported is refused
(400 naming it) unless it holds its neutral value (`top_p` 1, penalties 0, `logprobs` false, ...).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from dlm.schema import KNOBS

MAX_CHOICES = 16  # prompts x n in one request


def model_name(folder: str | Path, given: str | None = None) -> str:
    """The id clients send as `model`: `given`, else the checkpoint folder's name."""
    return given or Path(folder).resolve().name


# OpenAI field -> the schema's input it sets (prompt/messages become text_input).
BY_OPENAI = {k.openai_name: k for k in KNOBS if k.openai_name}
# OpenAI's own fields among them; CHECKED ones are declared by hand in _Common, with checks.
CHECKED = ("prompt", "max_tokens", "stream", "temperature", "seed", "stop")
STANDARD = (*CHECKED, "frequency_penalty", "presence_penalty")
EXTENSIONS = {name: k for name, k in BY_OPENAI.items() if name not in STANDARD}

# Standard OpenAI fields this server does not implement, accepted only at these values.
NEUTRAL: dict[str, tuple] = {
    "top_p": (1, 1.0),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "echo": (False,),
    "best_of": (1,),
    "logit_bias": ({},),
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "service_tier": ("auto", "default"),
    "store": (False,),
    "parallel_tool_calls": (True, False),
}


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = (
            status,
            message,
            param,
            type,
            code,
        )

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )


def _extension_type(k) -> type:
    return list[str] if k.many else k.python_type


# The fields both endpoints share; the schema's extension knobs are added from the table.
_Common = create_model(
    "_Common",
    __config__=ConfigDict(extra="allow"),  # the extra fields are checked against NEUTRAL
    model=(str, ...),
    max_tokens=(int | None, Field(None, ge=1)),
    temperature=(float | None, Field(None, ge=0)),
    seed=(int | None, Field(None, ge=0, lt=2**64)),
    stop=(str | list[str] | None, None),
    n=(int, Field(1, ge=1, le=MAX_CHOICES)),
    stream=(bool | None, False),
    stream_options=(StreamOptions | None, None),
    user=(str | None, None),
    **{
        name: (_extension_type(k) | None, None)
        for name, k in BY_OPENAI.items()
        if name not in STANDARD[:6]
    },
)


class CompletionRequest(_Common):
    prompt: str | list[str]


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


@dataclass
class Parsed:
    """A request checked and translated: one Triton request per (prompt, sample)."""

    model: str
    prompts: list[str]
    n: int
    knobs: dict  # the schema's inputs (no text_input or stream), None-valued ones left out
    stream: bool
    include_usage: bool
    seeds: list[int] = field(default_factory=list)  # one per sample of a prompt

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


def parse(body: object, chat: bool, render=None, default_max_tokens: int | None = None) -> Parsed:
    """Check an OpenAI request body; raises ApiError (400) naming the field.

    `render(messages)` turns a chat's messages into the prompt text."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if chat:
        _text_only(body.get("messages"))
    try:
        req = (ChatRequest if chat else CompletionRequest).model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        got = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
        raise ApiError(400, f"{param}: {err['msg']}{got}", param) from None
    for name, value in (req.model_extra or {}).items():
        if value is None or value in NEUTRAL.get(name, ()):
            continue
        first = ["model", "messages", "max_completion_tokens"] if chat else ["model", "prompt"]
        rest = [f for f in STANDARD if f != "prompt"] + ["n", "stream_options", "user"]
        supported = ", ".join(first + rest)
        if name in NEUTRAL:
            allowed = " or ".join(repr(v) for v in NEUTRAL[name])
            message = f"{name}={value!r} is not supported (allowed: {allowed})"
        else:
            message = f"{name}: unknown field (supported: {supported}, and the extensions "
            message += f"{', '.join(EXTENSIONS)})"
        raise ApiError(400, message, name)
    if chat:
        prompts = [render([{"role": m.role, "content": m.text()} for m in req.messages])]
        max_tokens = req.max_completion_tokens or req.max_tokens
    else:
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise ApiError(400, "prompt: must be a string or a non-empty list of strings", "prompt")
        max_tokens = req.max_tokens
    if len(prompts) * req.n > MAX_CHOICES:
        raise ApiError(
            400,
            f"n={req.n} x {len(prompts)} prompts: at most {MAX_CHOICES} completions per request",
            "n",
        )
    knobs = {
        k.name: getattr(req, name)
        for name, k in BY_OPENAI.items()
        if name not in ("prompt", "stream", "max_tokens", "seed")
    }
    knobs["max_tokens"] = max_tokens or default_max_tokens
    if isinstance(knobs.get("stop_words"), str):
        knobs["stop_words"] = [knobs["stop_words"]]
    # No seed: a fresh one per request, as OpenAI samples anew (greedy ignores it).
    seed = req.seed if req.seed is not None else secrets.randbits(32)
    return Parsed(
        model=req.model,
        prompts=prompts,
        n=req.n,
        knobs={k: v for k, v in knobs.items() if v is not None},
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        seeds=[(seed + i) % 2**64 for i in range(req.n)],
    )


def _text_only(messages: object) -> None:
    """Refuse content parts other than text by name (an image would otherwise read as a bad
    string): the models served here are served text-only (DiffusionGemma's vision tower is
    not loaded)."""
    for i, m in enumerate(messages if isinstance(messages, list) else []):
        parts = m.get("content") if isinstance(m, dict) else None
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ApiError(
                    400,
                    f"messages[{i}].content[{j}].type={kind!r}: only 'text' parts are "
                    "accepted (this server serves text only; no images)",
                    "messages",
                )


# Triton input named at the start of a validation message -> the OpenAI field.
def param_of(message: str, chat: bool) -> str | None:
    """The OpenAI field a server validation message names (`mode='fast': must be ...`)."""
    head = message.split(":", 1)[0].split("=", 1)[0].strip()
    if head == "text_input":
        return "messages" if chat else "prompt"
    names = {k.name: name for name, k in BY_OPENAI.items()}
    return names.get(head)


class StopText:
    """OpenAI's stop strings over a growing text: it ends before the first stop string found,
    and a tail that could still begin one is held back until it cannot. (The server's own
    stop_words match whole tokens only; these match text, as OpenAI's do.)"""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, delta: str) -> str:
        """The text that may be shown now."""
        self.text += delta
        found = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.text, self.stopped = self.text[: min(found)], True
            return self.flush()
        hold = max(
            (k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])),
            default=0,
        )
        end = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent : end], end
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


@dataclass
class Choice:
    """One generated text, as it grows."""

    index: int
    text: str = ""
    completion_tokens: int = 0
    forward_passes: int = 0
    finish_reason: str | None = None


class Answer:
    """The OpenAI objects of one request (completion or chat; whole or as stream chunks)."""

    def __init__(self, parsed: Parsed, chat: bool, prompt_tokens: int) -> None:
        self.chat, self.model, self.prompt_tokens = chat, parsed.model, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.choices = [Choice(i) for i in range(parsed.choices)]

    def _head(self, object_: str) -> dict:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def usage(self) -> dict:
        completion = sum(c.completion_tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "forward_passes": sum(c.forward_passes for c in self.choices),  # extension
        }

    def whole(self) -> dict:
        if self.chat:
            choices = [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for c in self.choices
            ]
        else:
            choices = [
                {
                    "index": c.index,
                    "text": c.text,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for c in self.choices
            ]
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self._head(obj), "choices": choices, "usage": self.usage()}

    def chunk(
        self,
        c: Choice,
        text: str | None,
        first: bool = False,
        block_text: str | None = None,
        usage: bool = False,
    ) -> dict:
        """A stream chunk of choice `c`: its new text (None: the final chunk, with its reason).
        Extensions per choice: `completion_tokens` and `forward_passes` so far, and the block
        being denoised (`block_text`) when asked for."""
        if self.chat:
            delta: dict = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": c.index, "delta": delta}
        else:
            choice = {"index": c.index, "text": text or ""}
        choice.update(
            logprobs=None,
            finish_reason=c.finish_reason if text is None else None,
            completion_tokens=c.completion_tokens,
            forward_passes=c.forward_passes,
        )
        if block_text is not None:
            choice["block_text"] = block_text
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        out = {**self._head(obj), "choices": [choice]}
        if usage:
            out["usage"] = None
        return out

    def usage_chunk(self) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": self.usage()}
