"""Small fixes to the HTML pages Jupyter Book writes.

- sphinx-thebe registers its configuration script each time documents are read, so a page
  can carry it twice, and the browser reports "Identifier 'THEBE_JS_URL' has already been
  declared". Each script is kept once here (by file name and inline body).
- Numbering per page: without numbered section headings Sphinx counts figures and
  equations through the whole book (the answer page opened with equation (26) and Fig. 24).
  Here each page counts its own from 1. A chapter page, whose file name starts with its
  number (book/05_bounds_and_gaps), gets that number as a prefix, so chapter 5's second
  figure is Fig. 5.2 and a reference from another page stays unambiguous; the other pages
  (quick start, the answer, the appendices) are numbered 1, 2, ... Cross-references
  ({numref}, {eq}) read the same numbers, so they keep working.
- vaetut.css (static/): a content column wide enough for the chapters' code (about 100
  characters a line) at a laptop's width, and long output lines wrapped, not scrolled.
"""
import re
from pathlib import Path

CHAPTER = re.compile(r"(?:^|/)(\d+)_[^/]*$")


def page_prefix(docname: str) -> tuple[int, ...]:
    """(5,) for 'book/05_bounds_and_gaps', () for a page that is not a numbered chapter."""
    match = CHAPTER.search(docname)
    return (int(match.group(1)),) if match else ()


def number_per_page(toc_fignumbers: dict) -> None:
    """Renumber, in place, each page's figures, tables, code blocks and equations from 1,
    in the order Sphinx numbered them, prefixed with the page's chapter number."""
    for docname, figtypes in toc_fignumbers.items():
        prefix = page_prefix(docname)
        for numbers in figtypes.values():
            in_order = sorted(numbers, key=numbers.get)
            for i, figure_id in enumerate(in_order, 1):
                numbers[figure_id] = (*prefix, i)


def _number_per_page(app, env):
    # runs after Sphinx's TocTreeCollector (same event, later priority) has numbered them
    number_per_page(env.toc_fignumbers)
    return []


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # the same inline script is registered with filename None and with ""
        key = (str(getattr(script, "filename", script) or ""),
               getattr(script, "attributes", {}).get("body"))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def _add_static(app):
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("env-get-updated", _number_per_page, priority=900)
    app.connect("builder-inited", _add_static)
    app.add_css_file("vaetut.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
