"""numerics.env: under its settings a CPU run does not depend on the instructions the CPU
offers beyond AVX2.

A fresh machine may be Intel or AMD, with or without AVX-512. We cannot change the CPU in
a test, but each library's instruction-set knob makes it behave as on a CPU that offers
less: under the pinned settings (MKL's AVX2 code path, ATen's AVX2 kernels), capping MKL's
instructions at AVX2, oneDNN's at SSE4.1 and NumPy's dispatch below AVX-512 must leave a
training run, an exact-model evidence and a PCA bit-identical. Pinning other kernels must
change the run (so the fingerprint can see a change). Whether two CPU models compute the
same is what validation/numerics/fingerprint.json and validation/run_tests.py decide, not
these tests.
"""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNED = dict(line.split("=", 1) for line in (ROOT / "numerics.env").read_text().splitlines()
              if line and not line.startswith("#"))

FINGERPRINT = ROOT / "validation" / "numerics_fingerprint.py"


def fingerprint(**changes: str | None) -> str:
    env = {**os.environ, **PINNED}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, str(FINGERPRINT)], env=env, capture_output=True,
                          text=True, check=True, timeout=300).stdout.strip()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="make pins x86-64 only")
def test_the_makefile_exports_every_pinned_setting_to_its_targets():
    env = {k: v for k, v in os.environ.items() if k not in PINNED}  # not inherited from here
    shown = subprocess.run(["make", "-s", "numerics"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout
    assert dict(line.split("=", 1) for line in shown.splitlines()) == PINNED


@pytest.fixture(scope="module")
def pinned():
    return fingerprint()


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 code paths")
def test_pinned_runs_do_not_depend_on_the_instructions_the_cpu_offers(pinned):
    as_if_no_avx512 = fingerprint(MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2",
                                  NPY_DISABLE_CPU_FEATURES="X86_V4,AVX512_ICL,AVX512_SPR")
    onednn_older = fingerprint(ONEDNN_MAX_CPU_ISA="SSE41")
    assert pinned == as_if_no_avx512 == onednn_older


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 code paths")
def test_other_kernels_change_the_fingerprint(pinned):
    # ATen's baseline kernels and MKL's compatible code path round differently: were the
    # pins not read at all, these would not move the hash (on any x86-64 CPU)
    assert pinned != fingerprint(ATEN_CPU_CAPABILITY="default")
    assert pinned != fingerprint(MKL_CBWR="COMPATIBLE")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 code paths")
def test_how_idle_threads_wait_changes_no_number(pinned):
    # numerics.env's wait setting is there for speed alone (the README: "the same outputs
    # under each"): threads that sleep at once, or spin for libgomp's default, must give the
    # same run. A kernel that split its work by which thread arrived first would fail here.
    assert "GOMP_SPINCOUNT" in PINNED
    assert pinned == fingerprint(GOMP_SPINCOUNT=None, OMP_WAIT_POLICY="PASSIVE")
    assert pinned == fingerprint(GOMP_SPINCOUNT=None, OMP_WAIT_POLICY=None)
