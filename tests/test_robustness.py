"""Issue 21, robustness round two: concurrent writers, crafted checkpoints, state that a
checkpoint used to forget, and errors that name what is wrong. Each test is named after
the item it covers."""
import io
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import vaetut
from helpers import run, small_model
from vaetut.run import checkpoint as checkpoint_module
from vaetut.objective import KLAnnealing, Scaled, pixel_mean_elbo


def _args(digits, **changes):
    args = dict(train=digits.train[:256], test=digits.test[:64], epochs=2, batch_size=64,
                lr=3e-3, device="cpu", seed=0, progress=False)
    args.update(changes)
    return args


# ----- 1. one writer per checkpoint -------------------------------------------------------
HOLDER = """
import sys, time
from vaetut.run.checkpoint import acquire_checkpoint_lock
lock = acquire_checkpoint_lock(sys.argv[1])
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held_by_another_process(tmp_path):
    path = tmp_path / "ck.pt"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield path, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_1_a_second_writer_is_refused_at_once_naming_the_first(digits, held_by_another_process):
    path, pid = held_by_another_process
    seen = []
    start = time.time()
    with pytest.raises(checkpoint_module.CheckpointLockedError, match=rf"ck\.pt.*another run \(pid {pid} on "):
        vaetut.fit(small_model(), **_args(digits), checkpoint=path,
                   on_epoch_end=lambda *a: seen.append(a))
    assert seen == [] and not path.exists() and time.time() - start < 10


def test_1_the_lock_is_reentrant_in_a_process_and_released_after_fit(digits, tmp_path):
    path = tmp_path / "ck.pt"
    with checkpoint_module.acquire_checkpoint_lock(path):  # what the command line does around fit
        vaetut.fit(small_model(), **_args(digits, epochs=1), checkpoint=path)
    vaetut.fit(small_model(), **_args(digits, epochs=2), checkpoint=path)  # free again
    # and released when fit fails, too
    with pytest.raises(ValueError, match="cannot resume"):
        vaetut.fit(small_model(), **_args(digits, epochs=3, lr=1e-2), checkpoint=path)
    probe = subprocess.run([sys.executable, "-c", "import sys; from vaetut.run.checkpoint import "
                            "acquire_checkpoint_lock as a; a(sys.argv[1]); print('ok')",
                            str(path)], capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "ok", probe.stderr


# ----- 2. the sweep removes only the writer's own temporaries ----------------------------
def test_2_the_stale_sweep_spares_a_siblings_live_temporary(tmp_path):
    dead = 2**22 + 12345  # above the usual pid_max: not a live process
    # the live temporary of a save to the sibling file "ck.pt.<dead>"
    sibling = tmp_path / f".ck.pt.{dead}.{os.getpid()}.0a1b2c3d.tmp"
    sibling.write_bytes(b"a save in progress")
    odd = tmp_path / f".ck.pt.{dead}.tmp"  # not a name the writer makes: kept
    odd.write_bytes(b"x")
    stale = tmp_path / f".ck.pt.{dead}.0a1b2c3d.tmp"  # the writer's own, of a dead process
    stale.write_bytes(b"x")
    vaetut.save_checkpoint(tmp_path / "ck.pt", vaetut.VAE(10, 3))
    assert sibling.exists() and odd.exists() and not stale.exists()


# ----- 3 and 11. links at a destination ---------------------------------------------------
def test_3_atomic_write_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    from vaetut.files import atomic_write

    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "history.json"
    link.symlink_to(victim)
    atomic_write(link, lambda f: f.write(b"[]"))
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "victim"]


def test_11_a_symlinked_checkpoint_is_refused_before_training(digits, tmp_path):
    target = tmp_path / "real.pt"
    vaetut.fit(small_model(), **_args(digits, epochs=1), checkpoint=target)
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    seen = []
    with pytest.raises(ValueError, match=r"link\.pt.*symbolic link"):
        vaetut.fit(small_model(), **_args(digits, epochs=2), checkpoint=link,
                   on_epoch_end=lambda *a: seen.append(a))
    assert seen == [] and link.is_symlink()
    assert vaetut.load_checkpoint(target)[1]["epoch"] == 1
    # reading through a link stays possible
    assert vaetut.load_checkpoint(link)[1]["epoch"] == 1


# ----- 4 and 9. crafted and damaged files --------------------------------------------------
def _crafted(path, config, weights):
    torch.save({"format_version": 1, "config": config, "model": weights}, path)


def test_4_a_config_asking_for_a_huge_model_is_refused_before_anything_is_built(tmp_path):
    small = vaetut.VAE(10, 3, (4,))
    path = tmp_path / "huge.pt"
    _crafted(path, {**small.config, "hidden": [200000, 200000]}, small.state_dict())
    start = time.time()
    with pytest.raises(ValueError, match=r"huge\.pt.*weights do not fit.*200000"):
        vaetut.load_checkpoint(path)
    assert time.time() - start < 5
    # weights of the claimed shapes are what it takes: a file that small cannot hold them
    _crafted(path, {**small.config, "hidden": [4], "x_dim": 10**6}, small.state_dict())
    with pytest.raises(ValueError, match=r"x_dim is 1000000.*cannot hold"):
        vaetut.load_checkpoint(path)
    _crafted(path, {**small.config, "hidden": [4] * 100000}, small.state_dict())
    start = time.time()
    with pytest.raises(ValueError, match=r"10 tensors stored, 400006 expected"):
        vaetut.load_checkpoint(path)
    assert time.time() - start < 5


@pytest.mark.parametrize("config, says", [
    ({"x_dim": 10, "z_dim": 3, "hidden": [4], "likelihood": "bernoulli", "extra": 1},
     "unknown key 'extra'"),
    ({"x_dim": "10", "z_dim": 3, "hidden": [4], "likelihood": "bernoulli"}, "x_dim"),
    ({"x_dim": 10, "z_dim": 3, "hidden": [4], "likelihood": "bernoulli", "min_log_var": "a"},
     "min_log_var"),
    ([1, 2], "not a dict"),
])
def test_4_a_malformed_config_is_named(tmp_path, config, says):
    _crafted(tmp_path / "c.pt", config, vaetut.VAE(10, 3, (4,)).state_dict())
    with pytest.raises(ValueError, match=r"c\.pt") as info:
        vaetut.load_checkpoint(tmp_path / "c.pt")
    assert says in str(info.value)


def _rewrite(path, compress=None, change=None):
    """Rewrite the zip at `path`, deflating every record or changing one's bytes."""
    with zipfile.ZipFile(path) as src:
        records = [(info, src.read(info)) for info in src.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as dst:
        for info, data in records:
            if change is not None:
                data = change(info.filename, data)
            dst.writestr(info.filename, data, compress_type=compress or zipfile.ZIP_STORED)
    path.write_bytes(buffer.getvalue())


def test_4_compressed_records_are_refused(tmp_path):
    path = tmp_path / "z.pt"
    vaetut.save_checkpoint(path, vaetut.VAE(10, 3, (4,)))
    _rewrite(path, compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match=r"z\.pt.*compressed"):
        vaetut.load_checkpoint(path)


def test_9_one_flipped_byte_in_any_tensor_record_is_found(tmp_path):
    path = tmp_path / "m.pt"
    model = vaetut.VAE(10, 3, (4,))
    vaetut.save_checkpoint(path, model)
    good = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        records = [i for i in archive.infolist() if "/data/" in i.filename]
    assert len(records) == len(model.state_dict())
    for record in records:
        damaged = bytearray(good)
        # the record's data start after its local header (30 bytes, name, extra field)
        name_len = int.from_bytes(good[record.header_offset + 26:record.header_offset + 28],
                                  "little")
        extra_len = int.from_bytes(good[record.header_offset + 28:record.header_offset + 30],
                                   "little")
        damaged[record.header_offset + 30 + name_len + extra_len] ^= 0x40
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=rf"m\.pt.*damaged.*{record.filename}.*CRC"):
            vaetut.load_checkpoint(path)


