"""The conda route (environment.yml) and the pip route (requirements.lock) pin the same."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lock_pins():
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def environment_pins():
    conda, pip, section = {}, {}, None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"^\s*- pip:\s*$", line):
            section = "pip"
            continue
        m = re.match(r"^\s*- ([A-Za-z0-9_.\-]+)\s*([=<>!]=?)\s*([^\s#]+)", line)
        if not m:
            continue
        name, op, version = m.group(1).lower().replace("_", "-"), m.group(2), m.group(3)
        if section == "pip":
            assert op == "==", f"pip pin for {name} is not exact: {line!r}"
            pip[name] = version
        else:
            conda[name] = version
    return conda, pip


def test_every_lock_pin_is_exact_and_torch_is_the_pinned_release():
    text = (ROOT / "requirements.lock").read_text()
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line.strip()), line
    assert lock_pins()["torch"] == "2.13.0"


def test_environment_yml_names_the_same_packages_and_pins_as_the_lock():
    conda, pip = environment_pins()
    lock = lock_pins()
    assert conda["python"] == "3.11"
    assert conda["pytorch"] == lock.pop("torch")
    assert pip == lock
    assert "-e ." in (ROOT / "environment.yml").read_text()


def test_pyproject_lists_only_packages_the_lock_pins():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.findall(r'"([A-Za-z0-9_.\-]+)"', re.search(r"dependencies = \[(.*?)\]", text).group(1))
    book = re.search(r"book = \[(.*?)\]", text).group(1) + re.search(r"test = \[(.*?)\]", text).group(1)
    deps += re.findall(r'"([A-Za-z0-9_.\-]+)"', book)
    lock = lock_pins()
    assert deps and all(d.lower() in lock for d in deps), set(deps) - set(lock)
