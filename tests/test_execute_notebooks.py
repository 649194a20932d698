"""validation/execute_notebooks.py: `make notebooks` stores a cell's whole output or stops."""
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellTimeoutError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "validation"))  # a folder of scripts, not a package
import execute_notebooks  # noqa: E402

LINES = 3000


def _chatty_notebook(path: Path) -> str:
    """A notebook whose one cell prints LINES lines, each flushed as its own message: after
    the cell's reply most of them are still on their way."""
    cell = nbformat.v4.new_code_cell(f"for i in range({LINES}):\n    print(i, flush=True)")
    nb = nbformat.v4.new_notebook(cells=[cell], metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path.read_text()


@pytest.mark.slow
def test_output_still_on_its_way_is_waited_for_or_the_run_stops(tmp_path):
    path = tmp_path / "chatty.ipynb"
    before = _chatty_notebook(path)
    # no time at all to wait: nbclient's default would drop the late lines and store the
    # cell short without a word; the tool must refuse, and leave the stored notebook alone
    with pytest.raises(CellTimeoutError, match="IOPub"):
        execute_notebooks.execute(path, iopub_timeout=0)
    assert path.read_text() == before
    execute_notebooks.execute(path)  # the tool's own wait: every line stored
    text = "".join(o.get("text", "") for o in nbformat.read(path, as_version=4).cells[0].outputs)
    assert text.split() == [str(i) for i in range(LINES)]
