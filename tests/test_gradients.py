"""Tests of vaetut.gradients: the split of the ELBO's gradient by term and by parameter
group, the backward order, the cut-path objectives and the score-function estimator."""
import math

import pytest
import torch

import vaetut
from vaetut import gradients as G
from vaetut import objective as O
from vaetut.distributions import LOG_2PI, draw_eps


def noise(model, n_samples, batch_size, generator):
    """draw_eps in the model's dtype."""
    return draw_eps((n_samples, batch_size, model.z_dim), generator,
                    next(model.parameters()).dtype)


def small_model(likelihood="bernoulli", hidden=(16,), x_dim=12, z_dim=3, seed=0,
                dtype=torch.float64):
    torch.manual_seed(seed)
    return vaetut.VAE(x_dim, z_dim, hidden, likelihood).to(dtype)


def batch(likelihood="bernoulli", n=10, x_dim=12, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, x_dim, generator=g, dtype=dtype)
    return (x > 0.5).to(dtype) if likelihood == "bernoulli" else x


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_terms_add_up_to_the_elbo_gradient_of_vaetut_elbo(likelihood):
    model, x = small_model(likelihood), batch(likelihood)
    tg = G.term_gradients(model, x, generator=torch.Generator().manual_seed(5))
    # independent reference: vaetut.elbo draws the same eps from the same seed
    loss = vaetut.elbo(model, x, 1, torch.Generator().manual_seed(5)).elbo.mean()
    ref = dict(zip([n for n, _ in model.named_parameters()],
                   torch.autograd.grad(loss, list(model.parameters()))))
    for name, g in ref.items():
        split = tg.grads["log_px_given_z"][name] - tg.grads["kl_to_prior"][name]
        torch.testing.assert_close(tg.grads["elbo"][name], g, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(split, g, rtol=1e-12, atol=1e-12)
    assert G.group_norm(tg.grads["elbo"], "decoder.") > 1e-3


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_kl_term_never_reaches_the_decoder(likelihood):
    model, x = small_model(likelihood), batch(likelihood)
    tg = G.term_gradients(model, x, generator=torch.Generator().manual_seed(0))
    decoder = {n for n, _ in model.named_parameters() if n.startswith("decoder.")}
    encoder = {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    assert not tg.reached["kl_to_prior"] & decoder
    assert all(torch.all(tg.grads["kl_to_prior"][n] == 0) for n in decoder)
    assert tg.reached["kl_to_prior"] == encoder
    # the reconstruction term reaches every parameter, the decoder's and the encoder's
    assert tg.reached["log_px_given_z"] == decoder | encoder
    assert all(tg.grads["log_px_given_z"][n].abs().sum() > 0 for n in decoder | encoder)


def test_detached_z_cuts_the_reconstruction_path_to_the_encoder():
    model, x = small_model(), batch()
    eps = noise(model, 1, len(x), torch.Generator().manual_seed(0))
    cut = G.term_gradients(model, x, eps, detach_z=True)
    full = G.term_gradients(model, x, eps)
    assert G.group_norm(cut.grads["log_px_given_z"], "encoder.") == 0.0
    assert G.group_norm(full.grads["log_px_given_z"], "encoder.") > 1e-3
    for name in cut.grads["elbo"]:  # the decoder's gradient and the KL's are unchanged
        if name.startswith("decoder."):
            torch.testing.assert_close(cut.grads["elbo"][name], full.grads["elbo"][name])
        torch.testing.assert_close(cut.grads["kl_to_prior"][name],
                                   full.grads["kl_to_prior"][name])


def test_autograd_agrees_with_finite_differences_in_float64():
    model, x = small_model("gaussian", hidden=(5,), x_dim=4, z_dim=2), batch("gaussian", 6, 4)
    eps = noise(model, 2, len(x), torch.Generator().manual_seed(3))
    tg = G.term_gradients(model, x, eps)
    h = 1e-6
    with torch.no_grad():
        for name, p in model.named_parameters():
            for i in range(p.numel()):
                flat = p.view(-1)
                old = flat[i].item()
                flat[i] = old + h
                up = vaetut.elbo(model, x, len(eps), eps=eps)
                flat[i] = old - h
                down = vaetut.elbo(model, x, len(eps), eps=eps)
                flat[i] = old
                for term in G.TERMS:
                    fd = (getattr(up, term).mean() - getattr(down, term).mean()).item() / (2 * h)
                    auto = tg.grads[term][name].view(-1)[i].item()
                    assert abs(fd - auto) <= 1e-6 * max(1.0, abs(auto)), (name, i, term, fd, auto)


def test_backward_order_is_decoder_last_layer_first_then_encoder():
    model, x = small_model(hidden=(16, 8), dtype=torch.float32), batch(dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    order = G.record_backward_order(model, lambda: -vaetut.elbo(model, x, 1, gen).elbo.mean())
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    assert sorted(order) == sorted(leaves)
    dec = [n for n in order if n.startswith("decoder.")]
    enc = [n for n in order if n.startswith("encoder.")]
    assert order == dec + enc  # every decoder module before every encoder module
    assert dec == [f"decoder.net.{i}" for i in reversed(range(len(model.decoder.net)))]
    assert enc[-1] == "encoder.body.0" and set(enc[:2]) == {"encoder.mean", "encoder.log_var"}
    # the hooks are removed afterwards
    assert all(not m._forward_hooks for m in model.modules())


def test_backward_order_of_the_kl_term_alone_reaches_no_decoder_module():
    model, x = small_model(dtype=torch.float32), batch(dtype=torch.float32)
    order = G.record_backward_order(model, lambda: vaetut.kl_to_prior(*model.encoder(x)).mean())
    assert order and all(n.startswith("encoder.") for n in order)


def test_cut_objectives_have_the_elbo_value_and_the_cut_gradient():
    model, x = small_model(), batch()
    ref = vaetut.elbo(model, x, 2, torch.Generator().manual_seed(4))
    eps = noise(model, 2, len(x), torch.Generator().manual_seed(4))
    tg = G.term_gradients(model, x, eps)
    params = dict(model.named_parameters())
    for objective, term, detach in ((O.elbo_z_detached, "elbo", True),
                                    (O.elbo_without_kl, "log_px_given_z", False)):
        out = objective(model, x, 2, torch.Generator().manual_seed(4))
        torch.testing.assert_close(out.elbo, ref.elbo)
        got = torch.autograd.grad(out.elbo.mean(), list(params.values()))
        want = G.term_gradients(model, x, eps, detach_z=detach).grads[term] if detach \
            else tg.grads[term]
        for (name, _), g in zip(params.items(), got):
            torch.testing.assert_close(g, want[name], rtol=1e-10, atol=1e-12)
    # with z detached the encoder's gradient is the KL term's alone
    out = O.elbo_z_detached(model, x, 2, torch.Generator().manual_seed(4))
    got = torch.autograd.grad(out.elbo.mean(), list(model.encoder.parameters()))
    for (name, _), g in zip(model.encoder.named_parameters(), got):
        torch.testing.assert_close(g, -tg.grads["kl_to_prior"]["encoder." + name])


def test_fit_runs_the_cut_objectives_and_respects_a_frozen_decoder():
    x = batch(n=128, x_dim=64, dtype=torch.float32)
    torch.manual_seed(0)
    model = vaetut.VAE(64, 2, (16,))
    model.decoder.requires_grad_(False)
    before = {n: p.clone() for n, p in model.named_parameters()}
    vaetut.fit(model, x, epochs=1, batch_size=64, device="cpu", progress=False)
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == n.startswith("encoder."), n
    for objective in (O.elbo_z_detached, O.elbo_without_kl):
        torch.manual_seed(0)
        m = vaetut.VAE(64, 2, (16,))
        h = vaetut.fit(m, x, epochs=1, batch_size=64, device="cpu", progress=False,
                       objective=objective)
        assert len(h) == 1 and math.isfinite(h["train_elbo"][-1])


def test_layer_norms_group_weight_and_bias():
    grads = {"decoder.net.0.weight": torch.tensor([3.0]), "decoder.net.0.bias": torch.tensor([4.0]),
             "encoder.mean.weight": torch.tensor([[1.0, 0.0]])}
    norms = G.layer_norms(grads)
    assert norms == pytest.approx({"decoder.net.0": 5.0, "encoder.mean": 1.0})
    assert G.group_norm(grads, "decoder.") == pytest.approx(5.0)


def exact_expected_log_lik(model, x):
    """E_q[log p(x|z)] in closed form for a linear decoder with Gaussian likelihood."""
    q_mean, q_log_var = model.encoder(x)
    lin = model.decoder.net[0]
    log_var = model.decoder.log_var
    mean = lin(q_mean)  # (B, D)
    spread = (lin.weight.pow(2) @ q_log_var.exp().T).T  # (B, D): sum_k W_dk^2 v_k
    return -0.5 * (((x - mean).pow(2) + spread) / log_var.exp() + log_var + LOG_2PI).sum(-1)


@pytest.mark.slow
def test_all_three_estimators_are_unbiased_on_a_linear_gaussian_vae():
    torch.manual_seed(0)
    model = vaetut.VAE(3, 2, (), "gaussian").double()
    with torch.no_grad():
        model.decoder.log_var.fill_(-0.5)
    x = batch("gaussian", 4, 3)
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        exact_expected_log_lik(model, x).mean(), list(model.encoder.parameters()))])
    gen = torch.Generator().manual_seed(0)
    worst = {}
    for estimator in G.ESTIMATORS:
        est = torch.stack([G.encoder_gradient(model, x, 4, estimator, gen) for _ in range(4000)])
        se = est.std(0) / math.sqrt(len(est))
        z = ((est.mean(0) - exact) / se).abs()
        worst[estimator] = z.max().item()
        assert z.max() < 4.5, (estimator, z)
    # and a wrong estimator is caught: dropping sigma's dependence (grad of mean only)
    est = torch.stack([G.encoder_gradient(model, x, 4, "reparam", gen) for _ in range(500)])
    wrong = est.clone()
    n_mean = sum(p.numel() for p in model.encoder.mean.parameters())
    wrong[:, n_mean:] = 0  # pretend the log-variance layer gets no gradient
    z = ((wrong.mean(0) - exact) / (est.std(0) / math.sqrt(len(est)) + 1e-12)).abs()
    assert z.max() > 4.5


