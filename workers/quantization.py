"""Symmetric int8 quantization, per output channel, and its straight-through fake-quant.

Every stored weight in QSAE Fleet is int8 with one fp32 scale per output channel (row of a
Linear, filter of a Conv2d): w ~= q * scale, q in [-127, 127]. The QSAE trains its encoder
through `fake_quant` so it learns weights that survive this rounding.
"""

from __future__ import annotations

import numpy as np
import torch

QMAX = 127


def channel_scales(w: torch.Tensor) -> torch.Tensor:
    """(out, ...) weights -> (out,) scales with max |w| per channel mapped to 127."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)  # (out,)
    return torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, ...) float -> ((out, ...) int8, (out,) float32 scales)."""
    scales = channel_scales(w)
    view = (-1,) + (1,) * (w.dim() - 1)
    q = torch.clamp(torch.round(w / scales.view(view)), -QMAX, QMAX).to(torch.int8)
    return q, scales.float()


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    view = (-1,) + (1,) * (q.dim() - 1)
    return q.float() * scales.view(view)


def fake_quant(w: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize in the forward pass, identity gradient in the backward pass (STE)."""
    scales = channel_scales(w)
    view = (-1,) + (1,) * (w.dim() - 1)
    wq = torch.clamp(torch.round(w / scales.view(view)), -QMAX, QMAX) * scales.view(view)
    return w + (wq - w).detach()


def round_trip(w: torch.Tensor) -> torch.Tensor:
    """The float weights a device computes with after int8 storage."""
    q, s = quantize(w)
    return dequantize(q, s).to(w.dtype)


def quantize_np(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, s = quantize(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
    return q.numpy(), s.numpy()
