"""Every number a page's text quotes is one the page shows (tools/prose_numbers.py).

The book is rendered from the stored outputs, so a page's prose and its outputs must agree:
a number in the text that no output prints (nor the code writes) is a stale quote.
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_html  # noqa: E402
import prose_numbers  # noqa: E402

# the executed pages; the .md pages have no outputs (tools/prose_numbers.py says why)
PAGES = [ROOT / (page + ".ipynb") for page in check_html.toc_pages(ROOT / "_toc.yml")
         if (ROOT / (page + ".ipynb")).exists()]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_page_quotes_only_numbers_it_shows(page):
    missing = prose_numbers.unshown(page)
    assert not missing, (f"{page.name} quotes numbers that none of its outputs print and its "
                         "code does not write: " + "; ".join(
                             f"{q.token!r} in ...{q.context}..." for q in missing))


def notebook(tmp_path, text, printed, code="print(x)"):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": [text]},
             {"cell_type": "code", "metadata": {}, "source": [code], "execution_count": 1,
              "outputs": [{"output_type": "stream", "name": "stdout", "text": [printed]}]}]
    path = tmp_path / "page.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return path


def tokens(path):
    return [q.token for q in prose_numbers.unshown(path)]


def test_a_number_no_output_prints_fails(tmp_path, capsys):
    # the case: the text kept a stored run's -94.45 under a cell printing -94.42
    path = notebook(tmp_path, "The bound is −94.45 nats, at least about −94.5.",
                    "iwae bound: -94.42 >= -94.4\n")
    assert tokens(path) == ["−94.45", "−94.5"]
    assert prose_numbers.main([str(path)]) == 1
    assert "'−94.45' in: ...The bound is −94.45" in capsys.readouterr().out
    fixed = notebook(tmp_path, "The bound is −94.42 nats, about −94.4.", "iwae bound: -94.42\n")
    assert tokens(fixed) == [] and prose_numbers.main([str(fixed)]) == 0


def test_a_quote_may_round_a_printed_number_but_not_add_digits(tmp_path):
    assert tokens(notebook(tmp_path, "about 5.0 nats, or 5", "kl 5.04\n")) == []
    assert tokens(notebook(tmp_path, "a KL of 5.04", "kl 5.0\n")) == ["5.04"]
    assert tokens(notebook(tmp_path, "a KL of 5.00", "kl 5\n")) == ["5.00"]  # more digits
    assert tokens(notebook(tmp_path, "a gap of 2.3 nats", "gap: -2.31\n")) == []  # sign aside
    assert tokens(notebook(tmp_path, "on 1,437 digits", "(1437, 64)\n")) == []


def test_math_code_references_and_places_are_not_quotes(tmp_path):
    text = ("3. an item\n$\\log 360 = 5.89$ and\n$$x = 7.5$$\n`k=77` {numref}`fig-3` {cite}`a2013` "
            "[chapter 9](09_x.ipynb) chapters 4 and 5, Fig. 5.2, equation (1.3), float32, "
            "x86-64, torch 2.13.0, in 2013\n```python\ny = 3.3\n```\n(sec-4)=\n")
    assert tokens(notebook(tmp_path, text, "nothing\n")) == []


def test_a_number_the_code_writes_may_be_quoted(tmp_path):
    path = notebook(tmp_path, "20,000 samples over 30 epochs", "done\n",
                    code="fit(epochs=30)\nz = draw(20_000)")
    assert tokens(path) == []


def test_captions_and_alt_texts_are_prose(tmp_path):
    path = notebook(tmp_path, "Text.", "elbo -18.8\n")
    nb = json.loads(path.read_text())
    nb["cells"][1]["metadata"]["mystnb"] = {"figure": {"caption": "ELBO up to -18.8"},
                                            "image": {"alt": "a line ending near -19.9"}}
    path.write_text(json.dumps(nb))
    assert tokens(path) == ["-19.9"]
