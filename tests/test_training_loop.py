"""Chapter 3 writes out the loop that `fit` runs in ten lines and checks that it gives fit's
weights bit for bit on the CPU. These tests keep that promise true when fit or its step
runner changes: the same loop, on a small problem, against fit."""
import torch

import vaetut


def train_by_hand(model, x, epochs, batch_size, lr, seed, noise_first=False):
    """The chapter's loop: one generator for the permutation and then each batch's noise;
    with noise_first=True one draw is taken from it before each epoch's permutation."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    for _ in range(epochs):
        if noise_first:
            torch.randn(1, generator=gen)
        perm = torch.randperm(len(x), generator=gen)
        for idx in perm.split(batch_size):
            loss = -vaetut.elbo(model, x.index_select(0, idx), 1, gen, validate=False).elbo.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def _model():
    torch.manual_seed(0)
    return vaetut.VAE(x_dim=64, z_dim=4, hidden=(32,), likelihood="bernoulli")


def _data():
    digits = vaetut.data.load_digits(binarize="fixed")
    return digits.train[:200], digits.test[:50]


def _equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def test_hand_written_loop_gives_fits_weights_bit_for_bit():
    train, test = _data()  # 200 = 6 batches of 32 and one of 8: the short last batch too
    by_fit = _model()
    vaetut.fit(by_fit, train, test, epochs=3, batch_size=32, lr=3e-3, device="cpu", seed=5,
               progress=False)
    by_hand = train_by_hand(_model(), train, epochs=3, batch_size=32, lr=3e-3, seed=5)
    assert not _equal(by_fit, _model())  # training moved the weights
    assert _equal(by_fit, by_hand)


def test_fits_test_evaluation_leaves_the_training_generator_alone():
    train, test = _data()
    with_test, without_test = _model(), _model()
    vaetut.fit(with_test, train, test, epochs=2, batch_size=32, lr=3e-3, device="cpu", seed=1,
               progress=False)
    vaetut.fit(without_test, train, None, epochs=2, batch_size=32, lr=3e-3, device="cpu",
               seed=1, progress=False)
    assert _equal(with_test, without_test)


def test_the_comparison_sees_another_order_of_draws():
    train, _ = _data()
    by_fit = _model()
    vaetut.fit(by_fit, train, epochs=2, batch_size=32, lr=3e-3, device="cpu", seed=5,
               progress=False)
    shifted = train_by_hand(_model(), train, epochs=2, batch_size=32, lr=3e-3, seed=5,
                            noise_first=True)
    assert not _equal(by_fit, shifted)