# ----- 6. the variance floor is part of the model ------------------------------------------
def test_6_min_log_var_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = vaetut.VAE(64, 4, (16,), "gaussian")
    model.decoder.min_log_var = -4.0
    with torch.no_grad():
        model.decoder.log_var.fill_(-9.0)  # far below the floor: the floor decides
    x = torch.rand(50, 64)
    vaetut.save_checkpoint(tmp_path / "g.pt", model)
    loaded, payload = vaetut.load_checkpoint(tmp_path / "g.pt")
    assert payload["config"]["min_log_var"] == -4.0 and loaded.decoder.min_log_var == -4.0
    assert vaetut.evaluate(loaded, x) == vaetut.evaluate(model, x)
    assert vaetut.VAE(**loaded.config).config == model.config
    assert "min_log_var" not in vaetut.VAE(64, 4).config  # unset: configs as before


def test_6_a_floored_run_does_not_resume_with_an_unfloored_model(tmp_path):
    x = torch.rand(128, 64)

    def gaussian(floor):
        torch.manual_seed(0)
        return vaetut.VAE(64, 4, (16,), "gaussian", min_log_var=floor)

    args = dict(epochs=1, device="cpu", progress=False, checkpoint=tmp_path / "g.pt")
    vaetut.fit(gaussian(-4.0), x, **args)
    with pytest.raises(ValueError, match=r"min_log_var"):
        vaetut.fit(gaussian(None), x, **{**args, "epochs": 2})


