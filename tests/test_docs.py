"""The documentation's examples run as written: every ``python`` block of every page in ``docs/``."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCKS = [
    pytest.param(code, id=f"{page.name}:{i}")
    for page in sorted(DOCS.glob("*.md"))
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


@pytest.mark.parametrize("code", BLOCKS)
def test_example_runs(code):
    """The block runs in a fresh namespace without raising."""
    exec(compile(code, "<docs>", "exec"), {"__name__": "docs_example"})
