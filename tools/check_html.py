"""Check the built book as a reader's browser meets it: `make check-html`.

Serves _build/html on localhost, opens every page of _toc.yml in headless Chromium (with
every other host unresolvable, so the book must work offline), and fails if a page is
missing, an asset does not load (the server logs every 404), an image is broken or has
no alt text, a figure has no caption, math is left as raw TeX, a reference or citation is
unresolved, an internal link points at a missing page or anchor, or the console shows an
error. At a 1280-pixel-wide window (a laptop), it also fails if a code block scrolls sideways
(its lines are wider than the column) or a figure image has fewer pixels across than the
content column is wide (it would show narrower than the text, or enlarged and blurred).
Saves a PNG of each page's first screen under _build/screenshots/.
"""
from __future__ import annotations

import argparse
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
                 shownWidth: img.clientWidth});
  });
  const out = document.createElement("script");
  out.type = "application/json";
  out.id = "%s";
  out.textContent = JSON.stringify({column: column, window: window.innerWidth, code: code,
                                    images: images});
  document.body.appendChild(out);
}, 2000));
</script>""" % MEASURE_ID


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
                if url.query == "measure" and file.suffix == ".html" and file.is_file():
                    page = file.read_text()
                    at = page.rfind("</body>")
                    at = at if at >= 0 else len(page)
                    body = (page[:at] + MEASURE_SCRIPT + page[at:]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

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
    if re.search(r"\[\?\]|\?\?", text):
        problems.append("an unresolved citation or reference ('??' or '[?]') in the text")
    return problems


def measurements(html: str) -> dict | None:
    """What MEASURE_SCRIPT left in a dumped DOM, or None if it did not run."""
    found = BeautifulSoup(html, "html.parser").find("script", id=MEASURE_ID)
    return json.loads(found.string) if found is not None and found.string else None


def check_layout(measured: dict | None) -> list[str]:
    """Code blocks that scroll sideways, and figure images narrower than the column."""
    if measured is None:
        return ["the layout was not measured (the page's scripts did not finish)"]
    problems = []
    for block in measured["code"]:
        problems.append(f"code block scrolls sideways at a {measured['window']}-pixel window "
                        f"({block['scrollWidth']} px of code in {block['clientWidth']} px; "
                        f"widest line {block['chars']} characters: {block['line']!r})")
    column = measured["column"]
    for image in measured["images"]:
        if image["naturalWidth"] == 0:
            continue  # not loaded: reported as a failed request or a broken image
        if image["naturalWidth"] < column:
            problems.append(f"figure image {image['src']} is {image['naturalWidth']} pixels wide, "
                            f"fewer than the {column:.0f}-pixel column: it shows narrower than "
                            "the text (and blurred where the browser enlarges it); draw it "
                            "wider or at a higher dpi (vaetut.plots.book_style())")
    return problems


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
    args = parser.parse_args(argv)
    pages, html_root = toc_pages(Path(args.toc)), Path(args.html)
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
            problems += check_dom(page, dom.stdout)
            problems += check_layout(measurements(dom.stdout))
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
