"""The package boundaries DESIGN.md promises: the agent installs without the server stack, and the
shared package stays numpy-only."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirement_names(reqs):
    return {r.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower() for r in reqs}


def test_agent_extra_has_no_torch_and_no_server_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    agent = _requirement_names(project["dependencies"] + project["optional-dependencies"]["agent"])
    assert not agent & {"torch", "fastapi", "sqlalchemy", "ray", "mlflow", "uvicorn", "alembic", "redis"}
    assert {"onnxruntime", "numpy", "httpx", "pydantic"} <= agent


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    loose = [r for r in reqs if "==" not in r]
    assert not loose, f"unpinned requirements: {loose}"
    assert "torch==2.13.0" in reqs


def test_shared_package_imports_only_numpy_and_cryptography():
    code = ("import sys, qsae_shared.data, qsae_shared.distributions, qsae_shared.sketch, "
            "qsae_shared.manifest, qsae_shared.signing, qsae_shared.compression\n"
            "heavy = {'torch', 'ray', 'mlflow', 'fastapi', 'sqlalchemy', 'onnxruntime', 'httpx'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
