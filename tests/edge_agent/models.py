"""Small ONNX models and signed manifests for the agent's tests (torch is fine here, never in the
agent itself). The stem matches the pinned CNN's: conv3x3(1->32, pad 1)-ReLU-maxpool2."""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qsae_shared.artifact import pack
from qsae_shared.data import load_split, preprocess, preprocessing_spec
from qsae_shared.manifest import ConfidenceProfile, FileEntry, Manifest, PolicyFloors
from qsae_shared.signing import SigningKey

HIST_BINS = 16
CONF_EDGES = [i / 10 for i in range(11)]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
        self.permute = None  # a LongTensor of class ids: a confidently wrong model for rollback tests

    def forward(self, x):
        s = self.stem(x)  # (N, 32, 14, 14)
        logits = self.head(s)  # (N, 10)
        if self.permute is not None:
            logits = logits[:, self.permute]
        return logits, s


@torch.no_grad()
def train_tiny(seed: int = 0, n: int = 4000, temperature: float = 6.0) -> TinyNet:
    """A random stem and a ridge-regression head fitted in closed form (about 75 % on the test
    split, in a second or two: no gradient training)."""
    torch.manual_seed(seed)
    split = load_split("train")
    net = TinyNet()
    x = torch.from_numpy(preprocess(split.images[:n] / 255.0))
    feats = net.head[1](net.head[0](net.stem(x))).double()  # (n, 1568)
    feats = torch.cat([feats, torch.ones(n, 1, dtype=torch.float64)], 1)
    y = torch.nn.functional.one_hot(torch.from_numpy(split.labels[:n].copy()), 10).double()
    gram = feats.T @ feats + 1.0 * torch.eye(feats.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, feats.T @ y) * temperature  # (1569, 10)
    net.head[2].weight.copy_(w[:-1].T.float())
    net.head[2].bias.copy_(w[-1].float())
    return net.eval()


def onnx_bytes(net: TinyNet) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), buf, input_names=["input"],
                          output_names=["logits", "stem"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}, "stem": {0: "n"}}, dynamo=False)
    return buf.getvalue()


def artifact_bytes(net: TinyNet) -> bytes:
    """The model as the one-file artifact a device downloads (graph with its weights inside)."""
    return pack(onnx_bytes(net), [])


@torch.no_grad()
def profile(net: TinyNet, n: int = 2000) -> tuple[ConfidenceProfile, list[list[float]]]:
    """Confidence profile and stem histogram edges on held-out training images."""
    split = load_split("train")
    x = torch.from_numpy(preprocess(split.images[-n:] / 255.0))
    logits, stem = net(x)
    probs = torch.softmax(logits, 1)
    conf, pred = probs.max(1)
    hit = (pred.numpy() == split.labels[-n:])
    idx = np.clip(np.searchsorted(CONF_EDGES, conf.numpy(), side="right") - 1, 0, 9)
    acc = [float(hit[idx == b].mean()) if (idx == b).any() else (b + 0.5) / 10 for b in range(10)]
    share = [float((idx == b).mean()) for b in range(10)]
    top = stem.amax(dim=(0, 2, 3)).clamp(min=1e-3).numpy()
    edges = [np.linspace(0.0, float(t), HIST_BINS + 1).tolist() for t in top]
    return ConfidenceProfile(CONF_EDGES, acc, share), edges


def build_manifest(version_id: str, model: bytes, net: TinyNet, key: SigningKey,
                   floors: PolicyFloors | None = None, base_model: str = "fmnist-cnn") -> Manifest:
    cp, edges = profile(net)
    m = Manifest(
        version_id=version_id, base_model=base_model, base_version="1", device_id=None,
        created_at=time.time(), preprocessing=preprocessing_spec(), input_name="input",
        output_name="logits", stem_output_name="stem", stem_shape=[32, 14, 14], hist_edges=edges,
        confidence_profile=cp, floors=floors or PolicyFloors(), method={"criterion": "test"},
        metrics={"kl": 0.0},
        files=[FileEntry("model.qart", "model", len(model), hashlib.sha256(model).hexdigest())])
    return key.sign_manifest(m)


def write_files(manifest: Manifest, model: bytes, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / manifest.files[0].name).write_bytes(model)
    return folder


def permuted(net: TinyNet) -> TinyNet:
    """The same network with its classes rotated by one: confident, and always wrong."""
    bad = TinyNet()
    bad.load_state_dict(net.state_dict())
    bad.permute = torch.tensor([(i + 1) % 10 for i in range(10)])
    return bad.eval()


__all__ = ["TinyNet", "artifact_bytes", "build_manifest", "onnx_bytes", "permuted", "profile", "replace",
           "train_tiny",
           "write_files"]
