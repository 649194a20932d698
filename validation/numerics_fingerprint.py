"""Print a fingerprint of the numbers a CPU run produces: a short training run, the exact
model's evidence, a PCA and NumPy's transcendental functions, hashed bit for bit.

Two processes print the same fingerprint only if every one of those numbers is the same
to the last bit. tests/test_numerics.py runs it under numerics.env with each library's
instruction-set knob turned down, as on a CPU that offers less.
"""
import hashlib

import numpy as np
import torch
from sklearn.decomposition import PCA

import vaetut

torch.manual_seed(0)
digits = vaetut.data.load_digits(binarize="fixed")
model = vaetut.VAE(64, 8, (64,))
vaetut.fit(model, digits.train, epochs=2, batch_size=64, lr=3e-3, progress=False, device="cpu")
exact = vaetut.LinearGaussian.from_pca(digits.train.double(), 4)
parts = [p.detach().numpy().tobytes() for p in model.parameters()]
parts.append(exact.log_evidence(digits.test.double()).numpy().tobytes())
parts.append(PCA(10).fit(digits.train.double().numpy()).components_.tobytes())
grid = np.linspace(0.01, 5.0, 10_001)
parts.append((np.exp(grid) + np.log(grid) + np.tanh(grid)).tobytes())
print(hashlib.sha256(b"".join(parts)).hexdigest())
