"""Training-time augmentation with the device-distribution generator's corruption family.

The dense target network must stay useful on every scenario a device may see, so it trains on
images passed through the same `qsae_shared.distributions.Corruption` code the devices' streams
use: a quarter clean, the rest one or two random corruptions of random severity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsae_shared.distributions import Corruption


@dataclass(frozen=True)
class AugmentConfig:
    clean_share: float = 0.25  # share of images left clean
    pair_share: float = 0.35  # share of images with two corruptions (the rest get one)
    chunk: int = 16  # images that share one corruption draw (keeps numpy calls few)
    noise: tuple[float, float] = (0.05, 0.3)  # Gaussian noise std range
    contrast: tuple[float, float] = (0.3, 0.9)  # contrast factor range (<1 flattens)
    brightness: tuple[float, float] = (-0.25, 0.3)  # brightness offset range
    blur: tuple[float, float] = (0.5, 1.5)  # Gaussian blur sigma range, pixels
    rotation: tuple[float, float] = (5.0, 25.0)  # max rotation range, degrees


def _draw(cfg: AugmentConfig, kind: str, rng: np.random.Generator) -> Corruption:
    lo, hi = getattr(cfg, kind)
    return Corruption(kind, float(rng.uniform(lo, hi)))


def augment(images01: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) float32 in [0, 1] -> an augmented copy, same shape."""
    out = images01.copy()
    kinds = ("noise", "contrast", "brightness", "blur", "rotation")
    order = rng.permutation(len(out))
    for start in range(0, len(out), cfg.chunk):
        idx = order[start:start + cfg.chunk]
        u = rng.random()
        if u < cfg.clean_share:
            continue
        count = 2 if u > 1 - cfg.pair_share else 1
        chosen = rng.choice(len(kinds), size=count, replace=False)
        x = out[idx]
        for k in chosen:
            x = _draw(cfg, kinds[k], rng).apply(x, rng)
        out[idx] = x
    return out
