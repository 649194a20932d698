import pytest
import torch

import vaetut


def test_encoder_and_decoder_are_separate_modules():
    model = vaetut.VAE(64, 5, hidden=(32, 16))
    enc = {id(p) for p in model.encoder.parameters()}
    dec = {id(p) for p in model.decoder.parameters()}
    assert enc and dec and not enc & dec
    assert enc | dec == {id(p) for p in model.parameters()}
    assert model.config == {"x_dim": 64, "z_dim": 5, "hidden": [32, 16], "likelihood": "bernoulli"}


def test_decoder_mirrors_the_encoder_widths():
    model = vaetut.VAE(64, 5, hidden=(32, 16))
    widths = [m.out_features for m in model.decoder.net if isinstance(m, torch.nn.Linear)]
    assert widths == [16, 32, 64]


def test_mean_image_is_a_probability_for_bernoulli():
    model = vaetut.VAE(64, 5)
    images = model.sample(7, torch.Generator().manual_seed(0))
    assert images.shape == (7, 64) and images.min() >= 0 and images.max() <= 1
    assert model.reconstruct(torch.rand(3, 64)).shape == (3, 64)


@pytest.mark.parametrize("kwargs, name", [
    (dict(x_dim=0, z_dim=2), "x_dim"),
    (dict(x_dim=4, z_dim=2.0), "z_dim"),
    (dict(x_dim=4, z_dim=2, hidden=(0,)), "hidden"),
    (dict(x_dim=4, z_dim=2, likelihood="poisson"), "likelihood"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        vaetut.VAE(**kwargs)


def test_no_hidden_layers_is_a_linear_vae():
    model = vaetut.VAE(6, 2, hidden=())
    assert vaetut.elbo(model, torch.rand(3, 6)).elbo.shape == (3,)


def test_pick_device():
    assert vaetut.pick_device("cpu") == torch.device("cpu")
    assert vaetut.pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device"):
        vaetut.pick_device("tpu")
    with pytest.raises(ValueError, match="device"):
        vaetut.pick_device(42)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            vaetut.pick_device("cuda")
        with pytest.raises(ValueError, match="device"):
            vaetut.fit(vaetut.VAE(4, 2), torch.rand(8, 4), epochs=1, device="cuda",
                       progress=False)


@pytest.mark.parametrize("make, match", [
    (lambda: vaetut.VAE(64, 8, hidden=128), r"hidden must be a sequence of positive ints.*\(128,\)"),
    (lambda: vaetut.VAE(64, 8, hidden="128"), r"hidden must be a sequence"),
    (lambda: vaetut.VAE(64, 8, hidden=None), r"hidden must be a sequence"),
    (lambda: vaetut.model.Encoder(64, 8, hidden=128), r"hidden must be a sequence"),
    (lambda: vaetut.model.Encoder(64, 0, hidden=(8,)), r"z_dim must be a positive int"),
    (lambda: vaetut.model.Decoder(8, 64, hidden=(8,), likelihood="poisson"), "likelihood"),
    (lambda: vaetut.model.Decoder(8, 64.0, hidden=(8,), likelihood="gaussian"), "x_dim"),
])
def test_bad_hidden_widths_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