# ----- 7. objectives identified by what they compute ---------------------------------------
def test_7_wrappers_are_compared_with_what_they_wrap_and_their_parameters(digits, tmp_path):
    path = tmp_path / "s.pt"
    vaetut.fit(small_model(), **_args(digits, epochs=1), checkpoint=path,
               objective=Scaled(vaetut.elbo, 1))
    for other in (Scaled(pixel_mean_elbo, 1), Scaled(vaetut.elbo, 2)):
        with pytest.raises(ValueError, match=r"cannot resume.*objective.*Scaled"):
            vaetut.fit(small_model(), **_args(digits), checkpoint=path, objective=other)
    vaetut.fit(small_model(), **_args(digits), checkpoint=path, objective=Scaled(vaetut.elbo, 1))


def test_7_a_lambda_or_closure_objective_is_not_resumed_blindly(digits, tmp_path):
    path = tmp_path / "l.pt"
    vaetut.fit(small_model(), **_args(digits, epochs=1), checkpoint=path,
               objective=lambda m, x, *a, **k: vaetut.elbo(m, x, *a, **k))
    with pytest.raises(ValueError, match=r"cannot resume.*lambda, a closure"):
        vaetut.fit(small_model(), **_args(digits), checkpoint=path,
                   objective=lambda m, x, *a, **k: pixel_mean_elbo(m, x, *a, **k))


# ----- 8. the callback and the checkpoint agree --------------------------------------------
def test_8_a_resumed_annealed_run_equals_the_uninterrupted_one(digits, tmp_path):
    whole = KLAnnealing(warmup_epochs=4)
    model_whole = small_model()
    h_whole = vaetut.fit(model_whole, **_args(digits, epochs=4), objective=whole,
                         on_epoch_end=whole.on_epoch_end)
    path = tmp_path / "a.pt"
    first = KLAnnealing(warmup_epochs=4)
    vaetut.fit(small_model(), **_args(digits, epochs=2), checkpoint=path, objective=first,
               on_epoch_end=first.on_epoch_end)
    assert vaetut.load_checkpoint(path)[1]["history"][-1]["beta"] == 0.25  # the last epoch's
    again = KLAnnealing(warmup_epochs=4)
    model = small_model()
    h = vaetut.fit(model, **_args(digits, epochs=4), checkpoint=path, objective=again,
                   on_epoch_end=again.on_epoch_end)
    assert h["beta"] == h_whole["beta"] == [0.0, 0.25, 0.5, 0.75]
    assert again.betas == whole.betas and h.records == h_whole.records
    for a, b in zip(model.parameters(), model_whole.parameters()):
        assert torch.equal(a, b)


