"""Every notebook in notebooks/ executes without an error, with a kernel of this interpreter."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

HERE = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", HERE / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == sorted(_generator().NOTEBOOKS)


def test_committed_notebooks_match_the_generator():
    """The committed cells are the generator's: regenerate with make_notebooks.py."""
    make = _generator()
    for path in NOTEBOOKS:
        committed = [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]
        generated = [(c.cell_type, c.source) for c in make.build(path.name).cells]
        assert committed == generated, f"{path.name} differs from notebooks/make_notebooks.py"


def _pictures(nb):
    kinds = ("image/svg+xml", "image/png")
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if any(k in o.get("data", {}) for k in kinds)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    if "jitad.draw(" in "".join(c.source for c in nb.cells) and shutil.which("dot") is None:
        message = "Graphviz's dot program is missing (apt-get install graphviz / brew install graphviz)"
        if os.environ.get("CI"):
            pytest.fail(message + "; `make test` installs it")
        pytest.skip(message)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    _generator().execute(nb)  # raises CellExecutionError on the first failing cell
    assert _pictures(nb), f"{path.name} drew no picture"
