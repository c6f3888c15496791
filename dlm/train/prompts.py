"""Held-out evaluation prompts: the first lines of functions in held-out stdlib files, parsed
with `ast`, and the leading statements of a file as a prompt's context. Deterministic."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

from dlm.train.sources import HELDOUT_FRACTION, SourceFile, collect_files, split_files

PROMPT_MAX_CHARS = 200
REFERENCE_MAX_LINES = 16


@dataclass(frozen=True)
class Prompt:
    """A held-out evaluation prompt: a function's header and its first body line.

    `prompt + reference` is the start of the function's source (dedented to column 0); the
    prompt ends at a line end without the newline, so the model's first token starts the next line.
    """

    id: str  # "<path>:<line>" of the def line
    path: str
    line: int
    prompt: str
    reference: str  # the next lines of the function (up to REFERENCE_MAX_LINES), "\n"-prefixed


def _strip_indent(line: str, indent: str) -> str:
    # Lines inside multi-line strings may not carry the def's indentation; keep those as they are.
    return line[len(indent) :] if line.startswith(indent) else line


def _function_prompts(f: SourceFile, max_chars: int) -> list[Prompt]:
    """Prompts for every function in one file, in source order."""
    try:
        tree = ast.parse(f.text)
    except (SyntaxError, ValueError):  # test suites ship deliberately broken files
        return []
    lines = f.text.split("\n")
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    out: list[Prompt] = []
    for node in sorted(nodes, key=lambda n: n.lineno):
        first = node.body[0]
        if first.lineno <= node.lineno:  # one-liner "def f(): ..."
            continue
        header = lines[node.lineno - 1 : first.lineno - 1]
        # Drop comment and blank lines between the signature and the body.
        while header and (not header[-1].strip() or header[-1].strip().startswith("#")):
            header.pop()
        body_end = first.lineno  # exclusive line index of the prompt's body part
        is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        if is_doc and isinstance(first.value.value, str):
            # A docstring that opens with bare quotes: include its first line of text too.
            if not any(c.isalnum() for c in lines[first.lineno - 1].strip().lstrip("rRbBuU")):
                body_end += 1
        end = node.end_lineno or first.lineno
        if body_end >= end:  # nothing left for the model to complete
            continue
        def_line = lines[node.lineno - 1]
        indent = def_line[: len(def_line) - len(def_line.lstrip())]
        prompt_lines = header + lines[first.lineno - 1 : body_end]
        rest = lines[body_end : min(end, body_end + REFERENCE_MAX_LINES)]
        prompt = "\n".join(_strip_indent(x, indent) for x in prompt_lines)
        if len(prompt) > max_chars:
            continue
        reference = "".join("\n" + _strip_indent(x, indent) for x in rest)
        out.append(Prompt(f"{f.path}:{node.lineno}", f.path, node.lineno, prompt, reference))
    return out


def held_out_prompts(
    n: int = 64,
    files: Sequence[SourceFile] | None = None,
    max_chars: int = PROMPT_MAX_CHARS,
    fraction: float = HELDOUT_FRACTION,
) -> list[Prompt]:
    """`n` evaluation prompts from held-out files, deterministic.

    `files`: the held-out files (default: the held-out split of collect_files(), tests included).
    Files are taken round-robin in path order (each file's 1st function, then each file's 2nd,
    ...) so the prompts spread over many modules. Raises ValueError if fewer than n exist.
    """
    if n < 1:
        raise ValueError(f"n={n} out of range; allowed n >= 1")
    if files is None:
        files = split_files(collect_files(), fraction)[1]
    per_file = [
        p
        for p in (_function_prompts(f, max_chars) for f in sorted(files, key=lambda f: f.path))
        if p
    ]
    out: list[Prompt] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in per_file):
        out.extend(p[depth] for p in per_file if depth < len(p))
        depth += 1
    if len(out) < n:
        raise ValueError(
            f"n={n} prompts requested; only {len(out)} available in {len(files)} files"
        )
    return out[:n]


def file_context(text: str, before_line: int, max_chars: int) -> str:
    """The file's leading top-level statements as a prompt's context: `text` up to the start of
    a top-level statement (so each one in it is whole), at most `max_chars` characters, and not
    past line `before_line` (1-based: a held-out function's def line). "" if none fits."""
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError):
        return ""
    line_start = [0]
    for line in text.split("\n"):
        line_start.append(line_start[-1] + len(line) + 1)
    starts = [
        min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        for node in body
    ]
    cuts = [line_start[n - 1] for n in starts if n <= before_line]
    return text[: max((c for c in cuts if c <= max_chars), default=0)]
