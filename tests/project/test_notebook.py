"""examples/notebook.ipynb runs headless from top to bottom and shows what its reader relies on.

nbclient executes it in a kernel of this interpreter's ipykernel (whatever kernels are installed
elsewhere), from the notebook's folder, as Jupyter would; the notebook starts and stops its server.
"""

import ast
import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    """The notebook after running every cell (nbclient raises on the first cell that fails)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # No kernel folders: "python3" is then ipykernel's own spec, which starts this interpreter.
    kernels = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(notebook, km=kernels, timeout=180, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.text for output in outputs(notebook) if output.output_type == "stream")


def test_notebook_is_stored_without_outputs():
    """The repository keeps the notebook clean: no outputs or execution counts to review or go stale."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_every_cell_runs(executed):
    """Each code cell ran, none raised, and the server was stopped cleanly at the end."""
    assert all(cell.execution_count for cell in executed.cells if cell.cell_type == "code")
    assert not [output for output in outputs(executed) if output.output_type == "error"]
    assert "server exited with 0" in printed(executed)


def test_plots_show_as_images(executed):
    """The plot cells (raster, traces, rate histogram; the learning curve) show PNG figures."""
    figures = [output for output in outputs(executed) if "image/png" in output.get("data", {})]
    assert len(figures) >= 2


def test_training_shows_a_widget_progress_bar(executed):
    """fit(progress=True) shows a Jupyter widget (tqdm.auto with ipywidgets), not a text bar."""
    assert any(WIDGET in output.get("data", {}) for output in outputs(executed))


def test_training_loss_goes_down(executed):
    """The printed training loss falls over the epochs."""
    losses = ast.literal_eval(re.search(r"loss per epoch: (\[.*\])", printed(executed))[1])
    assert len(losses) == 5 and losses[-1] < losses[0]
