"""Packaging: the wheel installs and runs read-only as a user without a home, leaves no
cache files in the package, carries py.typed and LICENSE; the sdist holds everything its
test suite needs and collects; one version; signatures; mypy on jitad/."""

import importlib.metadata
import inspect
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

import jitad

ROOT = Path(__file__).resolve().parent.parent
GRADIENT = """
import numpy as np, jitad
F = jitad.trace(lambda x: x[0] * jitad.exp(x[1]), np.zeros(2))
print(F.grad(np.array([2.0, 0.0])).tolist())
"""


def _run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


def _clean_env(**extra):
    """The environment of a new user: no test cache dir, no PYTHONPATH, no XDG cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "JITAD_CACHE_DIR", "XDG_CACHE_HOME")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("no project source to build a wheel from")
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)])
    (path,) = out.glob("jitad-*.whl")
    return path


def _install(wheel, target):
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)])


def test_wheel_carries_license_types_and_version(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "jitad/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert f"jitad-{jitad.__version__}-" in wheel.name


def test_installed_version_is_the_package_version():
    assert importlib.metadata.version("jitad") == jitad.__version__


@pytest.mark.slow
def test_no_cache_files_left_in_the_package(wheel, tmp_path):
    # Numba's default would write kernels into jitad/__pycache__; files pip does not know
    # about survive `pip uninstall` and make the leftover directory importable.
    target = tmp_path / "site"
    home = tmp_path / "home"
    home.mkdir()
    _install(wheel, target)
    env = _clean_env(HOME=str(home), PYTHONPATH=str(target))
    done = _run([sys.executable, "-c", "import jitad; print(jitad._config.CACHE_DIR)\n" + GRADIENT], env=env)
    assert done.stdout.split("\n")[0] == str(home / ".cache" / "jitad" / "numba")
    assert "[1.0, 2.0]" in done.stdout
    assert list((home / ".cache" / "jitad" / "numba").rglob("*.nbi")), "no kernel was cached"
    (record,) = target.glob("jitad-*.dist-info/RECORD")
    known = {line.split(",")[0] for line in record.read_text().splitlines()}
    package = target / "jitad"
    stray = [
        p.relative_to(target).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.relative_to(target).as_posix() not in known and p.suffix != ".pyc"
    ]
    assert stray == []


def _nobody():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to run as an unprivileged user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*cmd, sys.executable, "-c", "import numba"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user 'nobody' cannot run this interpreter with numba")
    return cmd


@pytest.fixture
def read_only_install(wheel):
    """The wheel installed into a directory that no one can write, readable by everyone."""
    base = Path(tempfile.mkdtemp(prefix="jitad-ro-"))
    target = base / "site"
    _install(wheel, target)
    for path in [base, *target.rglob("*"), target]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    yield target
    for path in [base, target, *target.rglob("*")]:
        path.chmod(0o755)
    shutil.rmtree(base)


@pytest.fixture
def temp_for_nobody():
    """A directory for TMPDIR that the user nobody can reach (pytest's tmp_path is private)."""
    path = Path(tempfile.mkdtemp(prefix="jitad-tmp-"))
    yield path
    path.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.slow
def test_read_only_install_without_home_runs_uncached(read_only_install, temp_for_nobody):
    """No usable location at all (package, home, temp dir): one warning, right numbers."""
    setpriv = _nobody()
    # Python falls back to /tmp from an unwritable TMPDIR: make TMPDIR writable, and plant
    # the per-user directory there owned by someone else, which jitad must refuse.
    temp_for_nobody.chmod(0o777)
    (temp_for_nobody / f"jitad-{pwd.getpwnam('nobody').pw_uid}").mkdir(mode=0o777)
    env = _clean_env(HOME="/nonexistent", TMPDIR=str(temp_for_nobody), PYTHONPATH=str(read_only_install))
    done = _run([*setpriv, sys.executable, "-c", GRADIENT], env=env, cwd="/")
    assert done.stdout.strip() == "[1.0, 2.0]"
    assert done.stderr.count("RuntimeWarning: jitad: no writable directory for compiled kernels") == 1


def test_read_only_install_without_home_caches_in_temp(read_only_install, temp_for_nobody):
    setpriv = _nobody()
    temp_for_nobody.chmod(0o777)
    env = _clean_env(HOME="/nonexistent", TMPDIR=str(temp_for_nobody), PYTHONPATH=str(read_only_install))
    script = "import os, jitad; print(jitad._config.CACHE_DIR, oct(os.stat(jitad._config.CACHE_DIR).st_mode & 0o777))"
    done = _run([*setpriv, sys.executable, "-W", "error", "-c", script], env=env, cwd="/")
    uid = pwd.getpwnam("nobody").pw_uid
    assert done.stdout.split() == [str(temp_for_nobody / f"jitad-{uid}" / "numba"), "0o700"]


def test_planted_temp_cache_dir_is_not_used(tmp_path):
    # A directory someone else can write must never supply machine code to load.
    planted = tmp_path / "cache"
    planted.mkdir()
    planted.chmod(0o777)
    env = _clean_env(JITAD_CACHE_DIR=str(planted), HOME=str(tmp_path / "home"))
    done = _run([sys.executable, "-c", "import jitad; print(jitad._config.CACHE_DIR)"], env=env, cwd=tmp_path)
    assert done.stdout.strip() == str(tmp_path / "home" / ".cache" / "jitad" / "numba")


@pytest.mark.slow
def test_sdist_holds_the_test_suite_and_it_collects(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a clone: the sdist is built from a clone")
    pytest.importorskip("build")
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path), str(ROOT)])
    (sdist,) = tmp_path.glob("jitad-*.tar.gz")
    with tarfile.open(sdist) as tar:
        prefix = f"jitad-{jitad.__version__}/"
        members = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
        tar.extractall(tmp_path, filter="data")
    tracked = _run(["git", "ls-files"], cwd=ROOT).stdout.split()
    missing = [f for f in tracked if f not in members and f != ".gitignore" and (ROOT / f).exists()]
    assert missing == []
    done = _run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path / prefix,
        env=_clean_env(),
    )
    assert " tests collected" in done.stdout or "tests collected" in done.stdout


@pytest.mark.parametrize(
    "function, shown",
    [(jitad.exp, "(x, /)"), (jitad.hypot, "(x, y, /)"), (jitad.atan2, "(y, x, /)")],
)
def test_generated_functions_keep_signature_and_doc(function, shown):
    assert str(inspect.signature(function)) == shown
    assert function.__doc__
    assert function.__name__ in ("exp", "hypot", "atan2")


def test_mypy_passes_on_jitad():
    pytest.importorskip("mypy")
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("mypy reads its settings from pyproject.toml")
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
