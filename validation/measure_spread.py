"""Measure how far each printed number of each notebook moves when only floating-point
rounding changes, and store it in the cell's metadata (`make spread`).

Each notebook is re-executed under a few PERTURBATIONS of numerics.env: settings that send
the same computations to other kernels (ATen's baseline or AVX-512 code, MKL's compatible
code path) and so round differently, without changing a random draw's stream. For every
code cell, every printed number (as validation/notebook_compare.py reads them: sanitized, per output
kind) is compared with the stored output, and the largest deviation over the perturbed
runs is written to cell.metadata["vaetut"]["spread"] = {output kind: [[spread per number]
per output]}. Spread mode (`make test` where the numerics fingerprint differs) then accepts
each number within SPREAD_MULTIPLE times its spread (and one unit of its last digit).

A perturbed run whose text differs from the stored one other than in numbers (another word,
another count of numbers) cannot be compared number by number: that is reported and the
tool exits 1 without writing, so a cell that prints, say, True under one rounding and False
under another has to print the number behind it instead.

Run it after `make notebooks`, on the outputs it made: the stored outputs are the centre.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbval.plugin import coalesce_streams, get_sanitize_patterns

import notebook_compare as compare

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SANITIZE = ROOT / "book" / "nbval_sanitize.cfg"
# What nbval leaves out of a comparison (nbval.plugin.IPyNbFile.skip_compare, no nbdime).
SKIP = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
        "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")
NOT_COMPARED = {"nbval-ignore-output", "nbval-skip", "raises-exception"}

# Each changes which kernels run, not what is drawn (x86-64 settings; numerics.env pins
# ATEN_CPU_CAPABILITY=avx2 and MKL_CBWR=AVX2). mkl-not-intel preloads mkl_not_intel.c (here),
# which makes MKL take the paths it takes on a non-Intel CPU: the vendor-dependent part of
# another machine's run (see that file).
SHIM = "mkl_not_intel"
PERTURBATIONS = {
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-avx512": {"MKL_CBWR": "AVX512"},
    "mkl-not-intel": {"LD_PRELOAD": f"{{build}}/{SHIM}.so"},
}
# Run only when named with --only: ATen's AVX-512 kernels differ from its AVX2 ones in two
# battery entries (sigmoid and softplus on short calls) and in no training run, and every
# chapter executed under them printed its stored outputs to the letter (validation/README.md):
# every spread they measured was 0.
EXTRA_PERTURBATIONS = {
    "aten-avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
}


def build_shim(build: Path) -> None:
    """Compile validation/mkl_not_intel.c into build/ (a C compiler is needed: cc, or $CC)."""
    compiler = os.environ.get("CC", "cc")
    try:
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(build / f"{SHIM}.so"),
                        str(HERE / f"{SHIM}.c")], check=True, capture_output=True,
                       text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"measure_spread: the mkl-not-intel perturbation needs a C compiler "
                         f"({compiler}): {getattr(err, 'stderr', '') or err}; "
                         "or leave it out with --only")


def _sanitizer():
    patterns = get_sanitize_patterns(SANITIZE.read_text())

    def sanitize(s):
        if not isinstance(s, str):
            return s
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s
    return sanitize


def cell_spread(stored_outputs, runs_outputs, flatten, numbers_in, split):
    """{kind: [[spread per number] per output]} over the runs, or raise ValueError saying
    how a run's text differs beyond its numbers."""
    # nbval's coalesce_streams merges streams in place: work on copies, or the stored
    # notebook written back afterwards would hold the merged text twice
    ref = flatten(coalesce_streams(copy.deepcopy(stored_outputs)))
    spread = {kind: [[0.0] * len(numbers_in(v)) if isinstance(v, str) else []
                     for v in values] for kind, values in ref.items()}
    for name, outputs in runs_outputs.items():
        fresh = flatten(coalesce_streams(copy.deepcopy(outputs)))
        if fresh.keys() != ref.keys() or any(len(fresh[k]) != len(ref[k]) for k in ref):
            raise ValueError(f"{name}: other output kinds or counts "
                             f"({sorted(fresh)} against {sorted(ref)})")
        for kind, values in ref.items():
            for i, (s, f) in enumerate(zip(values, fresh[kind])):
                if not isinstance(s, str):
                    if s != f:
                        raise ValueError(f"{name}: {kind} output {i} differs and has no text")
                    continue
                if split(s) != split(f) or len(numbers_in(s)) != len(numbers_in(f)):
                    raise ValueError(f"{name}: {kind} output {i} differs in more than its "
                                     f"numbers:\nstored:\n{s}\n{name}:\n{f}")
                for j, (a, b) in enumerate(zip(numbers_in(s), numbers_in(f))):
                    x, y = float(a), float(b)
                    if not (math.isfinite(x) and math.isfinite(y)):
                        if a != b:
                            raise ValueError(f"{name}: {kind} output {i}: {a} against {b}")
                        continue
                    spread[kind][i][j] = max(spread[kind][i][j], abs(x - y))
    return spread


