"""Execute the notebooks of docs/notebooks/ and save them with their outputs.

    .venv/bin/python scripts/run_notebooks.py                       # every notebook, in place
    .venv/bin/python scripts/run_notebooks.py docs/notebooks/x.ipynb  # only these

Each notebook runs in a fresh kernel started by this interpreter (`python -m ipykernel_launcher`, the
venv's python whatever kernelspecs the machine has), with a temporary working folder, so run folders
and other files a notebook writes never land in the repository. The progress bars of training are
widgets that close when their epoch ends: their views are dropped from the saved outputs, as a live
notebook drops them, and the timing metadata is not recorded, so re-running changes only what the
notebook printed. tests/test_notebooks.py executes the notebooks through `execute` below.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "docs" / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class ThisInterpreterSpecs(KernelSpecManager):
    """Every kernel name means ipykernel run by this interpreter (a user's `python3` kernelspec could name
    another python, without handgrad)."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                          display_name="Python 3 (ipykernel)", language="python", resource_dir=str(ROOT))


class ThisInterpreterKernel(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return ThisInterpreterSpecs()


def notebooks() -> list[Path]:
    """Every notebook of docs/notebooks/, by name."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def drop_closed_widgets(nb: nbformat.NotebookNode) -> None:
    """Remove the progress bars' widget views and the widget state: both are gone once training has ended."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
    nb.metadata.pop("widgets", None)


def execute(path: Path, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """The notebook at `path` executed in a fresh kernel whose working folder is `cwd` (not saved).

    Raises nbclient's CellExecutionError (naming the cell and the error) when a cell fails, and
    CellTimeoutError when one runs longer than `timeout` seconds.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", kernel_manager_class=ThisInterpreterKernel,
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    drop_closed_widgets(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: all of docs/notebooks/)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may take (default 600)")
    args = parser.parse_args(argv)
    paths = args.paths or notebooks()
    missing = [p for p in paths if not p.is_file() or p.suffix != ".ipynb"]
    if missing:
        parser.error(f"expected notebook files (.ipynb), got {', '.join(map(str, missing))}")
    for path in paths:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="handgrad-nb-") as cwd:
            nb = execute(path, Path(cwd), args.timeout)
        nbformat.write(nb, path)
        print(f"{path}: executed and saved in {time.perf_counter() - start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
