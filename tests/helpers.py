"""A small VAE trained on the digits, shared by the training and fast-path tests."""
import torch

import vaetut


def small_model(seed=0):
    torch.manual_seed(seed)
    return vaetut.VAE(64, 4, hidden=(32,))


def run(digits, epochs=3, **kwargs):
    """A seeded fit of small_model() on the digits (batch 64, so 23 steps an epoch)."""
    model = small_model()
    history = vaetut.fit(model, digits.train, digits.test, epochs=epochs, batch_size=64,
                         lr=3e-3, device="cpu", seed=0, progress=False, **kwargs)
    return model, history
