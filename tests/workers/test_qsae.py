import numpy as np
import pytest
import torch

from workers import calibration, importance, nets
from workers.qsae import QSAE, QSAEConfig, set_gradients, train_qsae
from workers.quantization import QMAX, fake_quant, quantize

from .conftest import inputs, make_net


def test_the_encoder_is_really_fake_quantized_in_the_forward_pass():
    rows = torch.relu(torch.randn(2000, 24))
    model, _ = train_qsae(rows, QSAEConfig(steps=30, round_steps=5))
    w = model.encoder_weight().detach()  # what the forward pass multiplies with
    for r in range(w.shape[0]):
        assert len(torch.unique(w[r])) <= 256
    raw = QSAE(24, 12, quantize=False)
    assert max(len(torch.unique(raw.encoder_weight()[r].detach())) for r in range(12)) == 24


def test_fake_quant_matches_int8_storage_and_passes_gradients_straight_through():
    w = torch.randn(5, 7, requires_grad=True)
    fq = fake_quant(w)
    q, s = quantize(w.detach())
    torch.testing.assert_close(fq.detach(), q.float() * s[:, None])
    assert int(q.abs().max()) == QMAX
    fq.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))


@pytest.mark.parametrize("quantize", [True, False])
def test_the_hand_written_gradients_are_autograds_of_the_documented_loss(quantize):
    torch.manual_seed(0)
    rows = torch.relu(torch.randn(64, 20)) * torch.rand(20) * 3
    scale = rows.pow(2).mean(0).sqrt()
    x, energy, lam = rows / scale, rows.pow(2).sum(1).mean(), 3e-3
    model = QSAE(20, 10, quantize)
    loss = (rows - model(x) * scale).pow(2).sum(1).mean() / energy + lam * model.enc.weight.abs().sum()
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    set_gradients(model, x, rows, scale, energy, lam)
    for got, want in zip((p.grad for p in model.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert any(float(g.abs().max()) > 1e-3 for g in expected)  # a real gradient, not zeros


def test_of_two_duplicated_units_the_qsae_marks_one_prunable_while_energy_scores_them_alike():
    spec = nets.mlp_spec([6, 3], input_shape=(1, 4, 4), stem_width=8)
    net = make_net(spec, seed=3)
    with torch.no_grad():  # unit 5 of layer 3 duplicates unit 4
        net[3].weight[5] = net[3].weight[4]
        net[3].bias[5] = net[3].bias[4]
    x = inputs(spec, 512, seed=3)
    calib = calibration.from_stem_outputs(net, spec, calibration.stem_outputs(net, spec, x))
    energy = importance.score("energy", net, spec, calib).units[3]
    qsae = importance.score("qsae", net, spec, calib, QSAEConfig()).units[3]
    assert energy[4] > 0 and np.isclose(energy[4], energy[5])
    lo, hi = sorted(qsae[[4, 5]])
    assert lo < 0.6 * hi, f"duplicates scored {qsae[[4, 5]]}"
    others = np.delete(qsae, [4, 5])
    assert hi > 0.5 * np.median(others)  # the copy that stays is not itself pruned
