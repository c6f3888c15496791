"""Stateless incremental detokenisation for streamed responses (the `postprocessing` model).

Each response carries ALL output ids so far and how many of them the previous response covered;
the text to send is what `decode(ids)` adds to `decode(ids[:shown])`, both cut before a trailing
run of U+FFFD (an incomplete UTF-8 character whose remaining bytes are still to come). Decoding
from the start every time keeps every space and joins multi-byte characters across responses;
a final response sends the remainder, so the texts of all responses concatenate to
`decode(ids)`. The cost is one decode of the output per response (outputs are short: <= 512).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[list[int]], str]

REPLACEMENT = "\ufffd"
MASK_PLACEHOLDER = "\u2591"  # light shade: one per masked position in a block view


def safe(text: str) -> str:
    """`text` without a trailing run of U+FFFD (bytes of a character not yet complete)."""
    return text.rstrip(REPLACEMENT)


def text_delta(decode: Decode, ids: Sequence[int], shown: int, final: bool) -> str:
    """The text a response adds, given all ids so far and the count the previous one covered."""
    ids = [int(i) for i in ids]
    shown = max(0, min(shown, len(ids)))
    before = safe(decode(ids[:shown])) if shown else ""
    now = decode(ids)
    if not final:
        now = safe(now)
    return now[len(before) :]


def block_text(
    decode: Decode, block: Sequence[int], mask_id: int, placeholder: str = MASK_PLACEHOLDER
) -> str:
    """A block being denoised as text: runs of known tokens decoded, one placeholder per mask."""
    parts: list[str] = []
    run: list[int] = []
    for t in block:
        if int(t) == mask_id:
            if run:
                parts.append(decode(run))
                run = []
            parts.append(placeholder)
        else:
            run.append(int(t))
    if run:
        parts.append(decode(run))
    return "".join(parts)


class Postprocessor:
    """The `postprocessing` model's logic: a response's text and its block view's text."""

    def __init__(self, folder) -> None:
        from dlm.engines import model_config
        from dlm.tokenizer import TextTokenizer

        self.tokenizer = TextTokenizer(folder)
        self.mask_id = model_config(folder).mask_token_id

    def __call__(
        self, output_ids: Sequence[int], shown: int, final: bool, block_ids: Sequence[int] = ()
    ) -> tuple[str, str]:
        decode = self.tokenizer.decode
        text = text_delta(decode, output_ids, shown, final)
        view = block_text(decode, block_ids, self.mask_id) if len(block_ids) else ""
        return text, view
