"""validation/notebook_compare.py (through book/conftest.py): `make test-anywhere` compares
the exact cells, the ones tagged in the notebooks, within a written tolerance."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from notebook_folder import book_folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "validation"))  # a folder of scripts, not a package
import notebook_compare as tolerance  # noqa: E402

EXACT = "nbval-check-output"


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
    book = book_folder(tmp_path)
    nbformat.write(_notebook(stored_output, tags), book / "cell.ipynb")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--nbval-lax", "--nbval-current-env", str(book / "cell.ipynb")],
                          cwd=book, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_nbval_lax_with_the_plugin_passes_inside_and_fails_outside(tmp_path):
    # the cell prints "0.3000 nats"; stored values one and two units away
    inside = _nbval_lax(tmp_path / "inside", "0.3001 nats\n", [EXACT])
    assert inside.returncode == 0, inside.stdout + inside.stderr
    outside = _nbval_lax(tmp_path / "outside", "0.3002 nats\n", [EXACT])
    assert outside.returncode == 1, outside.stdout + outside.stderr
    assert "differs beyond the tolerance" in outside.stdout
    # not an exact cell: not compared
    untagged = _nbval_lax(tmp_path / "untagged", "0.3002 nats\n", [])
    assert untagged.returncode == 0, untagged.stdout + untagged.stderr


def tag_problems(notebook: nbformat.NotebookNode, name: str) -> list[str]:
    """What is wrong with a notebook's exact-cell tags: a tag on a cell that is not code
    (nbval would skip it silently, and the cell meant to be compared would not be), a tagged
    cell without an id, or one whose output is also excluded from comparison."""
    problems = []
    for cell in notebook.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if EXACT not in tags:
            continue
        where = f"{name} cell {cell.get('id')!r}"
        if cell.cell_type != "code":
            problems.append(f"{where}: tagged {EXACT} but is a {cell.cell_type} cell")
        if not cell.get("id"):
            problems.append(f"{name}: a cell tagged {EXACT} has no id")
        if tags & {"nbval-ignore-output", "nbval-skip"}:
            problems.append(f"{where}: tagged {EXACT} and also excluded from comparison")
    return problems


def test_a_misplaced_exact_tag_is_reported_by_the_cells_id():
    good = nbformat.v4.new_code_cell("print(1)", metadata={"tags": [EXACT]})
    prose = nbformat.v4.new_markdown_cell("The evidence is exact.", metadata={"tags": [EXACT]})
    skipped = nbformat.v4.new_code_cell("x", metadata={"tags": [EXACT, "nbval-skip"]})
    notebook = nbformat.v4.new_notebook(cells=[good, prose, skipped])
    assert tag_problems(notebook, "nb") == [
        f"nb cell {prose.id!r}: tagged {EXACT} but is a markdown cell",
        f"nb cell {skipped.id!r}: tagged {EXACT} and also excluded from comparison"]
    assert tag_problems(nbformat.v4.new_notebook(cells=[good]), "nb") == []


def test_the_exact_cells_are_tagged_in_the_notebooks_themselves():
    # the tag lives in each cell's metadata (Jupyter's cell-tag editor, or the JSON), so it
    # moves with its cell when cells are added above it: nothing tags cells by position
    tagged, problems = 0, []
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        tagged += sum(EXACT in c.get("metadata", {}).get("tags", []) for c in notebook.cells)
        problems += tag_problems(notebook, path.name)
    assert problems == []
    assert tagged > 0  # make test-anywhere compares some cells, not none
