"""How the book is numbered and how `make lab` starts (book/_ext/vaetut_html.py, Makefile)."""
import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import vaetut_html  # noqa: E402


def test_each_page_numbers_its_figures_and_equations_from_one():
    # what Sphinx assigns without numbered headings: one count through the whole book
    numbers = {"book/01_identity": {"figure": {"f1": (1,), "f2": (2,)},
                                    "displaymath": {"e1": (1,), "e2": (2,), "e3": (3,)}},
               "book/05_bounds_and_gaps": {"figure": {"g2": (12,), "g1": (11,)},
                                           "displaymath": {"b": (20,)}},
               "book/answer": {"figure": {"a": (24,)}, "displaymath": {"x": (26,), "y": (27,)}}}
    vaetut_html.number_per_page(numbers)
    assert numbers == {"book/01_identity": {"figure": {"f1": (1, 1), "f2": (1, 2)},
                                            "displaymath": {"e1": (1, 1), "e2": (1, 2),
                                                            "e3": (1, 3)}},
                       "book/05_bounds_and_gaps": {"figure": {"g1": (5, 1), "g2": (5, 2)},
                                                   "displaymath": {"b": (5, 1)}},
                       "book/answer": {"figure": {"a": (1,)},
                                       "displaymath": {"x": (1,), "y": (2,)}}}


@pytest.mark.parametrize("docname, prefix", [("book/05_bounds_and_gaps", (5,)),
                                             ("book/01_identity", (1,)), ("book/answer", ()),
                                             ("book/appendix_benchmarks", ()),
                                             ("book/quickstart", ()), ("intro", ())])
def test_a_chapter_page_is_prefixed_with_its_number(docname, prefix):
    assert vaetut_html.page_prefix(docname) == prefix


def test_the_book_loads_the_extension_and_its_stylesheet():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"] == {"vaetut_html": "book/_ext"}
    assert (ROOT / "book" / "_ext" / "static" / "vaetut.css").is_file()
    for ext in ("sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.autosummary"):
        assert ext in config["sphinx"]["extra_extensions"]
    toc = (ROOT / "_toc.yml").read_text()
    assert "file: book/api" in toc


def test_the_api_page_names_every_public_function_and_class():
    import vaetut

    page = (ROOT / "book" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto(?:function|class|exception):: (vaetut\.[\w.]+)",
                                page, flags=re.M))
    for name in vaetut.__all__:
        if not inspect.ismodule(getattr(vaetut, name)):  # modules: their members are listed
            assert f"vaetut.{name}" in documented, name


MAKE = shutil.which("make")


@pytest.mark.skipif(MAKE is None, reason="no make")
def test_make_lab_starts_as_root_hides_the_build_files_and_passes_lab_args():
    # --no-print-directory: under `make test` this make is a sub-make, which would print
    # "Leaving directory" after the command
    out = subprocess.run([MAKE, "--no-print-directory", "-n", "lab",
                          "LAB_ARGS=--no-browser --port 8899"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    command = out[out.index("jupyter lab book"):]
    assert ("--allow-root" in command) == (os.geteuid() == 0)
    hidden = re.search(r'--ContentsManager\.hide_globs="(\[.*?\])"', command).group(1)
    globs = ast.literal_eval(hidden)
    assert {"conftest.py", "nbval_sanitize.cfg", "_ext"} <= set(globs)
    assert {"__pycache__", "*.pyc"} <= set(globs)  # Jupyter's own defaults are kept
    assert command.rstrip().endswith("--no-browser --port 8899")


@pytest.mark.parametrize("source, label", [
    ("# Colab, or any Python without vaetut: install it.\nimport os", vaetut_html.SETUP_LABEL),
    ("# Check: the split and binary pixels\n# a changed split fails\nassert x",
     "Check: the split and binary pixels"),
    ("# Demonstration, not evidence: an untrained decoder is close to fair coins (a 3-nat range\n"
     "# around 64 fair coins)\nassert y",
     "Demonstration, not evidence: an untrained decoder is close to fair coins"),
    ("x = 1\n# Check: not the first line", None),
])
def test_a_collapsed_cell_is_labelled_by_what_it_holds(source, label):
    assert vaetut_html.cell_label(source) == label


def code_cell(source, hide_mode="input"):
    from docutils import nodes

    cell = nodes.container(nb_element="cell_code", hide_mode=hide_mode,
                           prompt_show="Show code cell {type}", prompt_hide="Hide code cell {type}")
    cell += nodes.container("", nodes.literal_block(source, source), nb_element="cell_code_source")
    return cell


def test_check_cells_get_their_label_and_a_solution_moves_into_its_dropdown():
    from docutils import nodes

    section = nodes.section()
    check = code_cell("# Check: the ELBO rose\nassert rose")
    dropdown = nodes.container(design_component="dropdown")
    dropdown += nodes.paragraph(text="The solution in words.")
    solution = code_cell("# Solution to exercise 1\nprint(2)", hide_mode="all")
    other = code_cell("print(3)")
    section.extend([check, dropdown, solution, other])
    vaetut_html.label_collapsed_cells(section)
    assert check["prompt_show"] == check["prompt_hide"] == "Check: the ELBO rose"
    assert solution.parent is dropdown and "hide_mode" not in solution  # one control: the dropdown
    assert list(section.children) == [check, dropdown, other]
    assert other["prompt_show"] == "Show code cell {type}"  # nothing to say: myst-nb's default


@pytest.mark.skipif(MAKE is None, reason="no make")
def test_make_lab_installs_exact_versions_only():
    out = subprocess.run([MAKE, "--no-print-directory", "-n", "lab"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    install = out.replace("\\\n", " ")  # make -n prints a recipe's continued lines as written
    install = next(line for line in install.splitlines() if "pip install" in line)
    assert "-c requirements.lock" in install and "-r requirements-lab.lock" in install
    assert "jupyterlab" not in install.replace("requirements-lab.lock", "")  # no bare name
    lab = [line for line in (ROOT / "requirements-lab.lock").read_text().splitlines()
           if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", line) for line in lab), lab
    assert "jupyterlab==4.6.6" in lab
    locked = {line.split("==")[0].lower().replace("_", "-")
              for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}
    assert not locked & {line.split("==")[0].lower().replace("_", "-") for line in lab}


def test_a_figure_shows_at_the_size_it_was_drawn(tmp_path):
    from docutils import nodes
    from PIL import Image

    Image.new("RGB", (980, 300), "white").save(tmp_path / "small.png", dpi=(200, 200))
    Image.new("RGB", (980, 300), "white").save(tmp_path / "no_dpi.png")
    assert vaetut_html.physical_width(tmp_path / "small.png") == 470  # 4.9 inches at 96 px
    assert vaetut_html.physical_width(tmp_path / "no_dpi.png") is None
    doctree = nodes.section()
    small, unknown = nodes.image(uri="small.png"), nodes.image(uri="no_dpi.png")
    sized = nodes.image(uri="small.png", width="50%")
    doctree.extend([small, unknown, sized])
    app = types.SimpleNamespace(srcdir=str(tmp_path))
    vaetut_html.figures_at_drawn_size(app, doctree, "book/x")
    assert small["width"] == "470px" and "width" not in unknown and sized["width"] == "50%"
