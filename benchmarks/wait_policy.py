"""What OpenMP's idle threads cost fit on the CPU: fit's epoch time under each wait policy.

    python benchmarks/wait_policy.py [--rounds 5] [--images 20000] [--out FILE.json]

numerics.env sets how OpenMP's idle threads wait between parallel regions (OMP_WAIT_POLICY,
GOMP_SPINCOUNT). That cannot change inside a process, so each measurement is a fresh child
process under one setting, and the settings take turns, round after round, so that a slow
spell of a shared machine falls on all of them. Each child times a 2048^2 matrix product
(the machine's matmul rate, in that same process) and then three epochs of vaetut.fit with
its defaults on binary images of 784 pixels (784-400-20 VAE, batch 128). It reports the mean
time of the last two epochs (the first includes fit's set-up and warm-up) and fit's share of
the matmul rate: an epoch's 6 x parameters x images FLOPs over its time, over the rate. Each
round also runs two children at once per setting (the slower one's epoch is reported):
spinning threads that win alone can lose badly when another process wants the cores. The
wait policy changes no number a run computes (tests/test_numerics.py), only how long the
threads take to start each parallel region.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {  # name: the environment a child runs under (on top of the caller's; "" unsets)
    # every setting names both variables: a GOMP_SPINCOUNT inherited from numerics.env would
    # otherwise override OMP_WAIT_POLICY's spin count, and "PASSIVE" would measure spinning
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""},
    "spin 1e3": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "1000"},
    "spin 3e3": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "3000"},
    "spin 1e4": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "spin 1e5": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "100000"},
    "default": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": ""},
}


def child(images: int) -> dict:
    import torch
    from bench import matmul_gflops, model_flops_per_sample  # bench.py's own rate and FLOPs

    from vaetut import VAE, fit

    rate = matmul_gflops(torch.device("cpu"), 2048, min_seconds=0.5)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(images, 784, generator=gen) < 0.3).float()
    torch.manual_seed(0)
    model = VAE(784, 20, (400,))
    stamps: list[float] = []  # the end of each epoch: the first is the warm-up's
    fit(model, x, epochs=3, batch_size=128, seed=0, progress=False,
        on_epoch_end=lambda *_: stamps.append(time.perf_counter()))
    seconds = (stamps[-1] - stamps[0]) / 2  # epochs 2 and 3: no set-up, no warm-up
    fit_gflops = model_flops_per_sample(model) * images / seconds / 1e9
    return {"matmul_gflops": rate, "epoch_s": seconds, "fit_gflops": fit_gflops,
            "share": fit_gflops / rate}


def child_env(extra: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """The environment of a child under the setting `extra`: base (the caller's) with extra's
    variables set, or removed where extra gives ""."""
    return {k: v for k, v in {**base, **extra}.items() if v != ""}


def _children(extra: dict[str, str], images: int, n: int) -> list[dict]:
    """Run n children at once under the setting `extra`; their results."""
    env = child_env(extra, dict(os.environ))
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "--images", str(images)],
                              env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a child under {extra} failed")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def _cell(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--out", default=None, help="also write the runs as JSON here")
    parser.add_argument("--only", action="append", choices=sorted(SETTINGS),
                        help="measure only these settings (repeatable; default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.images)))
        return 0
    chosen = {k: v for k, v in SETTINGS.items() if not args.only or k in args.only}
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    pairs: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(args.rounds):
        for name, extra in chosen.items():
            runs[name].append(_children(extra, args.images, 1)[0])
            # two at once: what a machine running something else besides costs each setting
            pairs[name].append(max(r["epoch_s"] for r in _children(extra, args.images, 2)))
    print(f"{args.images} images, {args.rounds} rounds; medians (min..max)\n")
    print("| setting | s / epoch | matmul GFLOP/s | % of matmul "
          "| s / epoch, two processes at once |")
    print("| --- | --: | --: | --: | --: |")
    for name, rs in runs.items():
        epoch, rate = [r["epoch_s"] for r in rs], [r["matmul_gflops"] for r in rs]
        share = [100 * r["share"] for r in rs]
        print(f"| {name} | {_cell(epoch, '.2f')} | {_cell(rate, '.0f')} | {_cell(share, '.0f')} "
              f"| {_cell(pairs[name], '.2f')} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "images": args.images,
                       "rounds": args.rounds, "settings": chosen, "cpu_count": os.cpu_count(),
                       "runs": runs, "two_at_once_epoch_s": pairs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
