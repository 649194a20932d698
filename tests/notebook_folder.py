"""A folder laid out like the repository, for running nbval on a made-up notebook the way
`make test` runs it on the book (the notebook-comparison tests)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def book_folder(tmp_path: Path) -> Path:
    """tmp_path/book holding a copy of book/conftest.py, beside a link to validation/: the
    layout that conftest expects, so nbval run there compares as `make test` does."""
    book = tmp_path / "book"
    book.mkdir(parents=True)
    (book / "conftest.py").write_text((ROOT / "book" / "conftest.py").read_text())
    (tmp_path / "validation").symlink_to(ROOT / "validation", target_is_directory=True)
    return book
