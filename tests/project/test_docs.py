"""The documentation's examples run as written: every ``python`` block of every page under ``docs/``.

Each block runs in a fresh namespace and must not raise. A block that talks to a server uses the
address ``"127.0.0.1:50051"``; here it gets a real server's instead. A python block that is not meant
to run says so on the line just before it, ``<!-- no-run: why -->``, and is skipped with that
reason; nothing is skipped silently. Shell, TOML and text blocks are not code to run. ``CHECKS``
also checks what some examples promise in their comments.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ADDRESS = '"127.0.0.1:50051"'
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<why>\S.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`{]*)")
# Languages of blocks that are shown, never run; a python block under another name would slip by.
NOT_CODE_TO_RUN = {"bash", "toml", "text", "protobuf"}


@dataclass
class Block:
    page: str  # relative to docs/
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    heading: str  # the nearest heading above, e.g. "## In one example"
    no_run: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(text: str, page: str) -> list[Block]:
    """The fenced code blocks of a Markdown page, indented ones (in lists, admonitions) too."""
    found, lines, i, heading = [], text.splitlines(), 0, ""
    while i < len(lines):
        line, opening = lines[i], FENCE.match(lines[i])
        if line.startswith("#"):
            heading = line.strip()
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = i + 1
        while end < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        assert end < len(lines), f"{page}:{i + 1}: a code block that never closes"
        code = "\n".join(b[len(indent) :] if b.startswith(indent) else b.lstrip() for b in lines[i + 1 : end])
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = NO_RUN.match(before)
        found.append(Block(page, i + 1, opening["lang"], code + "\n", heading, marked and marked["why"]))
        i = end + 1
    return found


PAGES = sorted(DOCS.rglob("*.md"))
ALL = [b for page in PAGES for b in blocks(page.read_text(), page.relative_to(DOCS).as_posix())]
PYTHON = [b for b in ALL if b.lang == "python"]


def _check_library(ns: dict) -> None:
    assert tuple(ns["out"].shape) == (100, 32, 10)
    assert tuple(ns["more"].shape) == (50, 32, 10)


def _check_client(ns: dict) -> None:
    assert ns["out"].shape == (100, 8, 10)
    assert ns["y"].shape == (25, 8, 10)
    assert ns["y_t"].shape == (8, 10)
    assert ns["rec"]["1.v"].shape == (100, 8, 256)
    assert set(ns["st"]) == {"1.v", "3.v"}
    assert set(ns["p"]) == set(ns["local"].state_dict())


def _check_training(ns: dict) -> None:
    """The toy task is learnt (chance is 0.1), and the example's calls return what the text says."""
    assert len(ns["hist"]) == 15
    assert {"loss", "accuracy", "grad_norm", "val_loss", "val_accuracy", "samples_per_second"} <= set(ns["hist"][-1])
    assert ns["hist"][-1]["val_accuracy"] > 0.8
    assert ns["m"]["accuracy"] > 0.8
    assert {"loss", "grad_norm", "accuracy"} <= set(ns["r"])
    assert isinstance(ns["blob"], bytes) and ns["s2"].id != ns["s"].id and ns["s2"].output_shape == (10,)


def _check_from_snntorch(ns: dict) -> None:
    assert ns["agree"] == 1.0  # every output spike as snnTorch's own simulation
    assert len(ns["hist"]) == 3 and isinstance(ns["trained"], type(ns["graph"]))


# (page, heading) -> what the block under that heading must leave in its namespace.
CHECKS: dict[tuple[str, str], Callable[[dict], None]] = {
    ("library.md", "## In one example"): _check_library,
    ("client.md", "# The client"): _check_client,
    ("training.md", "# Training on the server"): _check_training,
    ("from-snntorch-and-norse.md", "## In one example"): _check_from_snntorch,
}


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_example_runs(block: Block, request):
    """The block runs in a fresh namespace without raising (against a real server if it names one)."""
    if block.no_run:
        pytest.skip(f"marked no-run: {block.no_run}")
    code = block.code
    if ADDRESS in code:
        code = code.replace(ADDRESS, repr(request.getfixturevalue("server_address")))
    namespace = {"__name__": "docs_example"}
    exec(compile(code, f"docs/{block.id}", "exec"), namespace)
    check = CHECKS.get((block.page, block.heading))
    if check:
        check(namespace)


def test_every_check_has_its_block():
    """A renamed heading or page doesn't silently turn a check off: each names exactly one runnable block."""
    for page, heading in CHECKS:
        matching = [b for b in PYTHON if (b.page, b.heading) == (page, heading) and not b.no_run]
        assert len(matching) == 1, f"CHECKS names {page} {heading!r}, which has {len(matching)} runnable blocks"


def test_every_block_is_run_or_shown_on_purpose():
    """Each block is python (run, or marked no-run with a reason) or a language that is only shown."""
    assert PYTHON, "no python blocks found under docs/"
    for b in ALL:
        assert b.lang in {"python"} | NOT_CODE_TO_RUN, f"docs/{b.id}: language {b.lang!r} is neither run nor shown"
        assert not (b.no_run and b.lang != "python"), f"docs/{b.id}: no-run marks only python blocks"


def test_no_run_marks_are_read():
    """The marker is recognized on the line before a block (the mechanism the skips rely on)."""
    text = "Text.\n\n<!-- no-run: a fragment -->\n```python\nundefined_name\n```\n\n```python\nx = 1\n```\n"
    marked, plain = blocks(text, "page.md")
    assert marked.no_run == "a fragment" and marked.code == "undefined_name\n"
    assert plain.no_run is None and plain.code == "x = 1\n"
