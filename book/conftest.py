"""pytest reads this file for the notebooks in book/: nbval's comparison of a cell's outputs
is replaced by the one in validation/notebook_compare.py (strict, spread or anywhere mode;
see validation/README.md). The logic lives there, beside the tools that measure what it
compares; this file only hands pytest its hooks."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "validation"))
import notebook_compare  # noqa: E402

pytest_addoption = notebook_compare.pytest_addoption
pytest_configure = notebook_compare.pytest_configure
pytest_sessionstart = notebook_compare.pytest_sessionstart