# ----- 10. ranks that disagree -------------------------------------------------------------
def test_10_ranks_with_different_definitions_are_stopped_naming_the_difference(monkeypatch):
    from vaetut.run import distributed

    def gather(out, mine):
        out[0], out[1] = mine, {**mine, "lr": "0.001"}

    monkeypatch.setattr(distributed.dist, "all_gather_object", gather)
    with pytest.raises(ValueError, match=r"lr: 0\.003 on rank 0, 0\.001 on rank 1"):
        distributed.check_same_run(distributed.Context(0, 2), {"lr": 0.003, "seed": 0})
    calls = []
    monkeypatch.setattr(distributed.dist, "all_gather_object",
                        lambda out, mine: (calls.append(1), out.__setitem__(slice(None),
                                                                            [mine, mine])))
    distributed.check_same_run(distributed.Context(0, 2), {"lr": 0.003})
    assert calls == [1]


# ----- 12. numpy values --------------------------------------------------------------------
def test_12_numpy_arguments_are_converted_at_entry(digits, tmp_path):
    plain_model, plain = small_model(), None
    plain = vaetut.fit(plain_model, **_args(digits, epochs=1))
    model = small_model()
    history = vaetut.fit(model, **_args(digits, epochs=np.int64(1), lr=np.float64(3e-3),
                                        batch_size=np.int32(64), seed=np.uint8(0)),
                         checkpoint=tmp_path / "n.pt")
    assert history.records == plain.records
    _, payload = vaetut.load_checkpoint(tmp_path / "n.pt")
    assert type(payload["optimizer"]["param_groups"][0]["lr"]) is float


def test_12_numpy_values_from_on_epoch_end_are_saved_as_numbers(digits, tmp_path):
    def note(epoch, model, record):
        record["score"] = np.float32(0.5)
        record["flag"] = np.bool_(True)

    vaetut.fit(small_model(), **_args(digits, epochs=1), checkpoint=tmp_path / "n.pt",
               on_epoch_end=note)
    record = vaetut.load_checkpoint(tmp_path / "n.pt")[1]["history"][0]
    assert record["score"] == 0.5 and type(record["score"]) is float and record["flag"] is True

    def bad(epoch, model, record):
        record["where"] = pathlib.Path("x")

    with pytest.raises(ValueError, match=r"on_epoch_end.*'where'.*PosixPath"):
        vaetut.fit(small_model(), **_args(digits, epochs=1), checkpoint=tmp_path / "b.pt",
                   on_epoch_end=bad)


# ----- 13 and 17. the training state in a checkpoint ---------------------------------------
def _tamper(digits, tmp_path, **changes):
    path = tmp_path / "t.pt"
    path.unlink(missing_ok=True)
    vaetut.fit(small_model(), **_args(digits, epochs=2), checkpoint=path)
    model, payload = vaetut.load_checkpoint(path)
    state = {k: v for k, v in payload.items() if k not in ("format_version", "config", "model")}
    for key, change in changes.items():
        state[key] = change(state[key]) if callable(change) else change
    vaetut.save_checkpoint(path, model, **state)
    return path


def test_13_a_generator_state_of_another_device_is_refused_clearly(digits, tmp_path):
    cuda_like = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: seed, offset
    path = _tamper(digits, tmp_path, generator=cuda_like, generator_device="cuda")
    with pytest.raises(ValueError, match=r"written by a run on cuda.*runs on cpu.*--device cuda"):
        vaetut.fit(small_model(), **_args(digits, epochs=3), checkpoint=path)
    path = _tamper(digits, tmp_path, generator=cuda_like, generator_device=None)  # older file
    with pytest.raises(ValueError, match=r"generator state \(\(16,\)\).*another kind of device"):
        vaetut.fit(small_model(), **_args(digits, epochs=3), checkpoint=path)


def _optimizer_lr(value):
    def change(opt):
        return {**opt, "param_groups": [{**opt["param_groups"][0], "lr": value}]}
    return change


