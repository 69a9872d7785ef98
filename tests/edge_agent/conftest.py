"""Shared fixtures: the tiny CNN exported by the real exporter (and a confidently wrong twin), and a live control plane."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qsae_shared.manifest import Manifest
from qsae_shared.signing import SigningKey


@dataclass
class ModelKit:
    key: SigningKey
    good: Manifest
    good_bytes: bytes
    bad: Manifest  # classes rotated by one: agrees with nothing, confidently wrong
    bad_bytes: bytes
    folder: Path  # files of both, by name under <folder>/<version_id>/

    def files_dir(self, manifest: Manifest) -> Path:
        return self.folder / manifest.version_id

    def onnx_path(self, manifest: Manifest) -> Path:
        from qsae_shared.artifact import materialize

        return materialize(manifest, self.files_dir(manifest), self.folder / "runtime")


def _exported(ck, key, version_id, reference=True):
    """The real exporter's artifact and manifest (workers.retrain.export_base), renamed and signed;
    reference=False makes it an ordinary version instead of the base model's reference."""
    from workers.retrain import export_base

    result = export_base(ck)
    (data,) = result.files.values()
    method = {**result.manifest.method, "reference": reference}
    return key.sign_manifest(replace(result.manifest, version_id=version_id, method=method)), data


def _rotated_classes(ck):
    """The same network with its output classes rotated by one: confident, and always wrong."""
    state = dict(ck.state)
    last = max(int(k.split(".")[0]) for k in state)
    perm = [(i + 1) % 10 for i in range(10)]
    state[f"{last}.weight"] = state[f"{last}.weight"][perm].clone()
    state[f"{last}.bias"] = state[f"{last}.bias"][perm].clone()
    return replace(ck, state=state)


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> ModelKit:
    """The tiny CNN of tests/tiny_model.py (the pinned CNN's stem shape, trained in seconds),
    exported by the pruning core's exporter as the dense int8 artifact, and a wrong twin."""
    from tests.tiny_model import tiny_checkpoint

    key = SigningKey.generate()
    ck = tiny_checkpoint()
    good, good_bytes = _exported(ck, key, "v-good")
    bad, bad_bytes = _exported(_rotated_classes(ck), key, "v-bad", reference=False)
    folder = tmp_path_factory.mktemp("models")
    for m, data in ((good, good_bytes), (bad, bad_bytes)):
        (folder / m.version_id).mkdir()
        (folder / m.version_id / m.files[0].name).write_bytes(data)
    return ModelKit(key, good, good_bytes, bad, bad_bytes, folder)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A control plane on 127.0.0.1 shared by a test module."""
    pytest.importorskip("control_plane.main", reason="the control plane is not in this tree yet")
    from tests.edge_agent.live import LiveControlPlane

    server = LiveControlPlane(tmp_path_factory.mktemp("control-plane"))
    server.start()
    yield server
    server.close()
