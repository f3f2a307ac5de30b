"""The error model is part of the contract: the ErrorInfo reasons ``server/errors.py`` sends, with
their status codes and metadata keys, are the ones the ``.proto`` comment and docs/contract.md list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from server.errors import (
    DOMAIN,
    REASONS,
    SessionExists,
    SessionExpired,
    SessionMoving,
    SessionNotFound,
    status_of,
)

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "rnnbuilder_sim" / "v1" / "simulator.proto"
CONTRACT = ROOT / "docs" / "contract.md"
ERRORS = ROOT / "server" / "errors.py"

Table = dict[str, tuple[str, tuple[str, ...]]]


def server_table() -> Table:
    return {reason: (code.name, keys) for reason, (code, keys) in REASONS.items()}


def keys_of(text: str) -> tuple[str, ...]:
    return tuple(key.strip().strip("`") for key in text.split(",") if key.strip())


def proto_table() -> Table:
    """The reasons of the comment block above the service: ``//   REASON (CODE) {key, ...}: meaning``."""
    row = re.compile(r"^//   (?P<reason>[A-Z_]+) \((?P<code>[A-Z_]+)\) \{(?P<keys>[a-z_, ]*)\}: \S")
    found = [row.match(line) for line in PROTO.read_text().splitlines()]
    return {m["reason"]: (m["code"], keys_of(m["keys"])) for m in found if m}


def proto_key_descriptions() -> set[str]:
    lines = PROTO.read_text().splitlines()
    start = lines.index("// The metadata keys:")
    keys = set()
    for line in lines[start + 1 :]:
        if not line.startswith("//"):
            break
        if m := re.match(r"^//   (?P<key>[a-z_]+): \S", line):
            keys.add(m["key"])
    return keys


def errors_section() -> str:
    text = CONTRACT.read_text()
    start = text.index("\n## Errors\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def docs_table() -> Table:
    """The rows of the Errors section's table: ``| `REASON` | CODE | `key`, ... | when |``."""
    row = re.compile(r"^\| `(?P<reason>[A-Z_]+)` \| (?P<code>[A-Z_]+) \| (?P<keys>[^|]*)\| [^|]+\|$")
    found = [row.match(line) for line in errors_section().splitlines()]
    return {m["reason"]: (m["code"], keys_of(m["keys"])) for m in found if m}


def docs_key_descriptions() -> set[str]:
    return set(re.findall(r"^- `([a-z_]+)`: \S", errors_section(), re.MULTILINE))


def returned_reasons() -> set[str]:
    """The reason literals ``_reason_of`` in server/errors.py returns (first element of each return)."""
    tree = ast.parse(ERRORS.read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_reason_of")
    reasons = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            first = node.value.elts[0]
            assert isinstance(first, ast.Constant), ast.unparse(node)
            reasons.add(first.value)
    return reasons


def all_keys(table: Table) -> set[str]:
    return {key for _, keys in table.values() for key in keys}


def test_every_reason_returned_is_in_the_table():
    """status_of sends exactly the reasons of REASONS: none unlisted, none listed but never sent."""
    assert returned_reasons() == set(REASONS)


@pytest.mark.parametrize("listed", [proto_table, docs_table], ids=["proto", "docs"])
def test_the_contract_lists_the_reasons_the_server_sends(listed):
    """The same reasons, each with the same status code and metadata keys, in the same order."""
    table = listed()
    assert table, f"{listed.__name__} found no reasons: has the list's form changed?"
    assert list(table) == list(server_table())
    assert table == server_table()


@pytest.mark.parametrize("described", [proto_key_descriptions, docs_key_descriptions], ids=["proto", "docs"])
def test_every_metadata_key_is_described(described):
    assert described() == all_keys(server_table())


def test_the_domain_is_documented():
    assert f'domain "{DOMAIN}"' in PROTO.read_text()
    assert f"domain `{DOMAIN}`" in errors_section()


def test_a_session_is_named_one_way():
    """Every reason that names a session does so under the one key ``session``."""
    session_reasons = {reason for reason in REASONS if reason.startswith("SESSION_")}
    assert session_reasons
    for reason, (_, keys) in REASONS.items():
        assert ("session" in keys) == (reason in session_reasons), reason


@pytest.mark.parametrize("given", ["abc", "sessions/abc"], ids=["bare id", "resource name"])
def test_every_session_error_names_the_session_by_its_resource_name(given):
    """Raised with the bare id or the name, a session error's metadata is ``session: sessions/<id>``."""
    errors = [SessionNotFound(given), SessionExpired(given), SessionExists(given), SessionMoving(given, "moves")]
    for error in errors:
        _, reason, metadata = status_of(error)
        assert metadata == {"session": "sessions/abc"}, reason
