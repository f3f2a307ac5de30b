"""The README's example runs as written, and its links lead somewhere.

The other examples live in ``docs/``, where ``tests/project/test_docs.py`` runs them.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def python_block(after_heading: str) -> str:
    section = README.read_text().split(after_heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_client_example_runs_against_a_server(server_address):
    """The client example runs against a real server, with its comments' shapes."""
    code = python_block("## The client").replace('"127.0.0.1:50051"', repr(server_address))
    scope: dict = {}
    exec(code, scope)
    assert scope["out"].shape == (100, 8, 10)
    assert scope["y"].shape == (25, 8, 10)
    assert scope["rec"]["1"].shape == (100, 8, 256)
    assert scope["rec"]["1.v"].shape == (100, 8, 256)


def test_only_the_client_example_is_python():
    """The README keeps one example; the rest runs from the docs."""
    assert len(re.findall(r"```python\n", README.read_text())) == 1


def test_links_into_the_repository_exist():
    """Every relative link (the docs pages) names a file that is there."""
    links = re.findall(r"\]\((?!https?://)([^)#]+)(?:#[^)]*)?\)", README.read_text())
    assert links, "the README links into docs/"
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which doesn't exist"
