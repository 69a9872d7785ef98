"""Label-free recovery: the re-fit repairs what pruning broke on samples it never saw, solves the
ridge problem it states in both of its forms, and its shortcuts change no number."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers import importance, masks, search
from workers.recovery import LayerSystem, RecoveryConfig, _design, recover, refit_layer


def _pruned(net, spec, calib, amount):
    scores = importance.score("magnitude", net, spec, calib)
    return masks.shrink(net, masks.build(spec, scores, amount, masks.Schedule()), spec)


def test_the_refit_brings_a_pruned_network_closer_to_the_dense_one_on_held_out_samples(tiny_cnn):
    net, spec, calib = tiny_cnn
    fit, held = calib.folds(2)[0]
    plain, refit = _pruned(net, spec, fit, 0.6), _pruned(net, spec, fit, 0.6)
    recover(plain, net, spec, fit, RecoveryConfig(lsq=False))
    recover(refit, net, spec, fit, RecoveryConfig())
    with torch.no_grad():
        kl = {name: search.kl_divergence(held.logits, p.net[spec["stem_end"]:](held.stem_out))
              for name, p in (("plain", plain), ("refit", refit))}
    assert kl["refit"] < 0.7 * kl["plain"], kl
    for i, m in refit.masks.items():  # pruned weights stay pruned
        assert not refit.net[i].weight.detach()[~m].any()


def test_conv_design_rows_are_the_unfolded_patches_it_picked():
    gen = torch.Generator().manual_seed(0)
    for channels, size, kernel, padding in ((4, 9, 3, 1), (3, 7, 3, 0), (2, 6, 5, 2)):
        layer = nn.Conv2d(channels, 5, kernel, padding=padding)
        x = torch.randn(6, channels, size, size)
        cols = F.unfold(x, layer.kernel_size, padding=layer.padding)  # (N, D, L)
        for rows in (40, 10**6):  # a sample of positions, and all of them
            got, pick = _design(layer, x, rows, gen)
            assert torch.equal(got, cols[pick // cols.shape[2], :, pick % cols.shape[2]])
            assert len(got) == min(rows, cols.shape[0] * cols.shape[2])


def _ridge(x, y, w0, keep, lam):
    """The stated problem, solved directly: min ||[x 1] w - y||^2 + lam ||w - w0||^2 over kept w."""
    a = np.concatenate([x, np.ones((len(x), 1))], 1)[:, keep]
    return np.linalg.solve(a.T @ a + lam * np.eye(keep.sum()), a.T @ y + lam * w0[keep])


def test_the_primal_and_the_dual_solve_the_same_ridge_problem():
    rng = np.random.default_rng(0)
    # (samples, inputs, share of inputs each row keeps): more samples than kept inputs (the primal,
    # from the layer's whole Gram); fewer (the dual); a wide layer whose sparse rows are solved in
    # the primal from their own columns and whose dense rows in the dual
    for samples, inputs, shares in ((200, 30, (0.6,) * 4), (12, 30, (0.6,) * 4), (40, 100, (0.2, 0.1, 0.8, 0.9))):
        x = rng.normal(size=(samples, inputs)).astype(np.float32)
        y = rng.normal(size=(samples, 4)).astype(np.float32)
        layer = nn.Linear(inputs, 4)
        w0 = torch.cat([layer.weight.detach(), layer.bias.detach()[:, None]], 1).double().numpy()
        mask = torch.from_numpy(rng.random((4, inputs)) < np.array(shares)[:, None])
        system = LayerSystem(torch.from_numpy(x), torch.from_numpy(y), damp=0.05)
        refit_layer(layer, mask, system)
        got = torch.cat([layer.weight.detach(), layer.bias.detach()[:, None]], 1).numpy()
        for r in range(4):
            keep = np.append(mask[r].numpy(), True)
            want = _ridge(x.astype(np.float64), y[:, r].astype(np.float64), w0[r], keep, system.lam)
            np.testing.assert_allclose(got[r, keep], want, rtol=1e-4, atol=1e-5)
            assert not got[r, :inputs][~mask[r].numpy()].any()


def test_a_calibration_set_reused_across_candidates_gives_the_same_refit_as_a_fresh_one(tiny_cnn):
    net, spec, calib = tiny_cnn
    reused = _pruned(net, spec, calib, 0.5)
    recover(reused, net, spec, calib, RecoveryConfig())  # fills the first layer's system
    assert calib.systems
    for amount in (0.4, 0.7):
        again, fresh = _pruned(net, spec, calib, amount), _pruned(net, spec, calib, amount)
        recover(again, net, spec, calib, RecoveryConfig())
        recover(fresh, net, spec, calib.subset(torch.arange(calib.size), "fresh"), RecoveryConfig())
        for a, b in zip(again.net, fresh.net, strict=True):
            if isinstance(a, (nn.Conv2d, nn.Linear)):
                assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
