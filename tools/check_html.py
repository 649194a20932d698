"""Check the built book as a reader's browser meets it: `make check-html`.

Serves _build/html on localhost, opens every page of _toc.yml in headless Chromium (with
every other host unresolvable, so the book must work offline), and fails if a page is
missing, an asset does not load (the server logs every 404), an image is broken or has
no alt text, a figure has no caption, math is left as raw TeX, a reference or citation is
unresolved, an internal link points at a missing page or anchor, or the console shows an
error, a link's text shows raw LaTeX, or a collapsed cell's bar does not say what it holds.
It measures each page in the live layout at two widths. At a 1280-pixel window (a laptop) it
fails if a code block scrolls sideways, a display equation does not fit its column, a figure
image has fewer pixels across than the column, or a figure's text (at the sizes
vaetut.plots.BOOK_STYLE sets, or smaller ones the figure's cell or the vaetut.plots function
it calls writes as fontsize=..., from the image's dpi and shown width) shows under 10 or over
20 pixels high. At 390 pixels (a phone, measured in a frame of that width) it fails if a display
equation is cut rather than scrolling in its own box; at both, if the page is wider than the
window. Saves a PNG of each page's first screen under _build/screenshots/.
"""
from __future__ import annotations

import argparse
import ast
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import yaml
from bs4 import BeautifulSoup

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  # every host but this one is unknown: a remote asset fails to load
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
WINDOW = (1280, 900)  # a laptop's browser window, in CSS pixels
PHONE = (390, 844)  # a phone's, held upright

# Served into a page (at /page.html?measure): after the page has loaded and settled (MathJax,
# fonts), measures in the live layout what the DOM alone cannot show, and leaves the result
# as JSON in the DOM for --dump-dom. Collapsed cells (<details>) are opened first, as a
# reader may open them.
MEASURE_ID = "check-html-measure"
MEASURE_SCRIPT = """<script>
window.addEventListener("load", () => setTimeout(() => {
  document.querySelectorAll("details").forEach((d) => { d.open = true; });
  const main = document.querySelector("main") || document.body;
  const article = main.querySelector("article") || main;
  const style = getComputedStyle(article);
  const column = article.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const code = [];
  main.querySelectorAll("div.highlight pre").forEach((pre) => {
    if (pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 1) {
      const widest = pre.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), "");
      code.push({line: widest.slice(0, 80), chars: widest.length,
                 scrollWidth: pre.scrollWidth, clientWidth: pre.clientWidth});
    }
  });
  const images = [];
  main.querySelectorAll("div.cell_output img, figure img").forEach((img) => {
    images.push({src: img.getAttribute("src"), naturalWidth: img.naturalWidth,
                 shownWidth: img.clientWidth,
                 figure: (img.closest("figure") || {}).id || ""});
  });
  const equations = [];
  main.querySelectorAll("div.math").forEach((box) => {
    const mjx = box.querySelector("mjx-container");
    if (!mjx) return;  // reported as raw TeX
    const boxRect = box.getBoundingClientRect(), mjxRect = mjx.getBoundingClientRect();
    const overflow = getComputedStyle(mjx).overflowX;
    let tex = "";
    try { tex = MathJax.startup.document.getMathItemsWithin(box)[0].math; } catch (e) {}
    equations.push({label: ((box.querySelector(".eqno") || {}).textContent || "").trim(),
                    tex: tex.trim().slice(0, 70),
                    content: (mjx.querySelector("mjx-math") || mjx).getBoundingClientRect().width,
                    visible: Math.min(mjxRect.right, boxRect.right) -
                             Math.max(mjxRect.left, boxRect.left),
                    scrolls: (overflow === "auto" || overflow === "scroll") &&
                             mjxRect.right <= boxRect.right + 1});
  });
  const wide = [];
  const page = document.documentElement.scrollWidth;
  if (page > window.innerWidth + 1) {
    const past = (el) => el.getBoundingClientRect().right > window.innerWidth + 1;
    document.querySelectorAll("body *").forEach((el) => {
      if (wide.length >= 6 || !past(el) || [...el.children].some(past)) return;
      for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
        if (getComputedStyle(up).overflowX !== "visible") return;  // scrolls in its own box
      }
      wide.push({element: el.tagName.toLowerCase() + "." + String(el.className).split(" ")[0],
                 text: el.textContent.trim().slice(0, 60),
                 right: Math.round(el.getBoundingClientRect().right)});
    });
  }
  // in check-html's phone frame (a window cannot be made narrower than 500 px), the result
  // goes into the frame's parent, whose DOM is the one dumped
  const into = window.parent !== window ? window.parent.document : document;
  const out = into.createElement("script");
  out.type = "application/json";
  out.id = "%s";
  out.textContent = JSON.stringify({column: column, window: window.innerWidth, code: code,
                                    images: images, equations: equations, page: page,
                                    wide: wide});
  into.body.appendChild(out);
}, 2000));
</script>""" % MEASURE_ID


