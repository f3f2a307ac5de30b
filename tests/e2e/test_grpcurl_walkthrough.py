"""docs/grpcurl.md works as written: its commands, run in order against a real server, print what it shows.

grpcurl is a Go program and no dependency of this project, so each grpcurl command is carried out
the way grpcurl does it: the method and its message types come from the server's reflection
service, ``-d`` is the request in proto3 JSON, ``-H`` headers are metadata, and the reply is printed
in grpcurl's format (JSON with the ``.proto`` field names; ``-v``'s response metadata; ``ERROR:``
with the code, message and details). Where grpcurl is installed (on the PATH or in this
interpreter's environment), a second test runs grpcurl itself. The page's ``python3`` one-liners
run as written, with this interpreter first on the PATH.

A shown output may be abbreviated: a JSON object shows some of its keys, a JSON list some of its
items in order, and ``...`` stands for lines left out. float32 tensor data compare to float32
rounding; metadata compare by key (a replica id differs between machines).
"""

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import google.rpc.error_details_pb2  # noqa: F401  (registers ErrorInfo, so that the status details print)
import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from tests.e2e.test_server_process import free_port, start_server
from tests.project.test_docs import DOCS, blocks

PAGE = "grpcurl.md"
DOC_ADDRESS = "127.0.0.1:50051"
# On the PATH, or in this interpreter's environment, whose bin folder need not be on the PATH.
GRPCURL = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(Path(sys.executable).parent))


@dataclass(frozen=True)
class Step:
    """One command of the page and the output shown after it (None: none shown)."""

    line: int
    argv: list[str]
    shown: str | None = None


def walkthrough() -> list[Step]:
    """The page's commands in order: every ``bash`` block is one command, a ``text`` block its output."""
    steps: list[Step] = []
    for block in blocks((DOCS / PAGE).read_text(), PAGE):
        if block.lang == "bash":
            steps.append(Step(block.line, shlex.split(block.code.replace("\\\n", " "), comments=True)))
        elif block.lang == "text":
            assert steps and steps[-1].shown is None, f"docs/{PAGE}:{block.line}: an output with no command before it"
            steps[-1] = replace(steps[-1], shown=block.code)
    return steps


@dataclass(frozen=True)
class Grpcurl:
    """A grpcurl command line: ``[flags] ADDRESS list [SERVICE]`` or ``[flags] ADDRESS Service/Method``."""

    address: str
    verb: list[str]
    data: str | None
    headers: list[tuple[str, str]]
    verbose: bool

    @classmethod
    def parse(cls, argv: list[str]) -> "Grpcurl":
        args, positional, headers, data, verbose = iter(argv[1:]), [], [], None, False
        for arg in args:
            if arg == "-v":
                verbose = True
            elif arg == "-H":
                key, value = next(args).split(":", 1)
                headers.append((key.strip().lower(), value.strip()))
            elif arg == "-d":
                data = next(args)
            elif arg != "-plaintext":
                assert not arg.startswith("-"), f"grpcurl flag {arg} is not one this test carries out"
                positional.append(arg)
        return cls(positional[0], positional[1:], data, headers, verbose)


@dataclass
class Printed:
    """What grpcurl printed, read back. Metadata sections map to (keys, complete: no ``...`` in them)."""

    reply: object = None
    lines: list[str] = field(default_factory=list)
    sections: dict[str, tuple[set[str], bool]] = field(default_factory=dict)
    error: dict | None = None

    @classmethod
    def read(cls, text: str) -> "Printed":
        before, _, after = text.partition("ERROR:")
        printed = cls(lines=[line.strip() for line in before.splitlines() if line.strip() not in ("", "...")])
        if after:
            details = after.partition("Details:")[2].splitlines()
            printed.error = {
                "code": re.search(r"Code: (\S+)", after)[1],
                "message": re.search(r"Message: (.*)", after)[1].strip(),
                # grpcurl numbers each detail, "  1)\t{...}", and indents the lines of one it spreads, "    \t..."
                "details": _json_objects("\n".join(re.sub(r"^\s*(\d+\))?\t", "", line) for line in details)),
            }
        start = next((i for i, line in enumerate(before.splitlines()) if line.startswith("{")), None)
        if start is not None:
            printed.reply = json.JSONDecoder().raw_decode("\n".join(before.splitlines()[start:]))[0]
        for name in ("headers", "trailers"):
            found = re.search(rf"Response {name} received:\n(.*?)(?:\n\n|\nSent |\Z)", before, re.S)
            if found:
                lines = found[1].splitlines()
                printed.sections[name] = ({line.split(":", 1)[0] for line in lines if ": " in line}, "..." not in lines)
        return printed


def _json_objects(text: str) -> list:
    decoder, objects, i = json.JSONDecoder(), [], 0
    while text[i:].strip():
        i += len(text[i:]) - len(text[i:].lstrip())
        value, i = decoder.raw_decode(text, i)
        objects.append(value)
    return objects


def _floats(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), "<f4")


def contains(actual, shown) -> bool:
    """Whether ``shown`` is ``actual``, perhaps abbreviated (see the module docstring)."""
    if isinstance(shown, dict):
        if not isinstance(actual, dict) or not shown.keys() <= actual.keys():
            return False
        if shown.get("dtype") == "DATA_TYPE_FLOAT32" and "data" in shown:
            a, s = _floats(actual["data"]), _floats(shown["data"])
            if a.shape != s.shape or not np.allclose(a, s, rtol=1e-5, atol=1e-7):
                return False
            shown = {k: v for k, v in shown.items() if k != "data"}
        return all(contains(actual[k], v) for k, v in shown.items())
    if isinstance(shown, list):
        rest = iter(actual if isinstance(actual, list) else ())
        return isinstance(actual, list) and all(any(contains(a, s) for a in rest) for s in shown)
    return actual == shown


