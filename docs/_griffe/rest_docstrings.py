"""A griffe extension for the API reference: this project's reST-ish docstrings as Markdown.

The docstrings are prose with ``literals``, doctest examples (``>>>``) and the odd reST literal block
(``::``). Markdown would read a doctest as nested block quotes, ``x["a"]`` as a reference link and
``(batch, *shape)`` as the start of emphasis. So, before mkdocstrings renders a docstring: doctests
become ``pycon`` code blocks (without their ``# doctest:`` flags), a literal block after ``::``
becomes a code block, and outside code the characters Markdown would act on are escaped.
The Python sources stay as they are; this runs only in ``mkdocs build``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_CODE = re.compile(r"(``.+?``|`[^`]+`)", re.S)
_FLAGS = re.compile(r"\s*#\s*doctest:\s*[+-]\w+(,\s*[+-]\w+)*\s*$")
_ESCAPES = {"*": r"\*", "_": r"\_", "[": r"\[", "]": r"\]", "<": "&lt;", "#": r"\#"}


def _escape(text: str) -> str:
    """Markdown's special characters escaped outside code spans (which may span lines)."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = "".join(_ESCAPES.get(ch, ch) for ch in parts[i])
    return "".join(parts)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """A cleaned (dedented) docstring as Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    prose: list[str] = []  # lines of text since the last code block, escaped together

    def flush() -> None:
        if prose:
            out.append(_escape("\n".join(prose)))
            prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        pad = " " * _indent(line)
        if line.lstrip().startswith(">>>"):
            flush()  # a doctest: its lines up to the next blank one
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(_FLAGS.sub("", lines[i][len(pad) :] if lines[i].startswith(pad) else lines[i].lstrip()))
                i += 1
            out += [f"{pad}```pycon", *(pad + b for b in block), f"{pad}```"]
            continue
        if line.rstrip().endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            j = i + 1  # a reST literal block: the lines indented deeper than its paragraph
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > _indent(line)):
                j += 1
            block = lines[i + 2 : j]
            while block and not block[-1].strip():
                block.pop()
            if block:
                deeper = min(_indent(b) for b in block if b.strip())
                head = line.rstrip()[:-1].rstrip()
                prose += [head if head.endswith(":") else head + ":", ""]
                flush()
                out += [f"{pad}```text", *(pad + b[deeper:] for b in block), f"{pad}```", ""]
                i = j
                continue
        prose.append(line)
        i += 1
    flush()
    return "\n".join(out)


class RestDocstrings(griffe.Extension):
    """Rewrites every docstring griffe loads with ``to_markdown``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
