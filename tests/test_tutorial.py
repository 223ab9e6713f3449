"""docs/tutorial.ipynb runs top to bottom on a fresh Jupyter kernel, as the documentation build
runs it: every cell, with the asserts that check its numbers, and no error.

It runs in a temporary copy, so the checkout is left as it was, with this repository on the
kernel's PYTHONPATH (the checkout is what is tested, whatever copy is installed). Needs nbclient
(which brings nbformat and jupyter_client) and ipykernel; skipped without them.
"""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "tutorial.ipynb"
CELL_TIMEOUT_SECONDS = 600  # as docs/conf.py gives myst-nb; the whole notebook takes ~20 s


@pytest.mark.integration
def test_the_tutorial_runs_top_to_bottom_without_an_error(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    copy = tmp_path / NOTEBOOK.name
    shutil.copyfile(NOTEBOOK, copy)
    notebook = nbformat.read(copy, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "the notebook is committed with its outputs cleared: the documentation build runs it")

    # the kernel inherits this environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_SECONDS,
                                     kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError at the first cell that fails
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"a cell of {NOTEBOOK.name} failed:\n{e}")

    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), "a cell did not run"
    assert any("nats" in output.get("text", "") for cell in code_cells
               for output in cell.outputs), "the tutorial printed no figure in nats"
    # it wrote nothing where it ran (its pictures go to a temporary folder of their own)
    assert [p.name for p in tmp_path.iterdir()] == [copy.name]
