"""A test oracle: run code with the original ``rnnbuilder`` 0.1.1 (PyPI, pure Python).

The original has the same import name as this package, so it never runs in the test process: the
first use installs it (``pip install --no-deps --target``) into ``<venv>/rnnbuilder-0.1.1`` once,
and every ``run_original`` call runs a snippet in a fresh Python subprocess with only that
directory on ``PYTHONPATH`` and a temporary working directory. Tensors travel through files
(``torch.save``/``torch.load`` of a dict): the snippet sees the dict ``inputs`` and fills the dict
``outputs``, which is returned. Anything ``torch.save`` can store travels: tensors, numbers,
strings, (nested) lists, tuples and dicts, state dicts.

Without the original (no network for the first install) every caller is skipped with the reason:
``pytest.skip``. ``RNNBUILDER_ORIGINAL=<dir>`` uses an existing ``pip install --target`` directory
instead of installing. An error inside the snippet fails the test with the snippet's traceback
(``OriginalError``), it is never skipped.

Usage (a seeded model of the original, its state dict and its outputs)::

    from tests.original import run_original

    x = torch.rand(5, 2, 3)
    result = run_original(
        '''
        import rnnbuilder as rb
        from rnnbuilder import nn, snn
        model = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((3,))
        outputs["state_dict"] = model.state_dict()
        outputs["out"] = model(inputs["x"])[0]
        ''',
        {"x": x},
        seed=0,
    )
    result["out"]           # a tensor of shape (5, 2, 4)

The snippet is dedented, so it can be an indented triple-quoted string. ``seed`` calls
``torch.manual_seed(seed)`` before the snippet; ``torch`` is imported for it, and ``rnnbuilder`` is
checked to be the original's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

__all__ = ["ORIGINAL_VERSION", "OriginalError", "original_path", "run_original"]

ORIGINAL_VERSION = "0.1.1"
_MARKER = ".installed"  # written last: the install is complete
_failure: str | None = None  # why the install failed, so one pytest run asks pip only once


class OriginalError(AssertionError):
    """The snippet failed in the original's subprocess; the message holds its output."""


def original_path() -> Path:
    """The directory holding the original ``rnnbuilder`` package, installed on first use.

    Skips the calling test (``pytest.skip``) if it can't be installed.
    """
    global _failure
    configured = os.environ.get("RNNBUILDER_ORIGINAL")
    if configured:
        if not (Path(configured) / "rnnbuilder" / "__init__.py").is_file():
            pytest.skip(f"RNNBUILDER_ORIGINAL={configured} holds no rnnbuilder package")
        return Path(configured)
    target = Path(sys.prefix) / f"rnnbuilder-{ORIGINAL_VERSION}"
    if (target / _MARKER).is_file():
        return target
    if _failure is not None:
        pytest.skip(_failure)
    with _locked(target.with_name(target.name + ".lock")):
        if not (target / _MARKER).is_file():
            _failure = _install(target)
    if _failure is not None:
        pytest.skip(_failure)
    return target


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock across processes (parallel pytest workers install only once)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install(target: Path) -> str | None:
    """Install the original into ``target``; the reason for a failure, or None."""
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            "--timeout",
            "20",
            "--retries",
            "1",
            "--target",
            str(staging),
            f"rnnbuilder=={ORIGINAL_VERSION}",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot install the original rnnbuilder {ORIGINAL_VERSION}: {e}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"cannot install the original rnnbuilder {ORIGINAL_VERSION} (no network?): {' | '.join(tail)}"
        (staging / _MARKER).write_text(f"rnnbuilder=={ORIGINAL_VERSION}\n")
        shutil.rmtree(target, ignore_errors=True)  # a partial install from an interrupted run
        staging.rename(target)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_PROLOGUE = """\
import sys
import torch
import rnnbuilder
if not rnnbuilder.__file__.startswith({root!r}):
    sys.exit("imported rnnbuilder from " + rnnbuilder.__file__ + ", not the original's " + {root!r})
inputs = torch.load("inputs.pt", weights_only=False)
outputs = {{}}
if {seed!r} is not None:
    torch.manual_seed({seed!r})
"""
_EPILOGUE = """
torch.save(outputs, "outputs.pt")
"""


def run_original(code: str, inputs: dict | None = None, *, seed: int | None = None, timeout: float = 300) -> dict:
    """Run ``code`` with the original rnnbuilder in a subprocess; the dict it filled as ``outputs``.

    ``code`` sees ``inputs`` (this dict, after a save/load round trip) and ``torch``; ``seed``, if
    given, seeds torch first. Raises ``OriginalError`` with the subprocess's output if it fails;
    skips the test if the original can't be installed.
    """
    root = original_path()
    with tempfile.TemporaryDirectory(prefix="rnnbuilder-original-") as tmp:
        work = Path(tmp)
        torch.save(dict(inputs or {}), work / "inputs.pt")
        script = _PROLOGUE.format(root=str(root.resolve()), seed=seed) + textwrap.dedent(code) + _EPILOGUE
        (work / "snippet.py").write_text(script)
        env = {**os.environ, "PYTHONPATH": str(root.resolve())}
        env.pop("PYTHONSTARTUP", None)
        try:
            done = subprocess.run(
                [sys.executable, "snippet.py"], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            raise OriginalError(f"the original's snippet ran past {timeout} s:\n{e.stdout}\n{e.stderr}") from None
        if done.returncode != 0:
            raise OriginalError(
                f"the original's snippet failed (exit status {done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"--- snippet.py ---\n{script}"
            )
        return torch.load(work / "outputs.pt", weights_only=False)
