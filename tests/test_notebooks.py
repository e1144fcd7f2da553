"""Every notebook of docs/notebooks/ runs from top to bottom without an error, in a fresh kernel of this
interpreter, on a copy in a temporary folder (nothing is written into the repository)."""

import importlib.util
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)

CELL_TIMEOUT = 300  # seconds; each notebook as a whole is meant to take at most 2 minutes on 2 cores


def test_the_kernel_is_this_interpreter(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.getcwd())")]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "cwd").mkdir()
    out = run_notebooks.execute(path, tmp_path / "cwd", timeout=60)
    printed = out.cells[0].outputs[0]["text"].splitlines()
    assert Path(printed[0]).resolve() == Path(sys.executable).resolve()
    assert Path(printed[1]).resolve() == (tmp_path / "cwd").resolve()


def test_there_are_notebooks():
    assert len(run_notebooks.notebooks()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("notebook", run_notebooks.notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(notebook, tmp_path):
    copy = tmp_path / notebook.name
    shutil.copy(notebook, copy)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    start = time.perf_counter()
    nb = run_notebooks.execute(copy, cwd, timeout=CELL_TIMEOUT)  # raises on the first failing cell
    print(f"{notebook.name}: {time.perf_counter() - start:.1f}s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
