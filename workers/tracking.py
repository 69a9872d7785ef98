"""MLflow records of every retrain: a run per retrain (the portfolio's candidates as nested runs)
and a registered model version per deployable result, with aliases per device.

Under the embedded SQLite store only one process may write, so only the dispatcher calls this: Ray
tasks return plain results and the dispatcher logs them.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXPERIMENT = "qsae-fleet"


@dataclass
class RunRecord:
    run_name: str
    params: dict[str, Any]  # criterion, lambda, hidden size, KL budget, target, recovery, ...
    metrics: dict[str, float]  # kl, compression_ratio, estimated_accuracy, seconds, ...
    tags: dict[str, str] = field(default_factory=dict)  # device_id, trigger, sketch_window, job_id
    artifacts: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes, under "model/"
    candidates: list[RunRecord] = field(default_factory=list)  # nested runs


def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts (alphanumerics, `_-. :/`)."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def alias_for_device(device_id: str) -> str:
    """A valid MLflow alias naming one device (letters, digits, '_' and '-')."""
    return "device-" + re.sub(r"[^\w-]", "_", device_id)


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: Path | None = None,
                 experiment: str = EXPERIMENT) -> None:
        import mlflow
        from mlflow import MlflowClient

        self._mlflow = mlflow
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is not None:
            self.experiment_id = existing.experiment_id
        else:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def log_run(self, record: RunRecord, parent_run_id: str | None = None) -> str:
        """Log one run (and its candidates nested under it); returns the run id."""
        tags = dict(record.tags)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=record.run_name, tags=tags)
        run_id = run.info.run_id
        try:
            for key, value in record.params.items():
                self.client.log_param(run_id, mlflow_key(key), value)
            for key, value in record.metrics.items():
                self.client.log_metric(run_id, mlflow_key(key), float(value))
            if record.artifacts:
                with tempfile.TemporaryDirectory() as tmp:
                    for name, data in record.artifacts.items():
                        (Path(tmp) / name).write_bytes(data)
                    self.client.log_artifacts(run_id, tmp, artifact_path="model")
            for candidate in record.candidates:
                self.log_run(candidate, parent_run_id=run_id)
            self.client.set_terminated(run_id, "FINISHED")
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        return run_id

    def register_version(self, model_name: str, run_id: str, tags: dict[str, str],
                         aliases: Sequence[str] = ()) -> str:
        """Register the run's `model/` folder as a new version of `model_name`; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model_name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        mv = self.client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)
        for alias in aliases:
            self.client.set_registered_model_alias(model_name, alias, mv.version)
        logger.info("registered %s version %s (run %s, aliases %s)", model_name, mv.version, run_id,
                    list(aliases))
        return str(mv.version)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)

    def version_by_alias(self, model_name: str, alias: str) -> str:
        return str(self.client.get_model_version_by_alias(model_name, alias).version)

    def run_url(self, ui_url: str, run_id: str) -> str:
        return f"{ui_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
