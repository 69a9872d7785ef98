"""One installed model version: its manifest and an ONNX Runtime session returning logits and the
stem's output."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.errors import InstallError
from edge_agent.estimator import ConfidenceEstimator
from qsae_shared.manifest import Manifest

logger = logging.getLogger(__name__)


@dataclass
class ModelOutputs:
    logits: np.ndarray  # (N, K) float32
    stem: np.ndarray  # (N, C, H, W) float32


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) -> (N, K) probabilities."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LoadedModel:
    def __init__(self, manifest: Manifest, onnx_path: Path, intra_op_threads: int = 1) -> None:
        self.manifest = manifest
        self.version = manifest.version_id
        self.estimator = ConfidenceEstimator(manifest.confidence_profile)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            raise InstallError(f"version {self.version}: ONNX Runtime cannot load the model: {exc}") from exc
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if manifest.input_name not in inputs:
            raise InstallError(f"version {self.version}: model has no input {manifest.input_name!r} "
                               f"(has {sorted(inputs)})")
        missing = {manifest.output_name, manifest.stem_output_name} - outputs
        if missing:
            raise InstallError(f"version {self.version}: model lacks outputs {sorted(missing)}")
        self._outputs = [manifest.output_name, manifest.stem_output_name]

    def run(self, x: np.ndarray) -> ModelOutputs:
        """x: (N, 1, 28, 28) float32 network input."""
        logits, stem = self.session.run(self._outputs, {self.manifest.input_name: x})
        return ModelOutputs(logits=np.asarray(logits), stem=np.asarray(stem))

    def check_shapes(self, x: np.ndarray) -> None:
        """Run a sample through the model and refuse it if the outputs disagree with the manifest."""
        try:
            out = self.run(x)
        except Exception as exc:
            raise InstallError(f"version {self.version}: the model fails on a sample input: {exc}") from exc
        if out.logits.ndim != 2 or out.logits.shape[0] != len(x):
            raise InstallError(f"version {self.version}: logits have shape {out.logits.shape}")
        if list(out.stem.shape[1:]) != list(self.manifest.stem_shape):
            raise InstallError(f"version {self.version}: stem output {list(out.stem.shape[1:])} differs from "
                               f"the manifest's {self.manifest.stem_shape}")
        if not np.all(np.isfinite(out.logits)):
            raise InstallError(f"version {self.version}: the model produces NaN or Inf")