def check(step: Step, printed: str) -> None:
    """The command printed what the page shows after it."""
    where = f"docs/{PAGE}:{step.line}"
    shown, actual = Printed.read(step.shown), Printed.read(printed)
    assert (actual.error is None) == (shown.error is None), f"{where}: printed\n{printed}"
    if shown.error:
        assert actual.error["code"] == shown.error["code"] and actual.error["message"] == shown.error["message"], where
        assert contains(actual.error["details"], shown.error["details"]), f"{where}: printed\n{printed}"
    for name, (keys, complete) in shown.sections.items():
        got = actual.sections.get(name, (set(), True))[0]
        assert keys == got if complete else keys <= got, f"{where}: response {name} {got}, shown {keys}"
    if shown.reply is not None:
        assert contains(actual.reply, shown.reply), f"{where}: printed\n{printed}"
    elif shown.error is None:
        assert set(shown.lines) <= set(actual.lines), f"{where}: printed\n{printed}"


class Reflected:
    """grpcurl's work done here: types from the server's reflection service, JSON in, grpcurl's format out."""

    def __init__(self, channel: grpc.Channel):
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def __call__(self, command: Grpcurl) -> str:
        if command.verb[0] == "list":
            if len(command.verb) == 1:
                return "\n".join(sorted(self.database.get_services())) + "\n"
            methods = self.pool.FindServiceByName(command.verb[1]).methods
            return "\n".join(sorted(method.full_name for method in methods)) + "\n"
        (path,) = command.verb
        service, name = path.split("/")
        method = self.pool.FindServiceByName(service).FindMethodByName(name)
        request_type = message_factory.GetMessageClass(method.input_type)
        reply_type = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(
            f"/{path}", request_serializer=request_type.SerializeToString, response_deserializer=reply_type.FromString
        )
        request = json_format.Parse(command.data or "{}", request_type())
        try:
            reply, outcome = call.with_call(request, metadata=command.headers, timeout=60)
        except grpc.RpcError as error:
            return _metadata(command, error, 0) + _error(error)
        text = json_format.MessageToJson(reply, preserving_proto_field_name=True, indent=2)
        return _metadata(command, outcome, 1) + text + "\n"


def _metadata(command: Grpcurl, call, replies: int) -> str:
    """``-v``'s response metadata, as grpcurl prints it (binary values left out)."""
    if not command.verbose:
        return ""

    def lines(metadata) -> str:
        return "\n".join(f"{k}: {v}" for k, v in metadata or () if not k.endswith("-bin")) or "(empty)"

    return (
        f"Response headers received:\n{lines(call.initial_metadata())}\n\n"
        f"Response trailers received:\n{lines(call.trailing_metadata())}\n"
        f"Sent 1 request and received {replies} response{'' if replies == 1 else 's'}\n"
    )


def _error(error: grpc.RpcError) -> str:
    """The failed call as grpcurl prints it: the code's Go name, the message, each detail as JSON."""
    status = rpc_status.from_call(error)
    details = [json_format.MessageToDict(detail) for detail in (status.details if status else ())]
    code = "".join(part.capitalize() for part in error.code().name.split("_"))
    text = f"ERROR:\n  Code: {code}\n  Message: {error.details()}\n"
    if details:
        text += "  Details:\n" + "".join(f"  {i})\t{json.dumps(d)}\n" for i, d in enumerate(details, 1))
    return text


def grpcurl_itself(address: str) -> Callable[[list[str]], str]:
    """grpcurl run as written, on ``address`` instead of the page's."""

    def run(argv: list[str]) -> str:
        command = [GRPCURL] + [address if arg == DOC_ADDRESS else arg for arg in argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    return run


def shell(argv: list[str]) -> str:
    """A python3 one-liner as written, with this interpreter's folder first on the PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def walk(run_grpcurl: Callable[[list[str]], str]) -> None:
    """The page's commands in order, each output checked against the one shown."""
    for step in walkthrough():
        printed = run_grpcurl(step.argv) if step.argv[0] == "grpcurl" else shell(step.argv)
        if step.shown is not None:
            check(step, printed)


@pytest.fixture
def address(tmp_path):
    """A ``python -m server`` on 127.0.0.1 (a free port), as the page has the reader start one."""
    address = f"127.0.0.1:{free_port()}"
    process = start_server(address, "--checkpoint-dir", str(tmp_path))
    yield address
    process.terminate()
    process.wait(30)


def test_every_command_is_grpcurl_on_the_pages_address_or_a_python3_one_liner():
    """Nothing on the page goes unchecked: each command is one that the walkthrough runs."""
    steps = walkthrough()
    assert sum(step.argv[0] == "grpcurl" for step in steps) >= 8
    for step in steps:
        assert step.argv[0] in ("grpcurl", "python3"), f"docs/{PAGE}:{step.line}: {step.argv[0]} is not run"
        if step.argv[0] == "grpcurl":
            assert Grpcurl.parse(step.argv).address == DOC_ADDRESS, f"docs/{PAGE}:{step.line}"


def test_walkthrough_through_reflection(address):
    """Each command, carried out through the server's reflection as grpcurl does, prints what the page shows."""
    with grpc.insecure_channel(address) as channel:
        reflected = Reflected(channel)
        walk(lambda argv: reflected(Grpcurl.parse(argv)))


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed")
def test_walkthrough_with_grpcurl(address):
    """grpcurl itself, given each command of the page, prints what the page shows."""
    walk(grpcurl_itself(address))
