"""Run the Python examples in Markdown files (README.md, docs/) as a reader would: every
```python block of a file in order, in one namespace, in a fresh interpreter, from an
empty directory. A block preceded by ``<!-- skip: reason -->`` is left out."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jitad

_FENCE = re.compile(r"^(?:<!-- skip: (?P<skip>.+?) -->\n)?```python\n(?P<code>.*?)^```$", re.M | re.S)

# Each block compiled with its Markdown line numbers, so a traceback points into the file.
_DRIVER = textwrap.dedent(
    """
    import json, sys
    path, blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for line, code in blocks:
        exec(compile("\\n" * line + code, path, "exec"), namespace)
    """
)


def python_blocks(path):
    """[(line, code)] of the ```python blocks in ``path`` not marked to skip (line: 0-based
    line of the code's first line)."""
    text = path.read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group("skip") is None:
            blocks.append((text.count("\n", 0, m.start("code")), m.group("code")))
    return blocks


def run_blocks(path, workdir, timeout=600):
    """Run the blocks of ``path`` in a fresh interpreter in ``workdir``; return its output.
    Fails the calling test with the interpreter's traceback when a block raises."""
    spec = workdir / "_blocks.json"
    spec.write_text(json.dumps([str(path), python_blocks(path)]))
    # The examples run against the jitad under test (a clone, an sdist), not whichever one
    # the interpreter would find from an empty directory.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(jitad.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(spec)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{path.name}: an example failed\n{done.stdout}\n{done.stderr}"
    return done.stdout
