"""Label-free recovery of the kept weights from the calibration set alone.

`lsq`: layer by layer in network order, each pruned layer's kept weights are re-fitted by ridge
least squares so that, on the pruned network's own inputs at that layer, it reproduces the dense
layer's outputs (pre-activation) on the dense inputs (sequential, as in OBC/SparseGPT: later
layers correct what earlier pruning changed). Each output row is solved over its kept columns:
    (X_S^T X_S + l I) w_S = X_S^T y + l w0_S,   l = damp * mean(diag X^T X),
so a row with fewer samples than kept inputs stays close to its pruned weights w0. Each layer is
rounded to int8 before the next one is fitted, so later layers also absorb the rounding.

`distill`: a few Adam steps on the kept weights of every pruned layer, minimizing
KL(softmax(dense logits) || softmax(pruned logits)) on the calibration stem outputs.

Either can be switched off for ablations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers import nets
from workers.calibration import Calibration
from workers.errors import ArchitectureError
from workers.masks import Pruned
from workers.quantization import round_trip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryConfig:
    lsq: bool = True  # layer-wise least-squares re-fit
    distill_steps: int = 0  # Adam steps of output distillation after the re-fit (0 = off)
    damp: float = 0.1  # ridge strength relative to the mean diagonal of X^T X (chosen on validation, method.md §9)
    max_rows: int = 8192  # at most this many input vectors per layer (conv positions are many)
    quantize: bool = True  # round each re-fitted layer to int8 before fitting the next
    distill_lr: float = 5e-4  # Adam learning rate of the distillation
    distill_batch: int = 128  # calibration samples per distillation step
    seed: int = 0  # subsampling seed

    @property
    def name(self) -> str:
        parts = (["lsq"] if self.lsq else []) + (["distill"] if self.distill_steps else [])
        return "+".join(parts) or "none"


def _design(layer: nn.Module, x: torch.Tensor, rows: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input vectors of a layer: (M, D) and, for conv, the (N, L) positions picked (for targets)."""
    if isinstance(layer, nn.Conv2d):  # stride 1: the rows F.unfold would give, only those picked
        n, c, h, w = x.shape
        if isinstance(layer.padding, str):
            raise ArchitectureError(f"padding {layer.padding!r}: the re-fit needs numeric padding")
        (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
        oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        ell = oh * ow
        pick = torch.randperm(n * ell, generator=gen)[:rows] if n * ell > rows else torch.arange(n * ell)
        img, pos = pick // ell, pick % ell
        hp, wp = h + 2 * ph, w + 2 * pw
        corner = img * (hp * wp) + (pos // ow) * wp + pos % ow  # top-left pixel of each patch
        offsets = (torch.arange(kh)[:, None] * wp + torch.arange(kw)[None, :]).reshape(-1)  # (kh*kw,)
        pixels = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).reshape(-1, c)  # (N*hp*wp, C)
        patches = pixels.index_select(0, (corner[:, None] + offsets[None, :]).reshape(-1))
        patches = patches.reshape(len(pick), kh * kw, c).transpose(1, 2)  # (M, C, kh*kw)
        return patches.reshape(len(pick), -1), pick  # (M, C*kh*kw), unfold's column order
    return x.reshape(x.shape[0], -1), None


def _targets(out: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
    """Dense layer outputs (N, C, H, W) or (N, C) -> (M, C) aligned with `_design`."""
    if out.dim() == 4:
        flat = out.reshape(out.shape[0], out.shape[1], -1)  # (N, C, L)
        if pick is None:
            return flat.permute(0, 2, 1).reshape(-1, out.shape[1])
        return flat[pick // flat.shape[2], :, pick % flat.shape[2]]  # (M, C)
    return out


class LayerSystem:
    """One layer's least-squares system on one set of inputs: the design rows with a bias column,
    the dense targets of every output unit, the ridge strength, and the products the solves need
    (each computed on first use, then kept: the first layer after the stem sees the same inputs for
    every candidate of a search, so its system is built once per calibration set).

    Everything is float32. The ridge keeps a row's condition number near 1 + |S| / damp (about
    2e4 at most here), so a float32 solve is off by about 1e-3 of a weight at worst, below the int8
    step the weight is then rounded to. Against float64 solves, the search chose the same amounts
    on eight devices, with KL within 0.0003 nats (docs/method.md, section 7)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, damp: float) -> None:
        self.a = torch.cat([x.float(), torch.ones(len(x), 1)], 1)  # (M, D+1)
        self.y = y.float()  # (M, dense outputs)
        flat = x.float().reshape(-1)
        self.lam = damp * max(float(flat @ flat) / max(x.shape[1], 1), 1e-12)  # damp * mean diag(X^T X)
        self._products: dict[str, torch.Tensor] = {}

    def product(self, name: str) -> torch.Tensor:
        p = self._products
        if name not in p:
            if name in ("gram", "rhs"):  # the primal
                p["gram"] = self.a.T @ self.a  # (D+1, D+1)
                p["rhs"] = self.a.T @ self.y  # (D+1, dense outputs)
            elif name == "at":  # one input column per row, so that a row's kept columns are one
                # contiguous index_select (a column gather of `a` cost several times the solve)
                p["at"] = self.a.T.contiguous()  # (D+1, M)
            elif name == "k":  # only where rows keep most of their inputs (K_S = K - A_dropped A_dropped^T)
                p["k"] = self.a @ self.a.T  # (M, M)
            else:
                raise KeyError(name)
        return p[name]

    def primal(self, s: torch.Tensor, targets: torch.Tensor, whole: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_S^T A_S, A_S^T y) over the kept columns `s`, for the dense outputs `targets`: sliced
        from the layer's whole Gram when `whole`, else from those columns alone."""
        if whole:
            return (self.product("gram").index_select(0, s).index_select(1, s),
                    self.product("rhs").index_select(0, s)[:, targets])
        a_s = self.product("at").index_select(0, s)  # (|S|, M)
        return a_s @ a_s.T, a_s @ self.y[:, targets]


@torch.no_grad()
def refit_layer(layer: nn.Conv2d | nn.Linear, mask: torch.Tensor | None, system: LayerSystem,
                units: np.ndarray | None = None) -> None:
    """Ridge re-fit of `layer` (weights + bias) so that it reproduces the system's targets on the
    system's inputs, kept weights only. units: the dense output units `layer` kept (None: all)."""
    w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()  # (out, D)
    out, d = w0.shape
    a, lam = system.a, system.lam
    cols = torch.arange(out) if units is None else torch.from_numpy(units)  # target columns of the rows
    w0b = torch.cat([w0, nets.bias(layer).detach().float()[:, None]], 1)  # (out, D+1)
    m = (mask.reshape(out, -1) if mask is not None else torch.ones(out, d, dtype=torch.bool))
    m = torch.cat([m, torch.ones(out, 1, dtype=torch.bool)], 1)  # bias always kept
    new = torch.zeros_like(w0b)
    # Rows sharing a mask share one factorization.
    keys: dict[bytes, list[int]] = {}
    for i in range(out):
        keys.setdefault(np.packbits(m[i].numpy()).tobytes(), []).append(i)
    groups = [(idx, m[idx[0]].nonzero().squeeze(1)) for idx in keys.values()]  # rows, their kept columns
    # A row with more kept inputs than samples is solved in the M x M dual; the others in the
    # primal, from the layer's whole Gram only where that costs no more than their own columns'
    # (fc1 has 2,157 inputs and a few primal rows of at most M = 256 kept ones). The choice
    # depends on the masks alone, so a reused system gives the same numbers as a fresh one.
    primal_sizes = [len(s) for _, s in groups if len(s) <= len(a)]
    whole = (d + 1) ** 2 <= sum(n * n for n in primal_sizes)
    for idx, s in groups:
        if len(s) > len(a):
            sol = _dual_rows(system, cols[idx], w0b, idx, s, m[idx[0]])
        else:
            lhs, rhs = system.primal(s, cols[idx], whole)  # (|S|, |S|), (|S|, r)
            lhs.diagonal().add_(lam)
            sol = _spd_solve(lhs, rhs + lam * w0b[idx][:, s].T)
        new[np.ix_(np.asarray(idx), s.numpy())] = sol.T
    layer.weight.copy_(new[:, :d].reshape(layer.weight.shape).to(layer.weight.dtype))
    bias = nets.bias(layer)
    bias.copy_(new[:, d].to(bias.dtype))


def _spd_solve(lhs: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(lhs)
    return torch.cholesky_solve(b, chol) if int(info) == 0 else torch.linalg.lstsq(lhs, b).solution


def _dual_rows(system: LayerSystem, targets: torch.Tensor, w0b: torch.Tensor, idx: list[int],
               s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The same ridge solution through the push-through identity:
    w_S = w0_S + A_S^T (A_S A_S^T + l I)^-1 (y - A_S w0_S). Returns (|S|, r)."""
    at = system.product("at")  # (D+1, M)
    at_s = at.index_select(0, s)  # (|S|, M) = A_S^T
    dropped = (~keep).nonzero().squeeze(1)
    if len(dropped) < len(s):  # K_S = K - A_dropped A_dropped^T
        at_c = at.index_select(0, dropped)
        k = system.product("k") - at_c.T @ at_c
    else:
        k = at_s.T @ at_s
    k.diagonal().add_(system.lam)
    w0_s = w0b[idx][:, s]  # (r, |S|)
    resid = system.y[:, targets] - at_s.T @ w0_s.T  # (M, r)
    return w0_s.T + at_s @ _spd_solve(k, resid)


@torch.no_grad()
def least_squares(pruned: Pruned, dense: nn.Sequential, dense_spec: nets.Spec, calib: Calibration,
                  cfg: RecoveryConfig) -> None:
    gen = torch.Generator().manual_seed(cfg.seed)
    h_p = calib.stem_out  # pruned path; the dense path's activations are the calibration's own
    for i in range(dense_spec["stem_end"], len(dense_spec["layers"])):
        layer_p = pruned.net[i]
        if isinstance(layer_p, (nn.Conv2d, nn.Linear)):
            fixed = h_p is calib.stem_out  # the first layer after the stem: the same inputs every time
            key = (i, cfg.max_rows, cfg.damp, cfg.seed)
            if fixed and key in calib.systems:
                system, state = calib.systems[key]
                gen.set_state(state)  # as if its rows had just been drawn
            else:
                y_full = calib.outputs[i] if i in calib.outputs else dense[i](calib.inputs[i])  # (N, C_dense, ...)
                x, pick = _design(layer_p, h_p, cfg.max_rows, gen)
                system = LayerSystem(x, _targets(y_full, pick), cfg.damp)
                if fixed:
                    calib.systems[key] = (system, gen.get_state())
            refit_layer(layer_p, pruned.masks.get(i), system, pruned.keep.get(i))
            if cfg.quantize:
                layer_p.weight.copy_(round_trip(layer_p.weight))
        h_p = layer_p(h_p)


def distill(pruned: Pruned, calib: Calibration, cfg: RecoveryConfig, stem_end: int) -> None:
    gen = torch.Generator().manual_seed(cfg.seed)
    head = nn.Sequential(*list(pruned.net)[stem_end:])  # the same modules
    params = [p for m in head if isinstance(m, (nn.Conv2d, nn.Linear)) for p in (m.weight, nets.bias(m))]
    opt = torch.optim.Adam(params, lr=cfg.distill_lr)
    target = F.log_softmax(calib.logits, dim=1)  # (N, K)
    head.train()
    for _ in range(cfg.distill_steps):
        idx = torch.randint(calib.size, (min(cfg.distill_batch, calib.size),), generator=gen)
        logp = F.log_softmax(head(calib.stem_out[idx]), dim=1)
        loss = F.kl_div(logp, target[idx], log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        pruned.enforce()
    head.eval()
    if cfg.quantize:
        with torch.no_grad():
            for m in head:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(round_trip(m.weight))


def recover(pruned: Pruned, dense: nn.Sequential, dense_spec: nets.Spec, calib: Calibration,
            cfg: RecoveryConfig) -> None:
    """Re-fit the kept weights of `pruned` in place (masked weights stay zero)."""
    if cfg.lsq:
        least_squares(pruned, dense, dense_spec, calib, cfg)
    if cfg.distill_steps:
        distill(pruned, calib, cfg, dense_spec["stem_end"])
    if not cfg.lsq and not cfg.distill_steps and cfg.quantize:
        quantize_weights(pruned, dense_spec["stem_end"])
    pruned.enforce()


@torch.no_grad()
def quantize_weights(pruned: Pruned, stem_end: int) -> None:
    """Round every weight after the stem to int8 (what the artifact will store)."""
    for m in list(pruned.net)[stem_end:]:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(round_trip(m.weight))
