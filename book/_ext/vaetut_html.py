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
  characters a line) at a laptop's width, long output lines wrapped, not scrolled, and a
  display equation wider than the column scrolling in its own box.
- A reference by name to a section whose title holds math ({ref}`sec-train-iwae`) shows the
  title as Sphinx stores it, raw LaTeX ("How far is the ELBO from \\log p_\\theta(x)?");
  here the link gets the title's own nodes, math included, which MathJax renders.
- Figures show at the size they were drawn (96 CSS pixels an inch, from the dpi the PNG
  records), so a point of type is the same size in every figure; wider ones shrink to the
  column.
- Collapsed cells say what they hold: a check cell ("# Check: the split and binary pixels")
  is labelled "Check: the split and binary pixels", the install cell "Setup (installs vaetut
  where it is missing)", and an exercise's collapsed solution code goes inside the "Solution"
  dropdown just above it, so each solution has one control (the notebooks are unchanged).
"""
import copy
import re
from pathlib import Path

from docutils import nodes

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


SETUP_LABEL = "Setup (installs vaetut where it is missing)"
# A check cell opens with "# Check: what it asserts"; a demonstration with "# Demonstration,
# not evidence: why". That first comment line is the label; the lines after it explain.
LABELLED = re.compile(r"^#\s*((?:Check:|Demonstration, not evidence:).*?)\s*$")


def cell_label(source: str) -> str | None:
    """What a collapsed code cell's bar says, from its source; None keeps myst-nb's default."""
    first = source.strip().splitlines()[0] if source.strip() else ""
    if first.startswith("# Colab, or any Python without vaetut"):
        return SETUP_LABEL
    match = LABELLED.match(first)
    if not match:
        return None
    label = match.group(1)
    if label.count("(") > label.count(")"):  # an aside that runs on to the next line
        label = label[:label.rindex("(")].rstrip()
    return label


def _is_dropdown(node) -> bool:
    return isinstance(node, nodes.container) and node.get("design_component") == "dropdown"


def label_collapsed_cells(doctree) -> None:
    """Name each collapsed code cell by what it holds; put a collapsed cell that follows a
    dropdown (an exercise's "Solution") inside that dropdown."""
    cells = [cell for cell in doctree.findall(nodes.container)
             if cell.get("nb_element") == "cell_code" and cell.get("hide_mode")]
    # what precedes each cell in the page as written (moving one must not move the next)
    preceding = {id(cell): cell.parent[cell.parent.index(cell) - 1]
                 if cell.parent.index(cell) > 0 else None for cell in cells}
    for cell in cells:
        parent, before = cell.parent, preceding[id(cell)]
        if before is not None and _is_dropdown(before):
            parent.remove(cell)
            del cell["hide_mode"]
            before.append(cell)
            continue
        sources = [n.astext() for n in cell.findall(nodes.literal_block)]
        label = cell_label(sources[0]) if sources else None
        if label:
            cell["prompt_show"] = cell["prompt_hide"] = label


def _label_collapsed_cells(app, doctree):
    label_collapsed_cells(doctree)


def math_titles_in_links(app, doctree, docname) -> None:
    """Give a named reference to a section whose title holds math the title's own nodes."""
    labels = app.env.domaindata["std"]["labels"]
    with_math = {labelid: target for target, labelid, title in labels.values()
                 if "\\" in (title or "")}
    for ref in list(doctree.findall(nodes.reference)):
        anchor = ref.get("refid") or ref.get("refuri", "").partition("#")[2]
        shown = ref.children[0] if ref.children else None
        if (anchor not in with_math or not isinstance(shown, nodes.inline)
                or "\\" not in shown.astext()):
            continue
        section = next(iter(app.env.get_doctree(with_math[anchor]).findall(
            lambda n, a=anchor: isinstance(n, nodes.section) and a in n["ids"])), None)
        if section is None or not isinstance(section[0], nodes.title):
            continue
        shown.children = []
        shown.extend(copy.deepcopy(child) for child in section[0].children)


CSS_PX_PER_INCH = 96


def physical_width(path: Path) -> int | None:
    """The CSS width at which a PNG shows at the size it was drawn (its pixels over the dpi it
    records, at 96 CSS pixels an inch), or None without a recorded dpi."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            dpi = image.info.get("dpi")
            width = image.width
    except OSError:
        return None
    return round(width / float(dpi[0]) * CSS_PX_PER_INCH) if dpi and dpi[0] else None


def figures_at_drawn_size(app, doctree, docname) -> None:
    """Show each notebook figure at the size it was drawn, not stretched to the column: a
    point of type is then the same size on the page in every figure (10 points, 13 px),
    where stretching a 5-inch figure to the column made its text twice that of a 9-inch one.
    A figure wider than the column still shrinks to it (the theme's max-width: 100%)."""
    for image in doctree.findall(nodes.image):
        uri = image.get("uri", "")
        if image.get("width") or not uri.endswith(".png"):
            continue
        path = Path(uri) if Path(uri).is_absolute() else Path(app.srcdir) / uri
        width = physical_width(path) if path.is_file() else None
        if width:
            image["width"] = f"{width}px"


def _add_static(app):
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("env-get-updated", _number_per_page, priority=900)
    app.connect("builder-inited", _add_static)
    app.connect("doctree-read", _label_collapsed_cells)
    app.connect("doctree-resolved", math_titles_in_links)
    app.connect("doctree-resolved", figures_at_drawn_size)
    app.add_css_file("vaetut.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
