"""Train the dense target network once, with corruption augmentation, and cache it.

A checkpoint describes itself: the network spec, the training config, the measured test
accuracy (clean and per corruption), and the base version (a hash of spec and config), so
benchmarks, the demo and the workers load it instead of retraining.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qsae_shared.data import load_split, preprocess
from workers import nets
from workers.augment import AugmentConfig, augment
from workers.errors import CheckpointError
from workers.quantization import round_trip
from workers.scenarios import ROBUSTNESS_CHECKS

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(".fleet/models")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training images
    batch_size: int = 128  # images per step
    max_lr: float = 3e-3  # one-cycle peak learning rate (AdamW)
    weight_decay: float = 5e-4  # AdamW weight decay
    train_images: int = 60_000  # first N training images (smaller for tests)
    validation_images: int = 5_000  # last N training images held out (never trained on)
    seed: int = 0  # torch and augmentation seed
    threads: int = 2  # torch intra-op threads
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # corruption augmentation


@dataclass
class Checkpoint:
    spec: nets.Spec  # the network
    state: dict[str, torch.Tensor]  # its weights
    config: dict[str, Any]  # the TrainConfig it was trained with
    metrics: dict[str, float]  # test accuracy: "clean" and one key per robustness check
    base_version: str  # hash of spec and config
    seconds: float  # training wall time

    def network(self) -> nn.Sequential:
        net = nets.build(self.spec)
        net.load_state_dict(self.state)
        return net.eval()

    @property
    def name(self) -> str:
        return str(self.spec.get("name", "model"))

    def _doc(self) -> dict[str, Any]:
        return {"spec": self.spec, "state": self.state, "config": self.config, "metrics": self.metrics,
                "base_version": self.base_version, "seconds": self.seconds}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(
            {k: v for k, v in self._doc().items() if k != "state"}, indent=2))

    def to_bytes(self) -> bytes:
        """The checkpoint file's bytes (`save` writes them; the fleet keeps them in its artifact store)."""
        buf = io.BytesIO()
        torch.save(self._doc(), buf)
        return buf.getvalue()

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        return cls._read(path, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "bytes") -> Checkpoint:
        return cls._read(io.BytesIO(data), source)

    @classmethod
    def _read(cls, f: Any, source: str) -> Checkpoint:
        try:
            d = torch.load(f, map_location="cpu", weights_only=True)
            ck = cls(**d)
            ck.network()
        except (OSError, RuntimeError, TypeError, KeyError, pickle.UnpicklingError) as exc:
            raise CheckpointError(f"cannot load checkpoint {source}: {exc}") from exc
        return ck


def base_version(spec: nets.Spec, cfg: TrainConfig) -> str:
    doc = json.dumps({"spec": spec, "config": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


@torch.no_grad()
def accuracy(net: nn.Sequential, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """x: (N, C, H, W) network input; y: (N,) labels -> accuracy in [0, 1]."""
    net.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = net(torch.from_numpy(x[i:i + batch]))  # (B, K)
        correct += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(len(x), 1)


def robustness_report(net: nn.Sequential, seed: int = 1234) -> dict[str, float]:
    """Test accuracy on the clean test split and under every robustness check."""
    test = load_split("test")
    x01 = test.images.astype(np.float32) / 255.0
    report = {"clean": accuracy(net, preprocess(x01), test.labels)}
    for name, chain in ROBUSTNESS_CHECKS.items():
        rng = np.random.default_rng(seed)
        x = x01
        for c in chain:
            x = c.apply(x, rng)
        report[name] = accuracy(net, preprocess(x), test.labels)
    return report


def quantize_stem(net: nn.Sequential, spec: nets.Spec) -> None:
    """Round the stem's weights to int8 in place, so the dense base and every pruned artifact
    share a bit-identical stem (its output is what the sketches carry)."""
    with torch.no_grad():
        for module in nets.stem(net, spec):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(round_trip(module.weight))


def train(spec: nets.Spec, cfg: TrainConfig, progress: bool = False) -> Checkpoint:
    """Train a network for `spec` on Fashion-MNIST with corruption augmentation."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    split = load_split("train")
    n_train = min(cfg.train_images, len(split) - cfg.validation_images)
    images = split.images[:n_train].astype(np.float32) / 255.0  # (N, 28, 28)
    labels = split.labels[:n_train]
    net = nets.build(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.max_lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (n_train + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        order = rng.permutation(n_train)
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = torch.from_numpy(preprocess(augment(images[idx], cfg.augment, rng)))  # (B, 1, 28, 28)
            y = torch.from_numpy(labels[idx])
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        msg = f"epoch {epoch + 1}/{cfg.epochs}: loss {total / seen:.4f} ({time.perf_counter() - t0:.0f} s)"
        log.info(msg)
        if progress:
            print(msg, flush=True)
    net.eval()
    quantize_stem(net, spec)
    seconds = time.perf_counter() - t0
    metrics = robustness_report(net)
    log.info("trained %s in %.0f s: %s", spec.get("name"), seconds,
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return Checkpoint(spec=spec, state={k: v.clone() for k, v in net.state_dict().items()},
                      config=asdict(cfg), metrics=metrics, base_version=base_version(spec, cfg),
                      seconds=seconds)


def load_or_train(spec: nets.Spec | None = None, cfg: TrainConfig | None = None,
                  cache_dir: Path | str = DEFAULT_CACHE, progress: bool = False) -> Checkpoint:
    """The cached checkpoint for (spec, config) under `cache_dir`, trained on first use."""
    spec = spec or nets.pinned_spec()
    cfg = cfg or TrainConfig()
    path = Path(cache_dir) / f"{spec.get('name', 'model')}-{base_version(spec, cfg)}.pt"
    if path.is_file():
        log.info("loading cached base model %s", path)
        return Checkpoint.load(path)
    log.info("no cached base model at %s: training (about 6 minutes for the pinned CNN)", path)
    ck = train(spec, cfg, progress=progress)
    ck.save(path)
    return ck


def load_base(cache_dir: Path | str = DEFAULT_CACHE, progress: bool = False) -> Checkpoint:
    """The pinned benchmark CNN, trained with the default config (cached)."""
    return load_or_train(nets.pinned_spec(), TrainConfig(), cache_dir, progress=progress)
