"""A tiny CNN with the pinned network's shape of stem (conv-ReLU-maxpool), trained on a slice in
seconds: what tests use where the pinned CNN would take minutes."""

from __future__ import annotations

import functools

import numpy as np
import torch

from qsae_shared.data import preprocess
from qsae_shared.distributions import DeviceProfile, Phase
from qsae_shared.sketch import SketchBuilder
from workers import nets, profile
from workers.training import Checkpoint, TrainConfig, train

TINY = nets.TINY_CNN


@functools.cache
def tiny_checkpoint() -> Checkpoint:
    return train(TINY, TrainConfig(epochs=1, train_images=6000, validation_images=2000, threads=1))


def device_sketches(ck: Checkpoint, device_id: str, n_uploads: int, classes=(5, 7, 9)) -> list[bytes]:
    """Uploads of a device that sees `classes`, built by the agent's SketchBuilder."""
    weights = tuple(1.0 if c in classes else 0.0 for c in range(10))
    stream = DeviceProfile(device_id, (Phase(10**9, weights),)).stream("train", role="calibration")
    edges = np.asarray(profile.base_profile(ck).hist_edges)
    builder = SketchBuilder(device_id, ck.name, edges, seed=1)
    net = ck.network()
    uploads = []
    for i in range(n_uploads):
        x = torch.from_numpy(preprocess(stream.next_batch(200).images))
        with torch.no_grad():
            stem = net[: ck.spec["stem_end"]](x)
            probs = torch.softmax(net(x), dim=1)
        builder.update(stem.numpy(), probs.numpy(), now=1000.0 + i)
        uploads.append(builder.emit())
    return uploads
