"""Re-execute notebooks in place, top to bottom, so their stored outputs are fresh.

Used by `make notebooks`. The Makefile fixes the thread count and hides CUDA, so the
stored outputs are the CPU ones that nbval compares against. Prints each notebook's
wall time (those are not stored in the notebook, where nbval would compare them); with
`--times FILE` also writes them as JSON, slowest first.
"""
import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

# The settings of numerics.env, recorded beside the times so a reader sees what ran.
PINNED = [line.split("=", 1)[0] for line in
          (Path(__file__).resolve().parent.parent / "numerics.env").read_text().splitlines()
          if line and not line.startswith("#")]


# After a cell's reply, how long to wait for the rest of its output. nbclient's default waits
# 4 s and then drops what has not arrived without a word: on a busy machine (load 12 on 2
# cores) chapter 2 was stored with a printed line missing. Waiting costs nothing when the
# output comes at once; what never comes now stops the run instead of being stored short.
IOPUB_TIMEOUT_S = 120


def execute(path: Path, timeout: int = 900, out: Path | None = None,
            iopub_timeout: int = IOPUB_TIMEOUT_S) -> float:
    """Execute the notebook at `path` in its own folder; write it to `out` (default: in
    place), never with a cell's output cut short. Return the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   iopub_timeout=iopub_timeout, raise_on_iopub_timeout=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    target = out or path
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    nbformat.write(nb, partial)
    os.replace(partial, target)  # a reader never sees half a notebook
    return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--times", help="write each notebook's wall time to this JSON file")
    parser.add_argument("--out-dir", type=Path,
                        help="write the executed notebooks here instead of in place")
    args = parser.parse_args()
    times = {}
    for path in args.notebooks:
        out = args.out_dir / path.name if args.out_dir else None
        times[path.name] = round(execute(path, out=out), 1)
        print(f"{path}: executed in {times[path.name]:.1f} s", flush=True)
    if args.times:  # a run of some notebooks updates their entries and keeps the others'
        import torch  # for its version only: measure_spread's runs, without --times, skip it
        try:
            with open(args.times) as f:
                kept = json.load(f)  # other keys (earlier measurements beside these) stay
                times = {**kept.get("seconds", {}), **times}
        except (FileNotFoundError, json.JSONDecodeError):
            kept = {}
        slowest = sorted(times.items(), key=lambda item: -item[1])
        with open(args.times, "w") as f:
            json.dump({**kept, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(),
                                   "torch": torch.__version__, "threads": os.environ.get("OMP_NUM_THREADS"),
                                   "load_average": list(os.getloadavg())},
                       "pinned": {k: os.environ.get(k) for k in PINNED},
                       "seconds": dict(slowest), "slowest": slowest[0][0]}, f, indent=1)
