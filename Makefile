# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test bench install docs clean

# The demo needs only jitad's own dependencies (numba, numpy).
$(VENV)/.demo-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# The suite adds its references and tools: SciPy, PyTorch, Dask, Jupyter, mypy, MkDocs.
$(VENV)/.installed: pyproject.toml $(VENV)/.demo-installed
	$(PIP) install -q -e ".[test,notebooks,dask,torch,docs]"
	# Graphviz's dot renders the graph pictures that the notebooks draw (Debian package).
	command -v dot >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq graphviz >/dev/null; } \
		|| echo "warning: could not install Graphviz (dot): jitad.draw will not render"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.demo-installed
	$(PY) -m jitad

test: $(VENV)/.installed
	$(PY) -m pytest -q

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) -m benchmarks.run

docs: $(VENV)/.installed
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache
