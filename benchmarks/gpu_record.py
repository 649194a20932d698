"""Turn the folder benchmarks/gpu_check.sh wrote into one JSON record for benchmarks/results/.

    python benchmarks/gpu_record.py OUT_DIR benchmarks/results/gpu-checks/h200-DATE.json \
        --commit REV

The record names the device and torch version, and holds: the unit tests' counts and the
names of any that failed; each chapter's pass/fail and wall time on CUDA under
`make test-anywhere`'s nbval command; each chapter's wall time on the same machine's CPU;
the numerics fingerprints; and where the benchmark's own results file went.
"""
import argparse
import datetime
import json
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_summary(path: Path) -> dict:
    """Counts and the failing tests' names from a pytest --junitxml file."""
    if not path.exists():
        return {"error": f"{path.name} was not written (the run was cut short)"}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    total, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    bad = int(suite.get("failures")) + int(suite.get("errors"))
    return {"passed": total - skipped - bad, "failed": bad, "skipped": skipped,
            "seconds": round(float(suite.get("time")), 1), "failures": failed}


def chapters_on_cuda(path: Path) -> dict:
    """{notebook: {"passed": bool, "seconds": float}} from chapters-cuda.txt."""
    if not path.exists():
        return {}
    rows = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {name: {"passed": code == "0", "seconds": float(seconds)}
            for name, code, seconds in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("record", type=Path)
    parser.add_argument("--commit", required=True, help="the commit that was measured")
    args = parser.parse_args()
    out = args.out_dir
    cuda = chapters_on_cuda(out / "chapters-cuda.txt")
    cpu_file = out / "times-cpu.json"
    cpu = json.loads(cpu_file.read_text())["seconds"] if cpu_file.exists() else {}
    fingerprints = [line.rsplit(" ", 1) for line in
                    (out / "fingerprints.txt").read_text().splitlines()] \
        if (out / "fingerprints.txt").exists() else []
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": args.commit,
        "command": "bash benchmarks/gpu_check.sh OUT_DIR",
        "machine": json.loads((out / "machine.json").read_text()),
        "unit_tests_gpu_visible": junit_summary(out / "tests.xml"),
        "chapters_cuda": cuda,
        "chapters_cpu_seconds": cpu,
        "chapters_note": ("CUDA: each notebook under nbval-lax with "
                          "validation/notebook_compare.py's tolerance, one after another; "
                          "CPU: the same notebooks executed with CUDA hidden and 4 threads, "
                          "at the same time as the CUDA run and the unit tests (so both "
                          "share the machine's 16 cores)"),
        "totals_seconds": {"cuda": round(sum(c["seconds"] for c in cuda.values()), 1),
                           "cpu": round(sum(cpu.values()), 1)},
        "numerics_fingerprints": {knobs: digest for knobs, digest in fingerprints},
        "fingerprint_note": ("validation/numerics_fingerprint.py under numerics.env on this "
                             "machine's CPU, with each knob changed as named"),
        "bench": "bench-cuda.json, committed beside this file",
    }
    args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