def test_estimator_variances_are_ordered_on_a_vae():
    model = small_model(hidden=(16,), x_dim=12, z_dim=3)
    x = batch(n=16)
    gen = torch.Generator().manual_seed(0)
    var = {e: G.estimator_variance(model, x, 4, e, 100, gen)[1] for e in G.ESTIMATORS}
    assert var["reparam"] < var["score_loo"] < var["score"]
    with pytest.raises(ValueError):
        G.encoder_gradient(model, x, 1, "score_loo")


def test_draw_graph_labels_each_module_with_its_backward_step():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["decoder.net.2", "decoder.net.1", "decoder.net.0", "encoder.log_var",
             "encoder.mean", "encoder.act", "encoder.body.0"]
    fig, ax = plt.subplots()
    vaetut.plots.draw_graph(order, ax)
    texts = [t.get_text() for t in ax.texts]
    for i, name in enumerate(order, 1):
        assert any(t.startswith(name) and t.endswith(f"\nstep {i}") for t in texts), name
    plt.close(fig)


def test_zeros_come_from_autograd_and_reachability_from_the_graph():
    model, x = small_model(), batch()
    eps = noise(model, 1, len(x), torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    kl = vaetut.kl_to_prior(*model.encoder(x)).mean()
    assert G.reachable_parameters(kl, params) == {n for n in params if n.startswith("encoder.")}
    # a wrong "KL" that touches the decoder is caught by the graph walk and by the values
    leaky = kl + 1e-3 * model.decoder.net[0].weight.sum()
    assert "decoder.net.0.weight" in G.reachable_parameters(leaky, params)
    # a path with a zero gradient along it still counts as reached
    zero_path = kl + 0.0 * model.decoder.net[0].bias.sum()
    assert "decoder.net.0.bias" in G.reachable_parameters(zero_path, params)
    tg = G.term_gradients(model, x, eps)
    assert all(tg.grads["kl_to_prior"][n].shape == p.shape for n, p in params.items())
    for n in params:
        if n.startswith("decoder."):
            torch.testing.assert_close(tg.grads["elbo"][n], tg.grads["log_px_given_z"][n],
                                       rtol=0, atol=1e-14)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_head_gradients_follow_the_chain_rule_through_z(likelihood):
    model, x = small_model(likelihood), batch(likelihood)
    eps = noise(model, 3, len(x), torch.Generator().manual_seed(1))
    hg = G.head_gradients(model, x, eps)
    B = len(x)
    sigma = (0.5 * hg.q_log_var).exp()
    torch.testing.assert_close(hg.grad_mean, hg.grad_z.sum(0) + hg.q_mean / B)
    torch.testing.assert_close(hg.grad_log_var, (hg.grad_z * eps * sigma / 2).sum(0)
                               + (hg.q_log_var.exp() - 1) / (2 * B))
    # grad_z by finite differences of the reconstruction part of the loss
    h = 1e-6
    z = (hg.q_mean + sigma * eps).detach()
    dz = torch.zeros_like(z)
    dz[1, 2, 0] = h
    f = lambda zz: -vaetut.distributions.log_px_given_z(model, x, zz).mean(0).mean()
    fd = (f(z + dz) - f(z - dz)).item() / (2 * h)
    assert abs(fd - hg.grad_z[1, 2, 0].item()) < 1e-6


def test_recon_gradient_via_z_equals_the_direct_gradient_and_catches_a_second_path():
    model, x = small_model(), batch()
    eps = noise(model, 2, len(x), torch.Generator().manual_seed(2))
    tg = G.term_gradients(model, x, eps)
    via = G.recon_encoder_gradient_via_z(model, x, eps)
    assert set(via) == {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    for n, g in via.items():
        torch.testing.assert_close(g, tg.grads["log_px_given_z"][n], rtol=1e-10, atol=1e-12)
    # a reconstruction term with a second path into the encoder (through q_mean directly)
    q_mean, q_log_var = model.encoder(x)
    z = q_mean + torch.exp(0.5 * q_log_var) * eps
    second = (vaetut.distributions.log_px_given_z(model, x, z).mean(0) + q_mean.sum(-1)).mean()
    direct = torch.autograd.grad(second, list(model.encoder.mean.parameters()))
    assert (direct[1] - via["encoder.mean.bias"]).abs().max() > 0.5


def test_finite_difference_matches_autograd_and_catches_a_wrong_split():
    model, x = small_model(), batch()
    eps = noise(model, 2, len(x), torch.Generator().manual_seed(3))
    tg = G.term_gradients(model, x, eps)
    before = {n: p.clone() for n, p in model.named_parameters()}
    for term in G.TERMS:
        for name, index in (("encoder.mean.weight", (1, 2)), ("encoder.log_var.bias", (0,)),
                            ("decoder.net.2.weight", (3, 4))):
            fd = G.finite_difference(model, x, eps, term, name, index)
            assert abs(fd - tg.grads[term][name][index].item()) < 1e-7, (term, name)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored
    # at a different eps (a split whose terms saw different z) the reconstruction differs
    other = noise(model, 2, len(x), torch.Generator().manual_seed(4))
    g = tg.grads["log_px_given_z"]["encoder.mean.weight"]
    index = tuple(int(i) for i in torch.nonzero(g.abs() == g.abs().max())[0])
    fd = G.finite_difference(model, x, other, "log_px_given_z", "encoder.mean.weight", index)
    assert abs(fd - g[index].item()) > 1e-4
    with pytest.raises(ValueError):
        G.finite_difference(model, x, eps, "kl", "encoder.mean.weight", (0, 0))


def test_projection_shares_add_up_and_see_direction():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    shares = G.projection_shares({"a": a, "b": b}, a + b)
    assert shares == pytest.approx({"a": 9 / 25, "b": 16 / 25})
    # a part against the total gets a negative share, though its norm ratio is positive
    shares = G.projection_shares({"a": torch.tensor([2.0]), "b": torch.tensor([-1.0])},
                                 torch.tensor([1.0]))
    assert shares == pytest.approx({"a": 2.0, "b": -1.0})


def test_adam_first_step_is_torchs_and_depends_on_the_loss_scale_only_near_eps():
    g = torch.tensor([1.0, -2.0, 3e-9, -5e-8], dtype=torch.float64)
    for scale in (1.0, 1 / 64):
        p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([p], lr=3e-3)
        (scale * (p * g).sum()).backward()
        opt.step()
        torch.testing.assert_close(p.detach(), G.adam_first_step(scale * g, 3e-3),
                                   rtol=1e-12, atol=0)
    big = G.adam_first_step(g, 3e-3) - G.adam_first_step(g / 64, 3e-3)
    assert big[:2].abs().max() < 1e-8 and big[2:].abs().min() > 1e-4


def test_stl_drops_exactly_the_score_term_and_keeps_the_value():
    model, x = small_model(), batch()
    eps = noise(model, 3, len(x), torch.Generator().manual_seed(5))
    full = O.elbo_mc_kl(model, x, len(eps), eps=eps)
    stl = O.elbo_mc_kl(model, x, len(eps), eps=eps, stick_the_landing=True)
    torch.testing.assert_close(full.elbo, stl.elbo, rtol=0, atol=0)
    # the value against an independent Monte Carlo KL from torch.distributions
    q_mean, q_log_var = model.encoder(x)
    q = torch.distributions.Normal(q_mean, (0.5 * q_log_var).exp())
    z = q_mean + (0.5 * q_log_var).exp() * eps
    kl_ref = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(full.kl_to_prior, kl_ref)
    # the decoder's gradient is the same with and without the score term
    dec = list(model.decoder.parameters())
    for a, b in zip(torch.autograd.grad(full.elbo.mean(), dec, retain_graph=True),
                    torch.autograd.grad(stl.elbo.mean(), dec, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    r = G.mc_kl_encoder_gradients(model, x, 3, torch.Generator().manual_seed(6), n_samples=2)
    assert r.full.shape == r.stl.shape == r.score.shape == (3, sum(
        p.numel() for p in model.encoder.parameters()))
    torch.testing.assert_close(r.full, r.stl + r.score, rtol=1e-10, atol=1e-12)
    assert r.score.abs().max() > 1e-3


@pytest.mark.slow
def test_score_term_has_mean_zero_and_stl_is_unbiased():
    model, x = small_model(z_dim=2), batch(n=4)
    r = G.mc_kl_encoder_gradients(model, x, 600, torch.Generator().manual_seed(7))
    se = r.score.std(0) / math.sqrt(len(r.score))
    live = se > 0  # weights from a dead hidden unit get no gradient at all
    assert live.sum() > 20 and (r.score.mean(0)[live].abs() / se[live]).max() < 4.5
    assert 0.5 < G.mean_to_noise(r.score) < 2.0
    assert G.mean_to_noise(r.full) > 20  # the full gradient itself is not zero
    # the closed-form-KL reparameterization gradient has the same expectation
    params = list(model.encoder.parameters())
    gen = torch.Generator().manual_seed(8)
    cf = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        vaetut.elbo(model, x, eps=noise(model, 1, len(x), gen)).elbo.mean(), params)])
        for _ in range(600)])
    se = (r.stl.var(0) / len(r.stl) + cf.var(0) / len(cf)).sqrt()
    assert ((r.stl.mean(0) - cf.mean(0))[live].abs() / se[live]).max() < 4.5


