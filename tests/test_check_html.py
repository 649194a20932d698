"""The browser check of the built book fails on what a reader would see broken."""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_html  # noqa: E402

GOOD_PAGE = """<html><head><style>img { max-width: 100%; }</style></head><body><main>
<p><span class="bibtex-citation"><a href="other.html#top">Someone, 2020</a></span></p>
<figure id="fig-a"><img src="a.png" alt="a picture"><figcaption>A caption.</figcaption></figure>
<p>See <a href="#fig-a">the figure</a> and <a href="other.html#top">the other page</a>.</p>
</main></body></html>"""
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N"
       b"\x00\x00\x00\x00IEND\xaeB`\x82")


def wide_png(width=1400, height=10) -> bytes:
    """A PNG wider than the page's column at a 1280-pixel window (check-html's width)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="PNG")
    return out.getvalue()


def make_site(tmp_path, page=GOOD_PAGE):
    html = tmp_path / "html"
    (html / "book").mkdir(parents=True)
    (html / "book" / "page.html").write_text(page)
    (html / "book" / "other.html").write_text('<html><body><main id="top">x</main></body></html>')
    (html / "book" / "a.png").write_bytes(wide_png())
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


@pytest.mark.slow
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


def measured(code=(), images=(), column=800, equations=(), window=1280, page=None, wide=()):
    return {"column": column, "window": window, "code": list(code), "images": list(images),
            "equations": list(equations), "page": page or window, "wide": list(wide)}


def equation(content, visible=729, scrolls=True):
    return {"label": "(4.1)#", "tex": "x = y", "content": content, "visible": visible,
            "scrolls": scrolls}


def test_an_equation_must_fit_at_1280_and_may_scroll_in_its_box_on_a_phone():
    assert check_html.check_layout(measured(equations=[equation(700)])) == []
    wide = measured(equations=[equation(932)])
    assert any("equation (4.1) 'x = y' does not fit" in p for p in check_html.check_layout(wide))
    on_phone = measured(equations=[equation(932, visible=340)], window=390)
    assert check_html.check_layout(on_phone, phone=True) == []
    cut = measured(equations=[equation(932, visible=340, scrolls=False)], window=390)
    assert any("is cut at a 390-pixel window" in p
               for p in check_html.check_layout(cut, phone=True))


def test_a_page_wider_than_the_phone_fails_naming_what_is_wide():
    wide = [{"element": "span.pre", "text": "'https://example.org/long'", "right": 536}]
    problems = check_html.check_layout(measured(window=390, page=536, wide=wide), phone=True)
    assert problems == ["the page is 536 px wide in a 390-pixel window: span.pre to 536 px "
                        "(\"'https://example.org/long'\")"]
    assert check_html.check_layout(measured(window=390, page=390), phone=True) == []


def test_figure_text_is_measured_from_the_style_the_dpi_and_the_shown_width():
    small, large = check_html.style_font_points()
    assert (small, large) == (10, 12)  # vaetut.plots.BOOK_STYLE, read from its source
    # 10 pt at 200 dpi is 27.8 px in the image; shown at 784 of 1800 px: 12.1 px
    assert abs(check_html.shown_text_px(10, 200, 1800, 784) - 12.1) < 0.05
    fits = {"src": "a.png", "naturalWidth": 1800, "shownWidth": 784, "dpi": 200, "figure": "f"}
    assert check_html.check_layout(measured(images=[fits])) == []
    too_wide = dict(fits, naturalWidth=2580)  # 12.9 inches: 10 pt shows 8.4 px
    assert any("figure f: its 10-point text shows 8.4 px" in p
               for p in check_html.check_layout(measured(images=[too_wide])))
    blown_up = dict(fits, naturalWidth=980)  # 4.9 inches: 12 pt shows 26.7 px
    assert any("figure f: its 12-point text shows 26.7 px" in p
               for p in check_html.check_layout(measured(images=[blown_up])))


def test_raw_latex_in_a_link_and_an_unlabelled_collapsed_cell_are_reported():
    raw = '<a href="#s"><span class="std std-ref">How far from \\log p_\\theta(x)?</span></a>'
    assert check_html.link_latex(f"<main>{raw}</main>") == [
        "raw LaTeX in a link's text: 'How far from \\\\log p_\\\\theta(x)?'"]
    rendered = '<a href="#s">How far from <mjx-container>log p</mjx-container>?</a>'
    assert check_html.link_latex(f"<main>{rendered}</main>") == []
    bar = '<p class="collapsed admonition-title">Show code cell source</p>'
    assert any("does not say what it holds" in p
               for p in check_html.check_dom("p", GOOD_PAGE.replace("</main>", bar + "</main>")))
    named = '<p class="collapsed admonition-title">Check: the split</p>'
    assert check_html.check_dom("p", GOOD_PAGE.replace("</main>", named + "</main>")) == []


def test_check_layout_reports_scrolling_code_and_narrow_figures():
    assert check_html.check_layout(measured(images=[{"src": "a.png", "naturalWidth": 960,
                                                     "shownWidth": 784}])) == []
    wide = {"line": "x = 1", "chars": 120, "scrollWidth": 950, "clientWidth": 798}
    assert any("scrolls sideways" in p and "120 characters" in p
               for p in check_html.check_layout(measured(code=[wide])))
    narrow = {"src": "b.png", "naturalWidth": 640, "shownWidth": 640}
    assert any("b.png is 640 pixels wide" in p
               for p in check_html.check_layout(measured(images=[narrow])))
    broken = {"src": "c.png", "naturalWidth": 0, "shownWidth": 0}  # reported as a failed request
    assert check_html.check_layout(measured(images=[broken])) == []
    assert "not measured" in check_html.check_layout(None)[0]


def test_measurements_reads_what_the_page_script_left():
    page = (f'<html><body><main>x</main><script type="application/json" id="{check_html.MEASURE_ID}">'
            '{"column": 800, "window": 1280, "code": [], "images": [], "equations": [], '
            '"page": 1280, "wide": []}</script></body></html>')
    assert check_html.measurements(page) == measured()
    assert check_html.measurements(GOOD_PAGE) is None


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None and not os.environ.get("CI"),
                    reason="no Chromium here (CI installs it, so there this test runs)")
def test_the_browser_measures_code_width_and_image_pixels_at_1280_pixels(tmp_path, capsys):
    html, toc = make_site(tmp_path)
    args = ["--toc", str(toc), "--html", str(html), "--screenshots", str(tmp_path / "shots")]
    short = '<div class="highlight"><pre>x = 1</pre></div>'
    page = GOOD_PAGE.replace("</main>", short + "</main>")
    (html / "book" / "page.html").write_text(page)
    assert check_html.main(args) == 0, capsys.readouterr().out
    long_line = "y = " + "1 + " * 100 + "1"
    (html / "book" / "page.html").write_text(
        page.replace("x = 1", long_line))  # 405 characters: scrolls in any column at 1280 px
    assert check_html.main(args) == 1
    assert "scrolls sideways at a 1280-pixel window" in capsys.readouterr().out
    (html / "book" / "page.html").write_text(
        page.replace("</main>", '<p style="white-space: nowrap">' + "word " * 100 + "</p></main>"))
    assert check_html.main(args) == 1  # 500 words on one line: wider than any window
    out = capsys.readouterr().out
    assert "wide in a 390-pixel window" in out and "wide in a 1280-pixel window" in out, out
    (html / "book" / "a.png").write_bytes(PNG)  # 1 pixel wide
    (html / "book" / "page.html").write_text(page)
    assert check_html.main(args) == 1
    assert "a.png is 1 pixels wide" in capsys.readouterr().out


def test_a_type_size_the_figures_code_sets_is_measured_too(tmp_path):
    cells = [{"cell_type": "code", "source": ["vaetut.plots.draw_graph(order, ax)\n"],
              "metadata": {"mystnb": {"figure": {"name": "fig-graph"}}}, "outputs": []},
             {"cell_type": "code",
              "source": ["ax.legend(fontsize='small')\nax.text(0, 0, 'a', fontsize=8)"],
              "metadata": {"mystnb": {"figure": {"name": "fig-legend"}}}, "outputs": []},
             {"cell_type": "code", "source": ["plt.plot(x)"],
              "metadata": {"mystnb": {"figure": {"name": "fig-plain"}}}, "outputs": []}]
    notebook = tmp_path / "page.ipynb"
    notebook.write_text(json.dumps({"cells": cells}))
    # draw_graph writes its boxes' labels at 10 points (vaetut/plots.py), read from its source
    assert check_html.explicit_sizes(notebook) == {"fig-graph": 10.0, "fig-legend": 8.0}
    assert check_html.points("'small'") == pytest.approx(0.833 * 11)
    graph = {"src": "g.png", "naturalWidth": 1900, "shownWidth": 784, "dpi": 200,
             "figure": "fig-graph", "points": 7.5}  # 9.5 inches: 7.5 pt shows 8.6 px
    assert any("figure fig-graph: its 7.5-point text shows 8.6 px" in p
               for p in check_html.check_layout(measured(images=[graph])))
    assert check_html.check_layout(measured(images=[dict(graph, points=None)])) == []
