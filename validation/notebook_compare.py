"""Notebook validation in three modes (`make test` chooses between the first two); pytest
gets these hooks through book/conftest.py.

strict     (`--nbval`, where this machine's kernels match validation/numerics/fingerprint.json,
           or `make test STRICT=1`): every cell's output must equal the stored one to the letter.
spread     (`--nbval --nbval-spread`, where the fingerprint differs: another CPU vendor or
           model, arm64): every cell runs, every `assert` must hold, and every printed number
           is compared with the stored one within SPREAD_MULTIPLE times its measured spread
           (how far it moved when `make spread` re-executed the notebook under kernels that
           round differently, stored in the cell's metadata["vaetut"]["spread"]) and at least
           one unit of its last printed digit; the text between the numbers must be equal.
anywhere   (`--nbval-lax`, `make test-anywhere`, for a GPU: its random draws come from
           another generator, so a trained model is another sample): every cell runs and its
           asserts hold; only the cells tagged `nbval-check-output` (the exact-model cells) are
           compared, number by number within the last printed digit.

`make spread` (validation/measure_spread.py) writes the spreads; the comparison and the
measurement share `flatten_outputs` and `numbers_in` below, so they read outputs alike.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
BLANKS = re.compile(r"[ \t]+")

# A printed number matches its stored value when they differ by at most one unit in the
# last digit printed (the rounding of a value that sits at a rounding boundary on one
# machine and not on the other), or by RELATIVE of the stored value, whichever is larger.
# Integers (no decimal point, no exponent) must match exactly: they are counts.
RELATIVE = 1e-6
TOLERANCE = ("one unit in the last printed digit, or 1e-6 relative, whichever is larger; "
             "integers exactly")
# In spread mode a number may also move by this multiple of its measured spread: the
# spread is the largest of a few perturbed runs, and another CPU is one more such draw.
SPREAD_MULTIPLE = 4
SPREAD_TOLERANCE = (f"{SPREAD_MULTIPLE} x the number's measured spread, or one unit in the "
                    "last printed digit, or 1e-6 relative, whichever is largest")


def last_digit_unit(token: str) -> float:
    """The value of one unit in the last digit of a printed number: 0.01 for '-18.63',
    1e-15 for '9.2e-14', 0 for an integer such as '3000' (integers must match exactly)."""
    mantissa, _, exponent = token.lower().partition("e")
    if "." not in mantissa and not exponent:
        return 0.0
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def number_matches(stored: str, fresh: str, spread: float = 0.0) -> bool:
    """True if the printed number `fresh` lies within TOLERANCE of `stored`, or within
    SPREAD_MULTIPLE x `spread` (its measured spread; 0 where none was measured)."""
    a, b = float(stored), float(fresh)
    if not (math.isfinite(a) and math.isfinite(b)):
        return stored == fresh
    allowed = max(RELATIVE * abs(a), last_digit_unit(stored), last_digit_unit(fresh),
                  SPREAD_MULTIPLE * spread)
    return abs(a - b) <= allowed * (1 + 1e-9)  # the slack absorbs the binary representation


def numbers_in(text: str) -> list[str]:
    """The printed numbers of a text, in order, as compared (see NUMBER)."""
    return NUMBER.findall(text)


def words_between_numbers(text: str) -> list[str]:
    """The text between the printed numbers, each run of spaces or tabs read as one space:
    a right-aligned column pads '0.000' with one space more than '-0.000', and '9.99' with
    one more than '10.01', so a number that moves shifts the padding before it, and that
    is layout, not a claim."""
    return [BLANKS.sub(" ", words) for words in NUMBER.split(text)]


def numbers_match(stored: str, fresh: str, spreads: list[float] | None = None) -> bool:
    """True if two texts are equal apart from numbers (and the padding before them), and
    each pair of numbers matches (the i-th within SPREAD_MULTIPLE x spreads[i] where
    spreads are given)."""
    stored_words, fresh_words = words_between_numbers(stored), words_between_numbers(fresh)
    stored_numbers, fresh_numbers = numbers_in(stored), numbers_in(fresh)
    spreads = [0.0] * len(stored_numbers) if spreads is None else spreads
    return (stored_words == fresh_words and len(stored_numbers) == len(fresh_numbers)
            and len(spreads) == len(stored_numbers)
            and all(map(number_matches, stored_numbers, fresh_numbers, spreads)))


def flatten_outputs(outputs, sanitize, skip) -> dict[str, list]:
    """Outputs as nbval compares them: streams keyed by their name, rich outputs by MIME
    type, each value sanitized, the keys in `skip` left out."""
    from nbval.plugin import transform_streams_for_comparison

    flat: dict[str, list] = defaultdict(list)
    for out in transform_streams_for_comparison(outputs):
        for key, value in out.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        flat[mime].append(sanitize(data))
            else:
                flat[key].append(sanitize(value))
    return flat


def _flatten(cell, outputs) -> dict[str, list]:
    return flatten_outputs(outputs, cell.sanitize, cell.parent.skip_compare)


def cell_spreads(cell) -> dict[str, list[list[float]]] | None:
    """The measured spreads of a cell's printed numbers (per output kind, per output, per
    number), or None where `make spread` recorded none."""
    return cell.cell.metadata.get("vaetut", {}).get("spread")


def compare_within_spread(cell, test, ref, skip_compare=None) -> bool:
    """Spread mode: nbval's comparison with each number within its measured spread. A cell
    that prints numbers but has no measured spreads fails: it was added or re-made after
    the last `make spread`, and comparing it to the last digit would be strict mode."""
    spreads = cell_spreads(cell)
    if spreads is None and any(numbers_in(v) for values in _flatten(cell, ref).values()
                               for v in values if isinstance(v, str)):
        cell.comparison_traceback = ["this cell prints numbers but no spreads were measured "
                                     "for it: run `make spread`"]
        return False
    return compare_within_tolerance(cell, test, ref, skip_compare, spreads=spreads or {})


def compare_within_tolerance(cell, test, ref, skip_compare=None, spreads=None) -> bool:
    """nbval's comparison, with numbers compared within TOLERANCE instead of exactly (and
    within SPREAD_MULTIPLE x their measured spread where `spreads` are given)."""
    fresh, stored = _flatten(cell, test), _flatten(cell, ref)
    cell.comparison_traceback = []
    if fresh.keys() != stored.keys():
        cell.comparison_traceback.append(
            f"output kinds differ: stored {sorted(stored)}, fresh {sorted(fresh)}")
        return False
    for key, stored_values in stored.items():
        fresh_values = fresh[key]
        if len(stored_values) != len(fresh_values):
            cell.comparison_traceback.append(f"{len(stored_values)} stored {key} outputs, "
                                             f"{len(fresh_values)} fresh")
            return False
        measured = (spreads or {}).get(key)
        for i, (s, f) in enumerate(zip(stored_values, fresh_values)):
            if not (isinstance(s, str) and isinstance(f, str)):
                same = s == f
            elif measured is not None and (i >= len(measured)
                                           or len(measured[i]) != len(numbers_in(s))):
                cell.comparison_traceback.append(
                    f"the spreads stored for this cell's {key} do not fit its stored output "
                    "(made before the output was re-made): run `make spread`")
                return False
            else:
                same = numbers_match(s, f, measured[i] if measured is not None else None)
            if not same:
                what = SPREAD_TOLERANCE if measured is not None else TOLERANCE
                cell.comparison_traceback.append(
                    f"{key} differs beyond the tolerance ({what}):\n"
                    f"stored:\n{s}\nfresh:\n{f}"
                    + (f"\nmeasured spreads: {measured[i]}" if measured is not None else ""))
                return False
    return True


def pytest_addoption(parser):
    parser.addoption("--nbval-spread", action="store_true", default=False,
                     help="with --nbval: compare every printed number within its measured "
                          "spread (validation/notebook_compare.py) instead of to the letter")


def pytest_configure(config):
    from nbval.plugin import IPyNbCell

    if getattr(config.option, "nbval_lax", False):
        IPyNbCell.compare_outputs = compare_within_tolerance
    elif getattr(config.option, "nbval_spread", False):
        IPyNbCell.compare_outputs = compare_within_spread


def _pinned_settings() -> dict[str, str]:
    from pathlib import Path

    lines = (Path(__file__).resolve().parent.parent / "numerics.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def pytest_sessionstart(session):
    """Strict nbval on x86-64 without the pinned numerics would fail in late digits, cell by
    cell: say so once, up front, with the way out."""
    import os
    import platform

    import pytest

    option = session.config.option
    if not getattr(option, "nbval", False) or getattr(option, "nbval_lax", False) \
            or getattr(option, "nbval_spread", False):
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    wrong = {k: (v, os.environ.get(k)) for k, v in _pinned_settings().items()
             if os.environ.get(k) != v}
    if wrong:
        listed = ", ".join(f"{k}={v} (here {now!r})" for k, (v, now) in sorted(wrong.items()))
        raise pytest.UsageError(
            "strict nbval compares outputs made under numerics.env, and this process lacks "
            f"{listed}. Run `make test`, or first `set -a; . ./numerics.env; set +a`; on a GPU, "
            "`make test-anywhere`.")