def test_mean_to_noise_separates_zero_mean_from_signal():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(400, 50, generator=g, dtype=torch.float64)
    assert 0.7 < G.mean_to_noise(noise) < 1.4
    assert G.mean_to_noise(noise + 0.5) > 20


def test_vae_with_exact_posterior_outputs_the_posterior_and_stl_is_zero_there():
    x = batch("gaussian", 40, 6, seed=2)
    lg = vaetut.LinearGaussian.from_pca(x, 2)
    vae = G.vae_with_exact_posterior(lg)
    q_mean, q_log_var = vae.encoder(x)
    post_mean, post_cov = lg.posterior(x)
    torch.testing.assert_close(q_mean, post_mean)
    torch.testing.assert_close(torch.diag_embed(q_log_var.exp()), post_cov.expand(40, 2, 2))
    z = torch.randn(5, 40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(vaetut.log_px_given_z(vae, x, z), lg.log_px_given_z(x, z))
    r = G.mc_kl_encoder_gradients(vae, x, 5, torch.Generator().manual_seed(2))
    assert r.stl.abs().max() < 1e-10 and r.full.abs().max() > 1e-2
    rotated = vaetut.LinearGaussian(lg.W @ torch.tensor([[0.6, -0.8], [0.8, 0.6]],
                                                        dtype=torch.float64), lg.b, lg.noise_var)
    with pytest.raises(ValueError):
        G.vae_with_exact_posterior(rotated)
