"""The README's examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(after_heading: str) -> str:
    section = README.read_text().split(after_heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_library_example_runs():
    """The rnnbuilder example gives the shapes its comments promise."""
    scope: dict = {}
    exec(python_block("## rnnbuilder in one example"), scope)
    assert tuple(scope["out"].shape) == (100, 32, 10)
    assert tuple(scope["more"].shape) == (50, 32, 10)


def test_client_example_runs_against_a_server(server_address):
    """The client example runs against a real server, with its comments' shapes."""
    code = python_block("## The client").replace('"127.0.0.1:50051"', repr(server_address))
    scope: dict = {}
    exec(code, scope)
    assert scope["out"].shape == (100, 8, 10)
    assert scope["y_t"].shape == (8, 10)
    assert scope["rec"]["1.v"].shape == (100, 8, 256)
    assert set(scope["st"]) == {"1.v", "3.v"}
