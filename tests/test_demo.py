"""``python -m jitad`` shows the seed documents' numbers exactly."""

import subprocess
import sys

from jitad import demo


def test_seed_graph_static_and_dynamic(capsys):
    demo.show_seed_graph()
    out = capsys.readouterr().out
    assert "g = 47.0, dg/da = -432.0 (-252 - 180 d = -432.0), dg/do = -1.0" in out
    assert "dg/d(b, c, d, e, f) = 144, 42, 12, 6, 3" in out
    assert "at a = 2, o = 1: g = 47, (dg/da, dg/do) = (-432, -1)" in out
    assert "at a = 1, o = 1: g = 1829, (dg/da, dg/do) = (-3132, -1)  (-252 - 180 d = -3132)" in out


def test_adnumber_example_with_every_digit(capsys):
    demo.show_adnumber()
    out = capsys.readouterr().out
    # The seed's printed numbers, digit for digit.
    assert "df/dx2 = 1.6165488003791766 " in out
    assert "df/d[sin(x2)] = 0.20073512936690338" in out
    assert "df/d[x2+exp(x1)] = -0.05961284871202578" in out
    assert "df/d[x1*x2] = 1.0" in out


def test_training_loop_runs(capsys):
    demo.show_training(steps=3, reference_steps=1)
    out = capsys.readouterr().out
    assert "step 0 loss 1.219417, accuracy 47%" in out
    assert "per step: jitad" in out


def test_module_runs_as_a_program():
    code = "import jitad.demo as d; d.show_seed_graph(); d.show_adnumber()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "g = 47.0" in out and "1.6165488003791766" in out