def execute_perturbed(notebook: Path, env: dict[str, str], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(HERE / "execute_notebooks.py"),
                           str(notebook), "--out-dir", str(out_dir)],
                          env={**os.environ, **env, "CUDA_VISIBLE_DEVICES": ""},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=3600)
    if done.returncode:  # a cell failed under this rounding: an assert too tight, or a bug
        raise RuntimeError(f"{notebook.name} failed under {env}:\n" + done.stderr[-3000:])
    return out_dir / notebook.name


def merge_spreads(old: dict, new: dict) -> dict:
    """The larger of two measured spreads, number by number; ValueError unless both were
    measured on the same outputs (same kinds, outputs and counts of numbers)."""
    def shape(spread):
        return {k: [len(v) for v in values] for k, values in spread.items()}
    if shape(old) != shape(new):
        raise ValueError("the stored spreads do not fit this output: measure all "
                         "perturbations again (without --add)")
    return {kind: [[max(a, b) for a, b in zip(u, v)] for u, v in zip(values, new[kind])]
            for kind, values in old.items()}


def measure(notebook: Path, perturbations: dict[str, dict[str, str]],
            add: bool = False) -> tuple[int, list[str]]:
    """Write the spreads into `notebook`; return (numbers measured, problems). With `add`,
    keep the spreads already stored and widen them by these perturbations' runs."""
    sanitize = _sanitizer()
    flatten = lambda outputs: compare.flatten_outputs(outputs, sanitize, SKIP)  # noqa: E731
    stored = nbformat.read(notebook, as_version=4)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if any("{build}" in v for env in perturbations.values() for v in env.values()):
            build_shim(Path(tmp))
        for name, env in perturbations.items():
            start = time.perf_counter()
            env = {key: value.format(build=tmp) for key, value in env.items()}
            out = execute_perturbed(notebook, env, Path(tmp) / name)
            runs[name] = nbformat.read(out, as_version=4)
            print(f"  {notebook.name} under {name}: {time.perf_counter() - start:.0f} s",
                  flush=True)
    problems, counted = [], 0
    for index, cell in enumerate(stored.cells):
        if cell.cell_type != "code":
            continue
        before = cell.metadata.get("vaetut", {}).pop("spread", None)
        if NOT_COMPARED & set(cell.metadata.get("tags", [])):
            continue
        try:
            spread = cell_spread(cell.outputs, {n: r.cells[index].outputs for n, r in runs.items()},
                                 flatten, compare.numbers_in, compare.words_between_numbers)
            if add and before is not None:
                spread = merge_spreads(before, spread)
        except ValueError as err:
            problems.append(f"{notebook.name} cell {index}: {err}")
            continue
        numbers = sum(len(v) for values in spread.values() for v in values)
        if numbers:
            counted += numbers
            cell.metadata.setdefault("vaetut", {})["spread"] = spread
    for cell in stored.cells:  # no empty leftovers
        if cell.cell_type == "code" and cell.metadata.get("vaetut") == {}:
            del cell.metadata["vaetut"]
    earlier = stored.metadata.get("vaetut", {}).get("spread_runs", {}) if add else {}
    stored.metadata["vaetut"] = {"spread_runs": {**earlier, **perturbations}}
    if not problems:
        nbformat.write(stored, notebook)
    return counted, problems


def choose_perturbations(only: list[str] | None) -> dict[str, dict[str, str]]:
    """The perturbations named in `only` (from PERTURBATIONS and EXTRA_PERTURBATIONS), or
    PERTURBATIONS where none are named."""
    if not only:
        return dict(PERTURBATIONS)
    return {k: v for k, v in {**PERTURBATIONS, **EXTRA_PERTURBATIONS}.items() if k in only}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--only", action="append",
                        choices=sorted({**PERTURBATIONS, **EXTRA_PERTURBATIONS}),
                        help="run only these perturbations (default: "
                             f"{', '.join(PERTURBATIONS)})")
    parser.add_argument("--add", action="store_true",
                        help="keep the spreads already stored and widen them by these runs "
                             "(after adding a perturbation, on unchanged outputs)")
    args = parser.parse_args(argv)
    chosen = choose_perturbations(args.only)
    failed = False
    for notebook in args.notebooks:
        counted, problems = measure(notebook, chosen, add=args.add)
        for p in problems:
            print(p, file=sys.stderr)
        failed |= bool(problems)
        print(f"{notebook}: {counted} numbers measured" + (", NOT written" if problems else ""),
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
