"""Notebook validation where the stored numbers cannot reproduce bit for bit.

`make test` runs nbval strictly: every cell's output must equal the stored one to the
letter. Under the pinned numerics of numerics.env that holds on any x86-64 CPU.

On a GPU (its random draws come from another generator, so a trained model is another
sample) or on arm64 (its kernels sum in another order), `make test-anywhere` runs nbval
with `--nbval-lax`. Then:

- every cell runs, and every `assert` in it must hold (the asserts' ranges hold the
  seed spread, which is what they check there);
- the cells tagged `nbval-check-output`, those whose numbers depend on neither random
  draws nor training (the exact-model cells), are compared with their stored outputs
  number by number: the text between the numbers must be identical, and each number must
  lie within TOLERANCE of the stored one (see `numbers_match`);
- the other cells' outputs are not compared.

Strict mode is unchanged by this file.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

# A printed number matches its stored value when they differ by at most one unit in the
# last digit printed (the rounding of a value that sits at a rounding boundary on one
# machine and not on the other), or by RELATIVE of the stored value, whichever is larger.
# Integers (no decimal point, no exponent) must match exactly: they are counts.
RELATIVE = 1e-6
TOLERANCE = ("one unit in the last printed digit, or 1e-6 relative, whichever is larger; "
             "integers exactly")


def last_digit_unit(token: str) -> float:
    """The value of one unit in the last digit of a printed number: 0.01 for '-18.63',
    1e-15 for '9.2e-14', 0 for an integer such as '3000' (integers must match exactly)."""
    mantissa, _, exponent = token.lower().partition("e")
    if "." not in mantissa and not exponent:
        return 0.0
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def number_matches(stored: str, fresh: str) -> bool:
    """True if the printed number `fresh` lies within TOLERANCE of `stored`."""
    a, b = float(stored), float(fresh)
    if not (math.isfinite(a) and math.isfinite(b)):
        return stored == fresh
    allowed = max(RELATIVE * abs(a), last_digit_unit(stored), last_digit_unit(fresh))
    return abs(a - b) <= allowed * (1 + 1e-9)  # the slack absorbs the binary representation


def numbers_match(stored: str, fresh: str) -> bool:
    """True if two texts are equal apart from numbers, and each pair of numbers matches."""
    stored_words, fresh_words = NUMBER.split(stored), NUMBER.split(fresh)
    stored_numbers, fresh_numbers = NUMBER.findall(stored), NUMBER.findall(fresh)
    return (stored_words == fresh_words and len(stored_numbers) == len(fresh_numbers)
            and all(map(number_matches, stored_numbers, fresh_numbers)))


def _flatten(cell, outputs) -> dict[str, list]:
    """The outputs as nbval compares them: sanitized, grouped by stream name or MIME type."""
    from nbval.plugin import transform_streams_for_comparison

    skip = cell.parent.skip_compare
    flat: dict[str, list] = defaultdict(list)
    for out in transform_streams_for_comparison(outputs):
        for key, value in out.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        flat[mime].append(cell.sanitize(data))
            else:
                flat[key].append(cell.sanitize(value))
    return flat


def compare_within_tolerance(cell, test, ref, skip_compare=None) -> bool:
    """nbval's comparison, with numbers compared within TOLERANCE instead of exactly."""
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
        for s, f in zip(stored_values, fresh_values):
            same = numbers_match(s, f) if isinstance(s, str) and isinstance(f, str) else s == f
            if not same:
                cell.comparison_traceback.append(
                    f"{key} differs beyond the tolerance ({TOLERANCE}):\n"
                    f"stored:\n{s}\nfresh:\n{f}")
                return False
    return True


def pytest_configure(config):
    if getattr(config.option, "nbval_lax", False):
        from nbval.plugin import IPyNbCell

        IPyNbCell.compare_outputs = compare_within_tolerance


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
    if not getattr(option, "nbval", False) or getattr(option, "nbval_lax", False):
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    wrong = {k: (v, os.environ.get(k)) for k, v in _pinned_settings().items()
             if os.environ.get(k) != v}
    if wrong:
        listed = ", ".join(f"{k}={v} (here {now!r})" for k, (v, now) in sorted(wrong.items()))
        raise pytest.UsageError(
            "strict nbval compares outputs made under numerics.env, and this process lacks "
            f"{listed}. Run `make test`, or first `set -a; . ./numerics.env; set +a`; on a GPU "
            "or arm64, `make test-anywhere`.")
