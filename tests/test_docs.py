"""The documentation site builds with `mkdocs build --strict` (offline), with its pages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocs_jupyter")
pytest.importorskip("mkdocstrings")


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("handgrad.module", "handgrad.layers.linear", "handgrad.losses", "handgrad.functional",
                 "handgrad.optim", "handgrad.check.core", "handgrad.interop", "handgrad.train.learner",
                 "handgrad.train.callbacks", "check_module", "CrossEntropyLoss", "Learner"):
        assert name in api, f"{name} missing from the API reference"
    assert (site / "index.html").is_file()
    for notebook in sorted((ROOT / "docs" / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.is_file(), f"no page for {notebook.name}"
    assert (site / "bench.png").is_file()
