"""Tokenizers from `tokenizer.json` (HF `tokenizers`), chat templates, incremental decoding."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    """A checkpoint's tokenizer: encode/decode, and its chat template when it has one."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json in the model folder")
        self.tok = Tokenizer.from_file(str(path))
        cfg_path = folder / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        # Source text that merely contains a special token's spelling stays text.
        self.tok.encode_special_tokens = bool(self.config.get("split_special_tokens", False))
        self.chat_template: str | None = self.config.get("chat_template")
        self.add_bos = bool(self.config.get("add_bos_token", False))
        bos = self.config.get("bos_token")
        self.bos_id = self.tok.token_to_id(bos) if isinstance(bos, str) else None

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: str | list[dict], default: str | None = None) -> str:
        """The prompt text for a conversation (a list of {"role", "content"}; a string is one user
        turn) through the checkpoint's Jinja chat template, or `default` if it has none."""
        template = self.chat_template or default
        if not template:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json)")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # Sandboxed, as in Hugging Face transformers: the template comes with the checkpoint;
        # the user's text is only ever a variable's value, never template source.
        env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
        return env.from_string(template).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=self.config.get("bos_token", ""),
            eos_token=self.config.get("eos_token", ""),
        )


# The chat template of a checkpoint that has none (the front door's chat endpoint): each turn
# as "<role>: <content>" on a line of its own, then "assistant:" for the reply to follow.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class IncrementalDecoder:
    """Text of a growing token list, emitted piece by piece with no broken UTF-8 and no lost
    spaces: decode a window of recent tokens and emit only what extends the text already shown,
    holding back while the window ends in an incomplete character (U+FFFD)."""

    def __init__(self, decode) -> None:
        self.decode = decode  # list[int] -> str
        self.ids: list[int] = []
        self.prefix = 0  # start of the window used as left context
        self.read = 0  # tokens whose text was already emitted

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(int(i) for i in new_ids)
        shown = self.decode(self.ids[self.prefix : self.read])
        full = self.decode(self.ids[self.prefix :])
        if len(full) > len(shown) and not full.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return full[len(shown) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (may contain U+FFFD for truly broken bytes)."""
        shown = self.decode(self.ids[self.prefix : self.read])
        full = self.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return full[len(shown) :]