# A page at a phone's width: headless Chromium will not make a window narrower than 500 px, so
# the page is measured in a frame of the phone's size (its media queries see that width).
PHONE_FRAME = ('<html><body style="margin:0"><iframe src="{src}" style="border:0; '
               'width:{width}px; height:{height}px"></iframe></body></html>')


def toc_pages(toc_file: Path) -> list[str]:
    """The documents of a _toc.yml, as paths without suffix (e.g. 'book/intro')."""
    toc = yaml.safe_load(toc_file.read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", p) for p in pages]


class Server:
    """A quiet localhost file server that remembers every request that failed."""

    def __init__(self, folder: Path):
        self.failed: list[str] = []
        failed = self.failed

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                file = Path(self.translate_path(url.path))
                if url.query == "phone" and file.suffix == ".html" and file.is_file():
                    self.send_page(PHONE_FRAME.format(src=url.path + "?measure", width=PHONE[0],
                                                      height=PHONE[1]).encode())
                    return
                if url.query == "measure" and file.suffix == ".html" and file.is_file():
                    page = file.read_text()
                    at = page.rfind("</body>")
                    at = at if at >= 0 else len(page)
                    self.send_page((page[:at] + MEASURE_SCRIPT + page[at:]).encode())
                    return
                super().do_GET()

            def send_page(self, body: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def send_error(self, code, message=None, explain=None):
                failed.append(f"{code} {self.path}")
                super().send_error(code, message, explain)

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def chromium(url: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        sys.exit("check-html: Chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               "--enable-logging=stderr", "--v=0", *args, url],
                              capture_output=True, text=True, timeout=timeout)


def console_errors(stderr: str) -> list[str]:
    """Console messages at error level, and failed loads, from Chromium's log."""
    errors = []
    for line in stderr.splitlines():
        if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line):
            errors.append(line.strip())
        elif "net::ERR_" in line or "Failed to load resource" in line:
            errors.append(line.strip())
    return errors


def check_dom(page: str, html: str) -> list[str]:
    """Problems visible in the rendered DOM of one page."""
    soup = BeautifulSoup(html, "html.parser")
    main = soup.find("main") or soup
    problems = []
    for img in main.find_all("img"):
        if not img.get("alt", "").strip():
            problems.append(f"image without alt text: {img.get('src')}")
    for figure in main.find_all("figure"):
        if not figure.find("figcaption") or not figure.find("figcaption").get_text(strip=True):
            problems.append(f"figure without caption: {figure.get('id')}")
    for math in main.select(".math"):
        if not math.find("mjx-container"):
            problems.append(f"math left as raw TeX: {math.get_text()[:60]!r}")
    for math in main.select("div.math"):
        if not math.select_one("span.eqno"):
            problems.append(f"display equation without a label: {math.get_text()[:60]!r}")
    text = main.get_text(" ")
    for role in re.findall(r"\{(?:cite|eq|numref|ref|doc)(?::\w+)?\}`[^`]*`", text):
        problems.append(f"unparsed role: {role}")
    for cite in main.select(".bibtex-citation"):  # an unknown key renders as a bare "[]"
        if not cite.find("a"):
            problems.append(f"unresolved citation: {cite.get_text()!r}")
    for marker in main.select(".xref.std-ref, .xref.cite"):  # unresolved refs stay bare
        if marker.parent.name != "a":
            problems.append(f"unresolved reference: {marker.get_text()!r}")
    for bar in main.select("p.collapsed.admonition-title"):
        if bar.get_text(strip=True).startswith("Show code cell"):
            problems.append("a collapsed cell does not say what it holds: "
                            f"{bar.get_text(strip=True)!r}")
    if re.search(r"\[\?\]|\?\?", text):
        problems.append("an unresolved citation or reference ('??' or '[?]') in the text")
    return problems


def measurements(html: str) -> dict | None:
    """What MEASURE_SCRIPT left in a dumped DOM, or None if it did not run."""
    found = BeautifulSoup(html, "html.parser").find("script", id=MEASURE_ID)
    return json.loads(found.string) if found is not None and found.string else None


def check_layout(measured: dict | None, phone: bool = False) -> list[str]:
    """What the live layout shows wrong at one window width (see the checks below)."""
    if measured is None:
        return ["the layout was not measured (the page's scripts did not finish)"]
    problems = check_equations(measured, must_fit=not phone) + check_page_width(measured)
    if not phone:  # at a phone's width code scrolls in its block, and figures shrink
        problems += check_code(measured) + check_images(measured) + check_figure_text(measured)
    return problems


def check_code(measured: dict) -> list[str]:
    """Code blocks that scroll sideways at a laptop's width."""
    return [f"code block scrolls sideways at a {measured['window']}-pixel window "
            f"({block['scrollWidth']} px of code in {block['clientWidth']} px; "
            f"widest line {block['chars']} characters: {block['line']!r})"
            for block in measured["code"]]


def check_images(measured: dict) -> list[str]:
    """Figure images with fewer pixels across than the column."""
    problems, column = [], measured["column"]
    for image in measured["images"]:
        if image["naturalWidth"] == 0:
            continue  # not loaded: reported as a failed request or a broken image
        if image["naturalWidth"] < column:
            problems.append(f"figure image {image['src']} is {image['naturalWidth']} pixels wide, "
                            f"fewer than the {column:.0f}-pixel column: it shows narrower than "
                            "the text (and blurred where the browser enlarges it); draw it "
                            "wider or at a higher dpi (vaetut.plots.book_style())")
    return problems


def check_equations(measured: dict, must_fit: bool) -> list[str]:
    """Display equations cut off by their box; at a laptop's width, also any that does not fit
    (it would need a sideways scroll to be read). At a phone's width one may scroll in its box."""
    problems = []
    for eq in measured.get("equations", []):
        label = eq["label"].rstrip("#¶ ")  # the number's permalink sign
        name = f"equation {label or '(unnumbered)'} {eq['tex']!r}"
        wider = eq["content"] > eq["visible"] + 1
        if wider and not eq["scrolls"]:
            problems.append(f"{name} is cut at a {measured['window']}-pixel window: "
                            f"{eq['content']:.0f} px of math, {eq['visible']:.0f} px shown")
        elif wider and must_fit:
            problems.append(f"{name} does not fit the column at a {measured['window']}-pixel "
                            f"window ({eq['content']:.0f} px in {eq['visible']:.0f} px; "
                            "break it with aligned or split)")
    return problems


def check_page_width(measured: dict) -> list[str]:
    """A page wider than the window: the reader has to scroll the whole page sideways."""
    if measured.get("page", 0) <= measured["window"] + 1:
        return []
    culprits = "; ".join(f"{w['element']} to {w['right']} px ({w['text']!r})"
                         for w in measured.get("wide", [])) or "not found"
    return [f"the page is {measured['page']} px wide in a {measured['window']}-pixel window: "
            f"{culprits}"]


# The type sizes the book's figure style sets (vaetut.plots.BOOK_STYLE), in points: the
# smallest (ticks, legends) and the largest (titles).
FONT_KEYS_SMALL = ("xtick.labelsize", "ytick.labelsize", "legend.fontsize")
FONT_KEYS_LARGE = ("axes.titlesize", "figure.titlesize")
TEXT_PX = (10, 20)  # figure text on the page: at least this small, at most this large


@functools.cache
def book_style(plots: Path = Path(__file__).resolve().parents[1] / "vaetut" / "plots.py"
               ) -> dict:
    """vaetut.plots.BOOK_STYLE, read from the source: this check needs neither torch nor a
    working vaetut."""
    tree = ast.parse(plots.read_text())
    return next(ast.literal_eval(node.value) for node in ast.walk(tree)
                if isinstance(node, ast.Assign)
                and any(getattr(t, "id", "") == "BOOK_STYLE" for t in node.targets))


def style_font_points() -> tuple[float, float]:
    """(smallest, largest) type size BOOK_STYLE sets."""
    BOOK_STYLE = book_style()
    return (min(BOOK_STYLE[k] for k in FONT_KEYS_SMALL),
            max(BOOK_STYLE[k] for k in FONT_KEYS_LARGE))


def shown_text_px(points: float, dpi: float, natural: int, shown: float) -> float:
    """How many CSS pixels high text of `points` shows in an image drawn at `dpi` with
    `natural` pixels across, shown `shown` pixels wide."""
    return points * dpi / 72 * shown / natural


def check_figure_text(measured: dict) -> list[str]:
    """Figures whose text, at the style's sizes, shows smaller than TEXT_PX[0] or larger than
    TEXT_PX[1] on the page: too wide a figure shrinks its text, too narrow a one enlarges it."""
    problems = []
    small_pt, large_pt = style_font_points()
    for image in measured["images"]:
        if not image["naturalWidth"] or not image.get("dpi") or not image["shownWidth"]:
            continue
        args = (image["dpi"], image["naturalWidth"], image["shownWidth"])
        smallest_pt = min(small_pt, image.get("points") or small_pt)  # the figure's own size
        small, large = shown_text_px(smallest_pt, *args), shown_text_px(large_pt, *args)
        inches = image["naturalWidth"] / image["dpi"]
        name = image.get("figure") or image["src"]
        if small < TEXT_PX[0]:
            problems.append(f"figure {name}: its {smallest_pt:g}-point text shows {small:.1f} px "
                            f"high (under {TEXT_PX[0]} px): {inches:.1f} inches drawn into "
                            f"{image['shownWidth']} px; draw it narrower or its text larger")
        elif large > TEXT_PX[1]:
            problems.append(f"figure {name}: its {large_pt:g}-point text shows {large:.1f} px "
                            f"high (over {TEXT_PX[1]} px): {inches:.1f} inches enlarged to "
                            f"{image['shownWidth']} px; draw it wider")
    return problems


ROOT = Path(__file__).resolve().parents[1]
FONTSIZE = re.compile(r"fontsize\s*=\s*([\d.]+|[\"'][\w-]+[\"'])")
# matplotlib's named sizes, as fractions of font.size (matplotlib.font_manager.font_scalings)
SCALINGS = {"xx-small": 0.579, "x-small": 0.694, "small": 0.833, "medium": 1.0}


def points(size: str) -> float | None:
    """A fontsize= value in points: a number, or a name relative to BOOK_STYLE's font.size."""
    name = size.strip("\"'")
    if name in SCALINGS:
        return SCALINGS[name] * book_style()["font.size"]
    try:
        return float(name)
    except ValueError:
        return None  # "large" and the like: not smaller than the style's
PLOTS_CALL = re.compile(r"\bplots\.(\w+)\(")


@functools.cache
def plots_sizes(plots: Path = ROOT / "vaetut" / "plots.py") -> dict[str, list[float]]:
    """The type sizes each function of vaetut/plots.py writes as a number (fontsize=7.5)."""
    source = plots.read_text()
    return {node.name: [p for x in FONTSIZE.findall(ast.get_source_segment(source, node))
                        if (p := points(x)) is not None]
            for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}


def explicit_sizes(notebook: Path) -> dict[str, float]:
    """For each named figure of a notebook, the smallest type size its cell sets by number,
    itself or in the vaetut.plots functions it calls (what BOOK_STYLE does not decide)."""
    if not notebook.is_file():
        return {}
    found = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        name = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
        if cell["cell_type"] != "code" or not name:
            continue
        source = "".join(cell["source"])
        sizes = [p for x in FONTSIZE.findall(source) if (p := points(x)) is not None]
        sizes += [size for function in PLOTS_CALL.findall(source)
                  for size in plots_sizes().get(function, [])]
        if sizes:
            found[name] = min(sizes)
    return found


def image_dpi(page_file: Path, src: str) -> float | None:
    """The dpi a PNG records (matplotlib writes the figure's), or None."""
    from PIL import Image

    path = (page_file.parent / unquote(urlparse(src).path)).resolve()
    try:
        with Image.open(path) as image:
            dpi = image.info.get("dpi")
    except OSError:
        return None
    return float(dpi[0]) if dpi else None


def link_latex(html: str) -> list[str]:
    """Links whose text shows raw LaTeX (a section title with math, referenced by name)."""
    soup = BeautifulSoup(html, "html.parser")
    problems = []
    for a in soup.find_all("a"):
        for hidden in a.find_all(["mjx-container", "code", "script"]):
            hidden.decompose()
        text = " ".join(a.get_text(" ").split())
        if re.search(r"\\[A-Za-z]+|\$", text):
            problems.append(f"raw LaTeX in a link's text: {text[:80]!r}")
    return sorted(set(problems))


def with_dpi(measured: dict | None, page_file: Path, notebook: Path | None = None
             ) -> dict | None:
    """The measurements, each image with the dpi its file records and the smallest type size
    its figure's code sets by number (None where it sets none)."""
    sizes = explicit_sizes(notebook) if notebook else {}
    for image in (measured or {}).get("images", []):
        image["dpi"] = image_dpi(page_file, image["src"])
        image["points"] = sizes.get(image.get("figure", ""))
    return measured


def check_links(html_root: Path, page_file: Path) -> list[str]:
    """Internal links from this page: the target file exists and holds the anchor."""
    problems = []
    soup = BeautifulSoup(page_file.read_text(), "html.parser")
    for a in soup.find_all("a", href=True):
        href = a["href"]
        if urlparse(href).scheme or href.startswith(("mailto:", "//")):
            continue
        path, anchor = urldefrag(href)
        target = (page_file.parent / unquote(path)).resolve() if path else page_file
        if not target.is_relative_to(html_root.resolve()):
            continue  # e.g. the repository's source folder: not part of the site
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"broken link: {href}")
        elif anchor and target.suffix == ".html":
            ids = set(re.findall(r'id="([^"]+)"', target.read_text()))
            if anchor not in ids:
                problems.append(f"broken anchor: {href}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toc", default="_toc.yml", help="the book's table of contents")
    parser.add_argument("--html", default="_build/html")
    parser.add_argument("--screenshots", default="_build/screenshots")
    parser.add_argument("--only", nargs="+", metavar="PAGE",
                        help="check only these pages (e.g. book/answer)")
    args = parser.parse_args(argv)
    pages, html_root = toc_pages(Path(args.toc)), Path(args.html)
    pages = [p for p in pages if not args.only or p in args.only]
    shots = Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    server = Server(html_root)
    failures = 0
    for page in pages:
        page_file = html_root / f"{page}.html"
        problems = []
        if not page_file.exists():
            problems.append(f"page missing: {page_file}")
        else:
            url = f"{server.url}/{page}.html"
            start = len(server.failed)
            window = f"--window-size={WINDOW[0]},{WINDOW[1]}"
            dom = chromium(url + "?measure", "--virtual-time-budget=15000", window, "--dump-dom")
            problems += console_errors(dom.stderr)
            problems += check_dom(page, dom.stdout) + link_latex(dom.stdout)
            problems += check_layout(with_dpi(measurements(dom.stdout), page_file,
                                              Path(args.toc).parent / f"{page}.ipynb"))
            phone = chromium(url + "?phone", "--virtual-time-budget=15000", window, "--dump-dom")
            problems += check_layout(measurements(phone.stdout), phone=True)
            problems += check_links(html_root, page_file)
            shot = shots / (page.replace("/", "_") + ".png")
            chromium(url, "--virtual-time-budget=15000", window, f"--screenshot={shot.resolve()}")
            if not shot.exists():
                problems.append("no screenshot was written")
            # browsers ask for /favicon.ico on their own; every other failure is the book's
            problems += [f"request failed: {r}" for r in server.failed[start:]
                         if r != "404 /favicon.ico"]
        status = "ok" if not problems else "FAILED"
        print(f"{status:6} {page}")
        for problem in problems:
            print(f"         {problem}")
        failures += bool(problems)
    server.httpd.shutdown()
    print(f"check-html: {failures} of {len(pages)} pages failed; screenshots in {shots}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
