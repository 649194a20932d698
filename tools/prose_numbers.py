"""Does the text of each page quote only numbers the page itself shows?

The book is built from the stored outputs (`execute_notebooks: off`), which `make test`
validates. What can still go wrong is the prose: a sentence quoting -94.45 under a cell that
prints -94.42, left from an older run. This check reads a page's markdown (a notebook's
markdown cells, captions and alt texts, or a .md page), takes every number quoted in its
prose, and fails for one that the page does not show.

The rule, in full (book/checks.md says why):

- Not prose: math ($...$, $$...$$, \\begin{...}), code spans and code blocks, roles
  ({numref}`...`, {eq}`...`, {cite}`...`, {doc}`...`), link targets, HTML tags, labels
  (`(sec-x)=`), directive options (`:width: 80%`), and a number that names a place in the
  book ("chapter 5", "chapters 4 and 5", "Fig. 5.2", "equation (1.3)", "section 2") or is
  part of a word or version (float32, x86-64, 2.13.0).
- A quoted number is shown when it appears in an output of the page (stdout, text/plain,
  text/markdown) printed to at least as many decimals and rounds to the quoted one
  ("-94.4" is quoted from a printed -94.42; "-94.45" is not), sign aside (the text says "a
  gap of 2.3 nats" for a printed -2.3); or when the page's code writes it (`epochs=30`,
  `k=1000`): a setting, the same on every machine.
- ALLOWED constants may always be quoted; a year (1900-2099) too.

    python tools/prose_numbers.py book/*.ipynb   # exit 1 and a list when one fails

tests/test_prose_numbers.py runs it on every notebook of the book under `make test`. The .md
pages (the introduction, the API reference, how the book checks itself) execute nothing: the
numbers they quote describe the project (exit statuses, measured times) and are not checked.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

# Numbers any text may use without a cell printing them: small counts, a half, a power of ten.
ALLOWED = frozenset({"0", "1", "2", "10", "100", "0.5"})

NUMBER = re.compile(r"(?<![\w.,])(?P<sign>[+\-−–]?)"
                    r"(?P<digits>\d{1,3}(?:,\d{3})+|\d+)(?P<decimals>\.\d+)?"
                    r"(?P<exponent>[eE][+\-−]?\d+)?(?![\w]|[.,]\d)")
# In outputs a number may touch letters ("kl=5.04", "1.2e-05"): only digits delimit it.
PRINTED = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?([eE][+\-]?\d+)?")
PLACE = re.compile(r"(?:\b(?:[Cc]hapters?|[Ff]ig(?:ure)?s?\.?|[Ee]quations?|[Ee]qs?\.|"
                   r"[Ss]ections?|[Tt]ables?|[Aa]ppendix|[Ee]xercises?|[Ii]ssues?|[Cc]ells?)"
                   r"\s*\(?|#)$")
LIST_OF_PLACES = re.compile(r"\b(?:[Cc]hapters|[Ff]igs?\.|[Ff]igures|[Ee]quations|[Ss]ections)"
                            r"\s+[\d.,() ]*(?:,|and|or|to)\s*\(?$")
FENCE = re.compile(r"^(`{3,}|:{3,})\s*(\{(?P<directive>[\w:-]+)\})?(?P<info>.*)$")
PROSE_DIRECTIVES = {"note", "tip", "warning", "important", "caution", "attention", "hint",
                    "seealso", "admonition", "dropdown", "figure", "margin", "sidebar", "topic",
                    "epigraph", "div", "card", "tab-item", "table", "list-table"}


@dataclass(frozen=True)
class Quote:
    """One number in a page's prose: the token as written and the words around it."""

    token: str
    context: str

    @property
    def value(self) -> Decimal:
        return abs(Decimal(normalize(self.token)))


def normalize(token: str) -> str:
    return token.replace(",", "").replace("−", "-").replace("–", "-")


def strip_blocks(markdown: str) -> str:
    """Drop code and math blocks and directive options; keep the prose of admonitions,
    dropdowns and figure captions (their first line and options are dropped)."""
    kept, fence, keep_body = [], None, True
    for line in markdown.splitlines():
        match = FENCE.match(line.strip())
        if fence is None and match:
            fence = match.group(1)
            keep_body = match.group("directive") in PROSE_DIRECTIVES
            continue
        if fence is not None and line.strip() == fence:
            fence = None
            continue
        if fence is not None and (not keep_body or re.match(r"\s*:[\w-]+:", line)):
            continue
        if re.match(r"^\s*\([\w:.-]+\)=\s*$", line) or re.match(r"^\s*%", line):
            continue  # a label, a comment
        kept.append(line)
    return "\n".join(kept)


