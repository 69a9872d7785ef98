"""Shared fixtures: a tiny trained ONNX model (and a confidently wrong twin) with signed manifests."""

from __future__ import annotations

from dataclasses import dataclass
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


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> ModelKit:
    from tests.edge_agent import models

    key = SigningKey.generate()
    net = models.train_tiny()
    good_bytes = models.artifact_bytes(net)
    good = models.build_manifest("v-good", good_bytes, net, key)
    bad_net = models.permuted(net)
    bad_bytes = models.artifact_bytes(bad_net)
    bad = models.build_manifest("v-bad", bad_bytes, bad_net, key)
    folder = tmp_path_factory.mktemp("models")
    models.write_files(good, good_bytes, folder / good.version_id)
    models.write_files(bad, bad_bytes, folder / bad.version_id)
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
