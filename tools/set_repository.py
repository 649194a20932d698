"""Point the book at the repository it is built from: `python tools/set_repository.py URL BRANCH`.

Rewrites the `repository:` url and branch of _config.yml (Jupyter Book's Binder, Colab and
repository buttons use them) and the repository named in each notebook's install cell
(tools/install_cell.py), so a fork's published book installs the fork. The Pages workflow
runs it with its own repository before building; nothing else in the files changes, and
notebooks without an install cell are left as they are. Needs only the standard library
(and PyYAML for the check that the result parses, where it is installed).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from install_cell import cell_source, insert_install_cell  # noqa: E402


def set_config_repository(text: str, url: str, branch: str) -> str:
    """_config.yml's text with the url and branch of its top-level `repository:` block
    replaced (comments and every other line kept)."""
    cell_source(url, branch)  # the same checks of the URL and branch
    block = re.search(r"^repository:[ \t]*\n((?:[ \t]+.*\n|[ \t]*\n)*)", text, flags=re.M)
    if block is None:
        raise ValueError("no top-level 'repository:' section in the config")
    body = block.group(1)
    for key, value in (("url", url), ("branch", branch)):
        body, n = re.subn(rf"^([ \t]+{key}:[ \t]*)\S.*$", lambda m: m.group(1) + value, body,
                          count=1, flags=re.M)
        if n == 0:
            raise ValueError(f"no '{key}:' under 'repository:' in the config")
    return text[:block.start(1)] + body + text[block.end(1):]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. https://github.com/owner/vaetut")
    parser.add_argument("branch")
    parser.add_argument("--config", type=Path, default=Path("_config.yml"))
    parser.add_argument("--notebooks", type=Path, nargs="*", default=None,
                        help="default: book/*.ipynb beside the config")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    text = args.config.read_text()
    new = set_config_repository(text, url, args.branch)
    try:
        import yaml
    except ImportError:
        pass
    else:
        repository = yaml.safe_load(new)["repository"]
        assert (repository["url"], str(repository["branch"])) == (url, args.branch), repository
    if new != text:
        args.config.write_text(new)
    print(f"{args.config}: repository {url} ({args.branch})")
    notebooks = args.notebooks
    if notebooks is None:
        notebooks = sorted((args.config.parent / "book").glob("*.ipynb"))
    for notebook in notebooks:
        status = insert_install_cell(notebook, url, args.branch, insert=False)
        print(f"{status:9} {notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
