"""The parts depend on each other in one direction: client -> wire -> server -> rnnbuilder, never back."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "server": {"client"},
    "rnnbuilder_sim": {"client", "server"},
    "rnnbuilder": {"client", "server", "rnnbuilder_sim", "grpc"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a source file imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", FORBIDDEN)
def test_package_source_imports_nothing_above_it(package):
    """No module of the package names a package above it in an import."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize("package", FORBIDDEN)
def test_importing_the_package_loads_nothing_above_it(package):
    """Importing the package (and its submodules' imports) leaves the packages above it unloaded."""
    code = (
        f"import sys, {package}\n"
        f"above = {sorted(FORBIDDEN[package])!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in above))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
