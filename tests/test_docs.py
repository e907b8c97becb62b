"""The documentation site builds with warnings as errors, and every example in it runs."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from snippets import python_blocks, run_blocks

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert PAGES, "no documentation sources"
    assert [p.relative_to(ROOT / "docs").as_posix() for p in PAGES if p.relative_to(ROOT / "docs").as_posix() not in nav] == []


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    reference = re.sub(r"<[^>]+>", "", (tmp_path / "site" / "reference" / "index.html").read_text())
    assert "exp(x)" in reference and "TapeFunction" in reference  # generated functions, classes
    assert (tmp_path / "site" / "benchmarks" / "time_vs_ops.png").exists()
    shutil.rmtree(tmp_path / "site")


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.relative_to(ROOT / "docs").as_posix())
def test_page_examples_run(page, tmp_path):
    if "dask" in page.read_text():
        pytest.importorskip("dask.array")
    if "scipy" in page.read_text():
        pytest.importorskip("scipy")
    run_blocks(page, tmp_path)
