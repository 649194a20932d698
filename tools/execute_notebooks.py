"""Re-execute notebooks in place, top to bottom, so their stored outputs are fresh.

Used by `make notebooks`. The Makefile fixes the thread count and hides CUDA, so the
stored outputs are the CPU ones that nbval compares against. Prints each notebook's
wall time (those are not stored in the notebook, where nbval would compare them).
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 900) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


if __name__ == "__main__":
    for name in sys.argv[1:]:
        seconds = execute(Path(name))
        print(f"{name}: executed in {seconds:.1f} s", flush=True)
