"""book/conftest.py: `make test-anywhere` compares the exact cells within a written tolerance."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("book_conftest", ROOT / "book" / "conftest.py")
tolerance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tolerance)


@pytest.mark.parametrize("token, unit", [("-18.63", 0.01), ("14.1444", 1e-4), ("9.2e-14", 1e-15),
                                         ("3000", 0.0), ("5.", 1.0), (".5", 0.1), ("1e-9", 1e-9)])
def test_one_unit_in_the_last_printed_digit(token, unit):
    assert tolerance.last_digit_unit(token) == pytest.approx(unit, rel=1e-12)


@pytest.mark.parametrize("stored, fresh", [
    ("log p(x) = 14.1444 nats", "log p(x) = 14.1445 nats"),   # one unit: a rounding boundary
    ("log p(x) = 14.1444 nats", "log p(x) = 14.1443 nats"),
    ("gap 0.002 at k=5000", "gap 0.001 at k=5000"),
    ("1234567.5", "1234568.5"),                               # 1e-6 relative of the stored
    ("-0.00", "0.00"),
    ("error < 1e-09", "error < 1e-09"),
])
def test_inside_the_tolerance_passes(stored, fresh):
    assert tolerance.numbers_match(stored, fresh)


@pytest.mark.parametrize("stored, fresh", [
    ("log p(x) = 14.1444 nats", "log p(x) = 14.1446 nats"),   # two units
    ("log p(x) = 14.1444 nats", "log p(x) = 14.1442 nats"),
    ("16 of 16 active", "15 of 16 active"),                   # integers are counts: exact
    ("1234567.5", "1234569.0"),
    ("log p(x) = 14.1444 nats", "log q(x) = 14.1444 nats"),  # the words must be equal
    ("a 1.0 b 2.0", "a 1.0 b"),                               # and the count of numbers
    ("nan", "0.0"),
])
def test_just_outside_the_tolerance_fails(stored, fresh):
    assert not tolerance.numbers_match(stored, fresh)


def _notebook(stored_output: str, tags: list[str]) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("print(f'{0.1 + 0.2:.4f} nats')", execution_count=1,
                                     metadata={"tags": tags})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored_output)]
    return nbformat.v4.new_notebook(cells=[cell], metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})


def _nbval_lax(tmp_path: Path, stored_output: str, tags: list[str]) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "book" / "conftest.py", tmp_path / "conftest.py")
    nbformat.write(_notebook(stored_output, tags), tmp_path / "cell.ipynb")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--nbval-lax", "--nbval-current-env", str(tmp_path / "cell.ipynb")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_nbval_lax_with_the_plugin_passes_inside_and_fails_outside(tmp_path):
    # the cell prints "0.3000 nats"; stored values one and two units away
    inside = _nbval_lax(tmp_path, "0.3001 nats\n", ["nbval-check-output"])
    assert inside.returncode == 0, inside.stdout + inside.stderr
    outside = _nbval_lax(tmp_path, "0.3002 nats\n", ["nbval-check-output"])
    assert outside.returncode == 1, outside.stdout + outside.stderr
    assert "differs beyond the tolerance" in outside.stdout
    untagged = _nbval_lax(tmp_path, "0.3002 nats\n", [])  # not an exact cell: not compared
    assert untagged.returncode == 0, untagged.stdout + untagged.stderr
