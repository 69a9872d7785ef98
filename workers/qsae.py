"""The quantized sparse autoencoder (QSAE) that scores a layer's input units.

For a layer whose input has d units (channels or features) the QSAE is d -> k -> d:
    z = relu(fake_quant(W_enc) x~ + b),  x^ = (W_dec z + c) * rms
trained on the dense activations with loss
    ||x - x^||^2 / E||x||^2 + lambda * ||W_enc||_1
where x~ = x / rms (per-unit RMS, so column norms compare across units), and the encoder weights
are fake-quantized to int8 per hidden unit with a straight-through estimator. Unit j's importance
is the L2 norm of encoder column j.

The L1 term alone cannot choose between two identical input units (|a| + |b| = |a + b|: any
split of the weight between them costs the same), so training continues with column
elimination: every round the weakest quarter of the remaining columns is zeroed for good and
the QSAE trains on, so the information of an eliminated unit moves to the units that carry the
same signal, which then become *more* important. A unit's importance is its column norm when it
was eliminated (survivors: at the end), made monotone in the elimination order: of two
duplicates one is eliminated early and the other survives.

Convolutional activations (N, C, H, W) are treated as N*H*W samples of a C-vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers.quantization import fake_quant


@dataclass(frozen=True)
class QSAEConfig:
    hidden_ratio: float = 0.5  # k = max(2, round(hidden_ratio * d))
    lam: float = 3e-3  # lambda, weight of the L1 term
    steps: int = 150  # optimizer steps before the elimination rounds
    eliminate: float = 0.25  # share of the remaining columns zeroed per elimination round (0 = none)
    round_steps: int = 25  # optimizer steps after each elimination round
    batch: int = 256  # samples per step
    lr: float = 1e-2  # Adam learning rate
    max_rows: int = 8192  # at most this many activation vectors are used
    quantize: bool = True  # fake-quantize the encoder to int8 (False: the qsae-noquant ablation)
    seed: int = 0  # torch seed for init and batches


class QSAE(nn.Module):
    def __init__(self, d: int, k: int, quantize: bool = True) -> None:
        super().__init__()
        self.enc = nn.Linear(d, k)
        self.dec = nn.Linear(k, d)
        self.quantize = quantize

    def encoder_weight(self) -> torch.Tensor:
        """(k, d) encoder weights as the forward pass uses them."""
        return fake_quant(self.enc.weight) if self.quantize else self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, d)
        z = torch.relu(nn.functional.linear(x, self.encoder_weight(), self.enc.bias))  # (B, k)
        return self.dec(z)


def unit_rows(act: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) or (N, C) activations -> (rows, C) unit vectors."""
    if act.dim() == 4:
        return act.permute(0, 2, 3, 1).reshape(-1, act.shape[1])
    return act.reshape(act.shape[0], -1)


@torch.no_grad()
def set_gradients(model: QSAE, x: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                  energy: torch.Tensor, lam: float) -> None:
    """The gradients of  ||target - model(x) * scale||^2 / (B * energy) + lam * ||W_enc||_1  into
    each parameter's .grad, written out by hand: the same as autograd's to float rounding
    (tests/workers/test_qsae.py), at half the time, since a step is a few small matrix products
    and autograd's bookkeeping cost more than they do. x, target: (B, d); scale: (d,)."""
    enc_w, enc_b, dec_w, dec_b = model.enc.weight, model.enc.bias, model.dec.weight, model.dec.bias
    pre = torch.addmm(enc_b, x, model.encoder_weight().T)  # (B, k)
    z = pre.clamp_min(0)
    g = (torch.addmm(dec_b, z, dec_w.T) * scale - target).mul_(scale * (2.0 / (len(x) * float(energy))))  # (B, d)
    dec_w.grad, dec_b.grad = g.T @ z, g.sum(0)
    dz = (g @ dec_w).mul_(pre > 0)  # (B, k); through the fake quantization unchanged (straight-through)
    enc_w.grad = (dz.T @ x).add_(torch.sign(enc_w), alpha=lam)
    enc_b.grad = dz.sum(0)


def train_qsae(rows: torch.Tensor, cfg: QSAEConfig) -> tuple[QSAE, np.ndarray]:
    """rows: (M, d) dense activations -> (trained QSAE, (d,) unit importance)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    if len(rows) > cfg.max_rows:
        rows = rows[torch.randperm(len(rows), generator=gen)[: cfg.max_rows]]
    rows = rows.float()
    d = rows.shape[1]
    k = max(2, round(cfg.hidden_ratio * d))
    rms = rows.pow(2).mean(0).sqrt()  # (d,)
    alive = rms > 1e-8 * max(float(rms.max()), 1e-30)
    scale = torch.where(alive, rms, torch.ones_like(rms))
    x_in = torch.where(alive, rows / scale, torch.zeros_like(rows))  # (M, d), dead units -> 0
    energy = rows.pow(2).sum(1).mean().clamp_min(1e-12)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = QSAE(d, k, cfg.quantize)
    # fused: one kernel for the whole update instead of a dozen small ops per parameter
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    keep = alive.clone()  # columns still in play

    def train(steps: int) -> None:
        keep_f = keep.float()
        for _ in range(steps):
            idx = torch.randint(len(x_in), (min(cfg.batch, len(x_in)),), generator=gen)
            set_gradients(model, x_in[idx], rows[idx], scale, energy, cfg.lam)
            opt.step()
            with torch.no_grad():
                model.enc.weight.mul_(keep_f)  # eliminated columns stay zero

    train(cfg.steps)
    importance = torch.zeros(d)
    floor = 0.0
    while cfg.eliminate > 0 and int(keep.sum()) > 1:
        with torch.no_grad():
            norms = model.encoder_weight().norm(dim=0)  # (d,)
        live = keep.nonzero().squeeze(1)
        n_out = min(max(1, round(cfg.eliminate * len(live))), len(live) - 1)
        out = live[torch.argsort(norms[live])[:n_out]]
        for j in out.tolist():
            floor = max(floor, float(norms[j]))  # monotone in the elimination order
            importance[j] = floor
        keep[out] = False
        train(cfg.round_steps)
    with torch.no_grad():
        norms = model.encoder_weight().norm(dim=0)
        importance = torch.where(keep, torch.maximum(norms, torch.tensor(floor)), importance)
        importance = torch.where(alive, importance, torch.zeros_like(importance))
    return model, importance.numpy().astype(np.float64)