def prose(markdown: str) -> str:
    """The words a reader reads as text: no math, code, roles, link targets or tags."""
    text = strip_blocks(markdown)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", " ", text, flags=re.S)
    text = re.sub(r"(?<![\\$])\$[^$]+?\$", " ", text)  # inline math may span lines
    text = re.sub(r"\{[\w:-]+\}`[^`]*`", " ", text)  # roles: references, citations
    text = re.sub(r"(`+).+?\1", " ", text, flags=re.S)  # code spans
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"\[\^?[\w-]+\]", " ", text)  # footnote and reference labels
    text = re.sub(r"<[^>\n]+>", " ", text)  # HTML tags, autolinks
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"(?m)^\s*\d+[.)]\s", " ", text)  # the number of an ordered list's item
    return text


def quotes(markdown: str) -> list[Quote]:
    """Every number the prose of `markdown` quotes, except places in the book."""
    text, found = prose(markdown), []
    for match in NUMBER.finditer(text):
        before = text[max(0, match.start() - 40):match.start()]
        if PLACE.search(before) or LIST_OF_PLACES.search(before):
            continue
        if re.search(r"[A-Za-z]\w*[-−–]$", before):
            continue  # the end of a name: x86-64, MNIST-10
        token = match.group(0)
        context = " ".join(text[max(0, match.start() - 50):match.end() + 30].split())
        found.append(Quote(token, context))
    return found


def allowed(quote: Quote) -> bool:
    token = normalize(quote.token).lstrip("+-")
    return token in ALLOWED or bool(re.fullmatch(r"(19|20)\d\d", token))


def printed_numbers(texts: list[str]) -> set[str]:
    """Every number token in the given output texts, without sign or thousands separators."""
    found = set()
    for text in texts:
        for match in PRINTED.finditer(text):
            found.add(normalize("".join(g or "" for g in match.groups())))
    return found


def _exponent(token: str) -> int:
    """The decimal exponent of a token's last digit: -2 for '94.45', 0 for '30'."""
    return Decimal(token).as_tuple().exponent


def shown(quote: Quote, printed: set[str], written: set[str]) -> bool:
    """The quote is in the code as written, or a printed number rounds to it."""
    token = normalize(quote.token).lstrip("+-")
    if token in written or token in printed:
        return True
    value, places = quote.value, _exponent(token)
    for number in printed:
        if _exponent(number) > places:
            continue  # printed to fewer decimals than the text quotes
        exact = Decimal(number)
        for rounding in (ROUND_HALF_EVEN, ROUND_HALF_UP):
            if exact.quantize(Decimal(1).scaleb(places), rounding=rounding) == value:
                return True
    return False


@dataclass
class Page:
    """What a page says in prose, what its outputs print and what its code writes."""

    markdown: list[str]
    outputs: list[str]
    code: list[str]


def output_texts(cell: dict) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append("".join(output.get("text", "")))
        for kind in ("text/plain", "text/markdown"):
            data = output.get("data", {}).get(kind)
            if data:
                texts.append("".join(data))
    return texts


def read_page(path: Path) -> Page:
    if path.suffix != ".ipynb":
        return Page([path.read_text()], [], [])
    cells = json.loads(path.read_text())["cells"]
    page = Page([], [], [])
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            page.markdown.append(source)
            continue
        if cell["cell_type"] != "code":
            continue
        page.code.append(source)
        page.outputs += output_texts(cell)
        metadata = cell.get("metadata", {}).get("mystnb", {})
        # a figure's caption and alt text are prose the reader reads
        page.markdown.append(metadata.get("figure", {}).get("caption", ""))
        page.markdown.append(metadata.get("image", {}).get("alt", ""))
    return page


def code_numbers(sources: list[str]) -> set[str]:
    """The number literals of the page's code (200_000 read as 200000)."""
    found = set()
    for source in sources:
        source = re.sub(r"(?<=\d)_(?=\d)", "", source)
        for match in PRINTED.finditer(source):
            found.add(normalize("".join(g or "" for g in match.groups())))
    return found


def unshown(path: Path) -> list[Quote]:
    """The numbers `path`'s prose quotes that its outputs do not print nor its code write."""
    page = read_page(path)
    printed, written = printed_numbers(page.outputs), code_numbers(page.code)
    return [quote for markdown in page.markdown for quote in quotes(markdown)
            if not allowed(quote) and not shown(quote, printed, written)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="+", type=Path, help="notebooks or .md pages")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.pages:
        missing = unshown(path)
        print(f"{'ok' if not missing else 'FAILED':6} {path}")
        for quote in missing:
            print(f"         {quote.token!r} in: ...{quote.context}...")
        failed += bool(missing)
    print(f"prose-numbers: {failed} of {len(args.pages)} pages quote a number they do not show")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
