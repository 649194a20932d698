"""`make test`: choose how notebooks are validated from this machine's numerics, then run
the unit tests and nbval over every notebook.

    python validation/run_tests.py [--strict] [-- PYTEST ARGS...]

The stored outputs were written on one machine; validation/numerics/fingerprint.json holds
the hashes of the kernels that machine ran (validation/numerics_battery.py). Where this
machine's hashes match, nbval runs strictly: every output to the letter. Where they do not
(another CPU vendor or model, arm64), it says so on one line naming the kernels that differ
and runs spread mode instead: every cell runs, every assert holds, and every printed number
is compared within its measured spread (validation/notebook_compare.py). Either way the exit
status is pytest's: red only when a claim breaks. `--strict` (`make test STRICT=1`) forces strict.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FINGERPRINT = HERE / "numerics" / "fingerprint.json"
NBVAL = ["--nbval", "--nbval-current-env", "--nbval-sanitize-with", "book/nbval_sanitize.cfg",
         "--nbval-cell-timeout=600"]


def choose_mode(strict: bool) -> tuple[str, str]:
    """('strict' or 'spread', the line that says why)."""
    if strict:
        return "strict", "strict (forced by STRICT=1)"
    if not FINGERPRINT.exists():
        return "spread", f"spread ({FINGERPRINT.relative_to(ROOT)} is missing)"
    check = subprocess.run([sys.executable, str(HERE / "numerics_battery.py"),
                            "--check", str(FINGERPRINT)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    if check.returncode not in (0, 1):
        sys.stderr.write(check.stdout + check.stderr)
        raise SystemExit(f"numerics: the fingerprint check failed (exit {check.returncode})")
    said = check.stdout.strip().splitlines()[-1]
    if check.returncode == 0:
        return "strict", f"strict ({said})"
    return "spread", f"spread, every number within its measured spread ({said})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    mode, why = choose_mode(args.strict)
    print(f"numerics: notebook validation mode: {why}", flush=True)
    command = [sys.executable, "-m", "pytest", "tests", "book", *NBVAL,
               *(["--nbval-spread"] if mode == "spread" else []), *args.pytest_args]
    status = subprocess.run(command, cwd=ROOT).returncode
    print(f"numerics: notebook validation ran in {mode} mode; pytest exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
