"""The README's Python examples run as written, in order, from an empty directory."""

from pathlib import Path

import pytest
from snippets import python_blocks, run_blocks

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_has_examples():
    assert len(python_blocks(README)) >= 3


def test_readme_examples_run(tmp_path):
    pytest.importorskip("scipy")
    pytest.importorskip("dask.distributed")
    out = run_blocks(README, tmp_path)
    # The numbers the README's comments promise.
    assert "1.6165488003791766" in out
    assert "[2. 3.]" in out
    assert out.count("[1.0, 2.0]") == 4
    assert list(tmp_path.iterdir()) == [tmp_path / "_blocks.json"], "the examples left files behind"
