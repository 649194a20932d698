"""The browser check of the built book fails on what a reader would see broken."""
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_html  # noqa: E402

GOOD_PAGE = """<html><body><main>
<p><span class="bibtex-citation"><a href="other.html#top">Someone, 2020</a></span></p>
<figure id="fig-a"><img src="a.png" alt="a picture"><figcaption>A caption.</figcaption></figure>
<p>See <a href="#fig-a">the figure</a> and <a href="other.html#top">the other page</a>.</p>
</main></body></html>"""
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N"
       b"\x00\x00\x00\x00IEND\xaeB`\x82")


def make_site(tmp_path, page=GOOD_PAGE):
    html = tmp_path / "html"
    (html / "book").mkdir(parents=True)
    (html / "book" / "page.html").write_text(page)
    (html / "book" / "other.html").write_text('<html><body><main id="top">x</main></body></html>')
    (html / "book" / "a.png").write_bytes(PNG)
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/page\nchapters:\n  - file: book/other\n")
    return html, toc


def test_toc_pages_reads_the_book_order():
    pages = check_html.toc_pages(ROOT / "_toc.yml")
    assert pages[0] == "book/intro" and "book/quickstart" in pages


@pytest.mark.parametrize("broken, problem", [
    ('<img src="a.png">', "image without alt text"),
    ('<figure id="f"><img src="a.png" alt="x"></figure>', "figure without caption"),
    ('<div class="math notranslate">\\[x^2\\]</div>', "math left as raw TeX"),
    ('<p>as shown by {cite}`nobody2020`</p>', "unparsed role"),
    ('<p>see [?]</p>', "unresolved citation"),
    ('<span class="bibtex-citation" id="id1">[]</span>', "unresolved citation"),
    ('<span class="xref std std-ref">fig-missing</span>', "unresolved reference"),
])
def test_check_dom_finds_each_defect(broken, problem):
    assert check_html.check_dom("p", GOOD_PAGE) == []
    page = GOOD_PAGE.replace("</main>", broken + "</main>")
    assert any(problem in p for p in check_html.check_dom("p", page))


def test_unlabelled_display_math_is_reported():
    rendered = '<div class="math"><mjx-container>x</mjx-container></div>'
    labelled = '<div class="math"><span class="eqno">(1)</span><mjx-container>x</mjx-container></div>'
    assert any("without a label" in p for p in
               check_html.check_dom("p", GOOD_PAGE.replace("</main>", rendered + "</main>")))
    assert check_html.check_dom("p", GOOD_PAGE.replace("</main>", labelled + "</main>")) == []


def test_check_links_finds_missing_pages_and_anchors(tmp_path):
    html, _ = make_site(tmp_path)
    assert check_html.check_links(html, html / "book" / "page.html") == []
    for href, problem in (("nowhere.html", "broken link"), ("other.html#nope", "broken anchor"),
                          ("#nope", "broken anchor")):
        (html / "book" / "page.html").write_text(GOOD_PAGE.replace("#fig-a", href))
        assert any(problem in p for p in check_html.check_links(html, html / "book" / "page.html"))


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(BROWSER is None and not os.environ.get("CI"),
                    reason="no Chromium here (CI installs it, so there this test runs)")
def test_the_browser_check_passes_a_good_page_and_fails_a_broken_figure_path(tmp_path, capsys):
    html, toc = make_site(tmp_path)
    args = ["--toc", str(toc), "--html", str(html), "--screenshots", str(tmp_path / "shots")]
    assert check_html.main(args) == 0
    assert (tmp_path / "shots" / "book_page.png").read_bytes()[:4] == b"\x89PNG"
    (html / "book" / "page.html").write_text(GOOD_PAGE.replace('src="a.png"', 'src="missing.png"'))
    assert check_html.main(args) == 1
    out = capsys.readouterr().out
    assert re.search(r"request failed: 404 /book/missing.png", out), out


def test_the_workflow_runs_the_same_targets_as_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    workflow = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    targets = re.findall(r"^(?:stage )?make ([\w-]+)", ci, flags=re.M)
    assert targets == ["test", "book", "check-html"]
    assert re.findall(r"run: make ([\w-]+)", workflow) == targets
    assert "upload-pages-artifact" in workflow and "_build/html" in workflow


def test_pre_commit_keeps_notebook_outputs():
    config = (ROOT / ".pre-commit-config.yaml").read_text()
    assert "nbstripout" in config and "--keep-output" in config and "ruff" in config
