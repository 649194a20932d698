"""Throughput of data-parallel `vaetut.fit`: 1 process against N processes (torchrun).

    python benchmarks/ddp_throughput.py --out benchmarks/results/ddp-cpu-2core.json

Runs `fit` on an MNIST-sized synthetic tensor with the 784-400-20-400-784 model under
`torchrun --standalone --nproc-per-node P` for each P in --procs (and once as a plain
single process), each with the same global batch, and records training images per second
measured over the epochs after the first (which pays start-up). On the CPU the cores are
split between the processes: P processes get cores // P threads each. Writes JSON and
prints a table; the book's appendix reads the JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch


def worker(args) -> None:
    """One training run (a torchrun rank, or the plain single process)."""
    import vaetut
    from bench import synthetic_mnist  # benchmarks/bench.py, beside this script

    torch.manual_seed(0)
    x = synthetic_mnist(args.images, seed=0)
    model = vaetut.VAE(784, 20, hidden=(400,))
    stamps = []
    vaetut.fit(model, x, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
               device=args.device, seed=0, progress=False,
               on_epoch_end=lambda epoch, m, record: stamps.append(time.perf_counter()))
    if int(os.environ.get("RANK", 0)) == 0:
        seconds = stamps[-1] - stamps[0]  # epochs 2..E: start-up and first epoch excluded
        with open(args.result, "w") as f:
            json.dump({"images_per_s": args.images * (args.epochs - 1) / seconds}, f)


def launch(args, procs: int | None, threads: int) -> float:
    """Images per second of one configuration (procs=None: a plain process, no torchrun)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        own = [__file__, "--worker", "--result", result, "--images", str(args.images),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--device", args.device]
        launcher = [] if procs is None else ["-m", "torch.distributed.run", "--standalone",
                                             "--nproc-per-node", str(procs)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, *launcher, *own], env=env, check=True)
        with open(result) as f:
            return json.load(f)["images_per_s"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=12_800)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256, help="the global batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/ddp-cpu-2core.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    cores = os.cpu_count() or 1
    rows = [{"launch": "plain process", "processes": 1, "threads_per_process": cores,
             "images_per_s": launch(args, None, cores)}]
    for procs in args.procs:
        threads = max(1, cores // procs) if args.device == "cpu" else 1
        rows.append({"launch": f"torchrun x{procs}", "processes": procs,
                     "threads_per_process": threads, "images_per_s": launch(args, procs, threads)})
    for row in rows:
        row["ratio_to_plain"] = row["images_per_s"] / rows[0]["images_per_s"]
    result = {
        "command": "python benchmarks/ddp_throughput.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": cores, "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "device": args.device,
                    "load_average": list(os.getloadavg())},
        "setup": {"images": args.images, "epochs_timed": args.epochs - 1,
                  "global_batch": args.batch_size, "model": "784-400-20-400-784"},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("| launch | processes | threads each | images / s | x plain |\n|---|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['launch']} | {r['processes']} | {r['threads_per_process']} | "
              f"{r['images_per_s']:.0f} | {r['ratio_to_plain']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
