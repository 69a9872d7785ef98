"""The quantized sparse autoencoder (QSAE) that scores a layer's input units.

For a layer whose input has d units (channels or features) the QSAE is d -> k -> d:
    z = relu(fake_quant(W_enc) x~ + b),  x^ = (W_dec z + c) * rms
trained on the dense activations with loss
    ||x - x^||^2 / E||x||^2 + lambda * sum_j r_j * ||W_enc[:, j]||_1
where x~ = x / rms (per-unit RMS, so column norms compare across units), and the encoder
weights are fake-quantized to int8 per hidden unit with a straight-through estimator. With all
r_j = 1 this is the plain L1 loss. Plain L1 cannot choose between two identical input units
(|a| + |b| = |a + b|), so after the first phase the penalty is reweighted (r_j = 1 / (column
mean + eps), normalized to mean 1; Candes, Wakin and Boyd 2008): columns that carry information
get cheaper, redundant ones are driven to zero. `reweight_rounds = 0` gives the plain L1 loss.
Unit j's importance is the L2 norm of encoder column j (after quantization).

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
    steps: int = 120  # optimizer steps per phase
    reweight_rounds: int = 2  # reweighted-L1 phases after the plain-L1 phase (0 = plain L1)
    batch: int = 256  # samples per step
    lr: float = 1e-2  # Adam learning rate
    max_rows: int = 8192  # at most this many activation vectors are used
    quantize: bool = True  # fake-quantize the encoder to int8 (False: the qsae-noquant ablation)
    eps: float = 1e-3  # reweighting floor, relative to the mean column norm
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
    reweight = torch.ones(d)
    for phase in range(1 + cfg.reweight_rounds):
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        for _ in range(cfg.steps):
            idx = torch.randint(len(x_in), (min(cfg.batch, len(x_in)),), generator=gen)
            x = x_in[idx]  # (B, d)
            recon = model(x) * scale  # (B, d), raw scale
            loss = (rows[idx] - recon).pow(2).sum(1).mean() / energy
            loss = loss + cfg.lam * (model.enc.weight.abs() * reweight).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            col = model.encoder_weight().abs().mean(0)  # (d,)
            r = 1.0 / (col + cfg.eps * col.mean().clamp_min(1e-12))
            reweight = r / r.mean()
        if phase == cfg.reweight_rounds:
            break
    with torch.no_grad():
        importance = model.encoder_weight().norm(dim=0)  # (d,)
        importance = torch.where(alive, importance, torch.zeros_like(importance))
    return model, importance.numpy().astype(np.float64)
