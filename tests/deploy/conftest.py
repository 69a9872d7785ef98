"""Fixtures for the deployment checks: the tools (installed once per session by
scripts/ensure-deploy-tools.sh, a failure with its reason when one cannot be had) and the chart
rendered with each ci/*-values.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "qsae-fleet"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


@dataclass(frozen=True)
class DeployTools:
    helm: Path  # helm 4 binary in .tools/bin
    kubernetes_validate: Path  # console script beside the venv's python
    docker_compose: Path  # Debian's docker-compose v1
    helm_env: dict[str, str]  # the environment helm runs with (its cache/config/data in a temp dir)

    def run(self, args: list[str], *, input: str | None = None, env: dict[str, str] | None = None,
            cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, input=input, env=env or self.helm_env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    def helm_cmd(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.helm), *args], input=input)


@pytest.fixture(scope="session")
def deploy_tools(tmp_path_factory: pytest.TempPathFactory) -> DeployTools:
    script = ROOT / "scripts" / "ensure-deploy-tools.sh"
    env = dict(os.environ, DEPLOY_TOOLS_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{script.relative_to(ROOT)} could not provide the deployment tools "
                    f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    helm_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    tools = DeployTools(
        helm=ROOT / ".tools" / "bin" / "helm",
        kubernetes_validate=Path(sys.executable).parent / "kubernetes-validate",
        docker_compose=Path(_which("docker-compose")),
        helm_env=helm_env,
    )
    for tool in (tools.helm, tools.kubernetes_validate, tools.docker_compose):
        assert tool.exists(), f"{script.name} succeeded but {tool} is missing"
    return tools


def _which(name: str) -> str:
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not on PATH after scripts/ensure-deploy-tools.sh", pytrace=False)


@dataclass(frozen=True)
class Rendered:
    values_file: Path  # the ci/*-values.yaml it was rendered with
    text: str  # helm template's output
    docs: list[dict]  # its manifests, in order

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, suffix: str) -> dict:
        hits = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(suffix)]
        assert len(hits) == 1, f"expected one {kind} named *{suffix}, found {[d['metadata']['name'] for d in hits]}"
        return hits[0]


def render(tools: DeployTools, values_file: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["template", "fleet", str(CHART), "--namespace", "qsae"]
    if values_file is not None:
        args += ["-f", str(values_file)]
    return tools.helm_cmd(*args, *extra)


@pytest.fixture(scope="session", params=CI_VALUES, ids=[p.name for p in CI_VALUES])
def rendered(request: pytest.FixtureRequest, deploy_tools: DeployTools) -> Rendered:
    proc = render(deploy_tools, request.param)
    assert proc.returncode == 0, f"helm template -f {request.param.name} failed:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return Rendered(request.param, proc.stdout, docs)


@pytest.fixture(scope="session")
def rendered_full(deploy_tools: DeployTools) -> Rendered:
    """Everything on (ci/full-values.yaml): Ray, MLflow, ingress, network policies."""
    path = CHART / "ci" / "full-values.yaml"
    proc = render(deploy_tools, path)
    assert proc.returncode == 0, proc.stderr
    return Rendered(path, proc.stdout, [d for d in yaml.safe_load_all(proc.stdout) if d])