@pytest.mark.parametrize("changes, says", [
    (dict(epoch=-5), "epoch is -5"),
    (dict(epoch=True), "epoch is True"),
    (dict(history=lambda h: h * 3), "holds 6 records for epoch 2"),
    (dict(history=lambda h: [h[1], h[0]]), "record 0 is not the record of epoch 1"),
    (dict(history=lambda h: [h[0], {**h[1], "test_elbo": "x"}]), "'test_elbo'"),
    (dict(history=lambda h: [h[0], {**h[1], "beta": [1]}]), "'beta'"),
    (dict(optimizer=_optimizer_lr(10.0)), "optimizer's lr is 10.0"),
    (dict(optimizer=lambda o: {**o, "state": {0: {"step": torch.tensor(3.0)}}}), "exp_avg"),
    (dict(optimizer=lambda o: {"state": {}}), "not the state of fit's Adam"),
    (dict(optimizer=lambda o: {**o, "state": {99: {}}}), "entry 99"),
    (dict(generator=lambda g: g.float()), "generator state"),
])
def test_17_a_tampered_training_state_is_refused_naming_the_file(digits, tmp_path, changes, says):
    path = _tamper(digits, tmp_path, **changes)
    with pytest.raises(ValueError, match=r"t\.pt") as info:
        vaetut.fit(small_model(), **_args(digits, epochs=3), checkpoint=path)
    assert says in str(info.value)


# ----- 15, 16, 22. fit's entry checks ------------------------------------------------------
@pytest.mark.parametrize("make, says", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: None, "Not a directory"),
])
def test_15_fit_checks_its_checkpoint_path_before_training(digits, tmp_path, make, says):
    path = tmp_path / "ck.pt"
    make(path)
    if says == "Not a directory":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "ck.pt"
    seen = []
    with pytest.raises(ValueError, match="checkpoint") as info:
        vaetut.fit(small_model(), **_args(digits), checkpoint=path, resume=False,
                   on_epoch_end=lambda *a: seen.append(a))
    assert says in str(info.value) and seen == []


def test_16_stochastic_binarization_needs_data_in_0_1(digits):
    model = vaetut.VAE(64, 4, (16,), "gaussian")
    with pytest.raises(ValueError, match=r"stochastic_binarization=True.*\[0, 1\].*\[-1"):
        vaetut.fit(model, digits.train * 2 - 1, epochs=1, progress=False,
                   stochastic_binarization=True)
    with pytest.raises(ValueError, match="stochastic_binarization must be True or False"):
        vaetut.fit(model, digits.train, epochs=1, progress=False, stochastic_binarization="yes")


def test_22_training_data_with_requires_grad_get_no_grad(digits):
    train = digits.train[:256].clone().requires_grad_(True)
    vaetut.fit(small_model(), train, epochs=1, batch_size=64, device="cpu", progress=False)
    assert train.grad is None


def test_20_a_meta_tensor_is_named(digits):
    with pytest.raises(ValueError, match="train is a tensor on the meta device"):
        vaetut.fit(small_model(), torch.empty(10, 64, device="meta"), epochs=1, progress=False)


# ----- 19. messages that say what is wrong -------------------------------------------------
def test_19_a_fifo_at_the_checkpoint_path_is_called_one(tmp_path):
    os.mkfifo(tmp_path / "f.pt")
    with pytest.raises(ValueError, match=r"f\.pt.*is a FIFO"):
        vaetut.load_checkpoint(tmp_path / "f.pt")


def test_19_an_unreadable_checkpoint_is_not_called_damaged(tmp_path, monkeypatch):
    path = tmp_path / "u.pt"
    vaetut.save_checkpoint(path, vaetut.VAE(10, 3))
    real_open = os.open

    def denied(name, *args, **kwargs):
        if os.fspath(name) == os.fspath(path):
            raise PermissionError(13, "Permission denied")
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError, match=r"cannot read the checkpoint.*u\.pt") as info:
        vaetut.load_checkpoint(path)
    assert "damaged" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_19_map_location_cuda_without_cuda_says_so(tmp_path):
    vaetut.save_checkpoint(tmp_path / "m.pt", vaetut.VAE(10, 3))
    with pytest.raises(ValueError, match="CUDA is not available"):
        vaetut.load_checkpoint(tmp_path / "m.pt", map_location="cuda")
    with pytest.raises(ValueError, match="not a device name"):
        vaetut.load_checkpoint(tmp_path / "m.pt", map_location="gpu")


def test_run_still_resumes_bit_identically(digits, tmp_path):
    whole_model, whole = run(digits, epochs=3)
    run(digits, epochs=1, checkpoint=tmp_path / "r.pt")
    model, resumed = run(digits, epochs=3, checkpoint=tmp_path / "r.pt")
    assert resumed.records == whole.records
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), whole_model.parameters()))
