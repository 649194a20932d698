"""Command line: `python -m vaetut train ...`.

The benchmark is not part of the package: `python benchmarks/bench.py` (or `make bench`)
in the repository; see benchmarks/README.md."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a VAE; write a checkpoint, history.json and a PNG",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", choices=("digits", "mnist"), default="digits",
                   help="digits: scikit-learn's bundled 8x8 digits (offline); mnist: IDX files")
    p.add_argument("--mnist-root", default="data/mnist", help="folder holding the MNIST IDX files")
    p.add_argument("--binarize", choices=("none", "fixed", "stochastic"), default="fixed",
                   help="how pixels are made binary for the Bernoulli likelihood")
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128], help="encoder widths")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default="runs/vae", help="folder for checkpoint.pt, history.json, "
                   "samples.png")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even if OUT/checkpoint.pt exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)  # only an empty folder
    except OSError:
        pass


def _prepare_out(out: str) -> bool:
    """Make the output folder if missing and check that a file can be created in it,
    before any training; return whether it was made here. Raise ValueError if not."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is an existing file, not a folder; name a folder "
                         "(it is created if missing)")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        if created:
            _remove_if_empty(out)
        raise ValueError(f"--out {out!r} cannot be written to ({err.strerror or err}); name "
                         "a folder you can create files in") from err
    return created


def train(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import VAE, data, distributed, fit, plots

    binarize = None if args.binarize == "none" else args.binarize
    if args.data == "digits":
        dataset = data.load_digits(binarize=binarize, seed=args.seed)
    else:
        dataset = data.load_mnist(args.mnist_root, binarize=binarize, seed=args.seed)
    torch.manual_seed(args.seed)
    model = VAE(dataset.x_dim, args.z_dim, tuple(args.hidden), args.likelihood)
    created = _prepare_out(args.out)
    checkpoint = os.path.join(args.out, "checkpoint.pt")
    try:
        history = fit(model, dataset.train, dataset.test, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, device=args.device,
                      seed=args.seed, progress=not args.no_progress, checkpoint=checkpoint,
                      resume=not args.no_resume,
                      stochastic_binarization=binarize == "stochastic")
    except BaseException:
        if created:  # a failed start leaves no empty folder behind
            _remove_if_empty(args.out)
        raise
    distributed.leave()  # under torchrun: all collectives are done
    if distributed.env_rank() != 0:  # under torchrun, rank 0 alone writes and reports
        return 0
    history.to_json(os.path.join(args.out, "history.json"))
    model.cpu().eval()
    x = dataset.test[:10]
    fig, axes = plt.subplots(3, 1, figsize=(6, 2.2))
    plots.image_grid(x, dataset.image_shape, ax=axes[0], title="test images")
    plots.image_grid(model.reconstruct(x), dataset.image_shape, ax=axes[1], title="reconstructions")
    plots.image_grid(model.sample(10, torch.Generator().manual_seed(args.seed)),
                     dataset.image_shape, ax=axes[2], title="samples from the prior")
    fig.savefig(os.path.join(args.out, "samples.png"), dpi=120, bbox_inches="tight")
    last = history.records[-1]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in last.items()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m vaetut", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        try:
            return train(args)
        except (FileNotFoundError, ValueError) as err:  # bad input: a message, not a traceback
            print(f"vaetut train: error: {err}", file=sys.stderr)
            return 2
        except RuntimeError as err:  # training diverged: the message says where
            from .steps import NonFiniteLossError
            if not isinstance(err, NonFiniteLossError):
                raise
            print(f"vaetut train: training diverged: {err}", file=sys.stderr)
            return 1
    return 0  # unreachable: argparse requires a known command


if __name__ == "__main__":
    sys.exit(main())
