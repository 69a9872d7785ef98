"""The images, read rather than built (no Docker engine here): multi-stage, non-root, pinned base
and packages, torch's CPU build only in the worker image, nothing of the server stack in the agent's."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from tests.deploy.conftest import ROOT
from tests.deploy.workloads import Dockerfile

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
CONSTRAINTS = ROOT / "docker" / "constraints.txt"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for req in lines:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", req.strip())
        if m:
            out[_normalize(m.group(1))] = m.group(3)
    return out


def test_there_is_an_image_for_each_role() -> None:
    assert [p.name for p in DOCKERFILES] == ["agent.Dockerfile", "mlflow.Dockerfile",
                                              "server.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_image_is_multi_stage_non_root_on_a_pinned_base(path) -> None:
    df = Dockerfile.parse(path)
    assert len(df.stages) >= 2, "build in one stage, copy the venv into a clean one"
    assert len(set(df.stages)) == 1, "build and runtime stages share one base (the venv links into it)"
    base = df.stages[-1]
    assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+-[a-z]+-[a-z]+(@sha256:[0-9a-f]{64})?", base), \
        f"{path.name}: base {base!r} is not pinned to an exact version"
    assert df.final_user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", df.final_user), \
        f"{path.name}: the final stage must run as a numeric non-root user, has USER {df.final_user!r}"
    assert df.cmd and not df.entrypoint, f"{path.name}: the whole command in CMD, no ENTRYPOINT"


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_every_package_install_is_pinned(path) -> None:
    df = Dockerfile.parse(path)
    runs = " && ".join(df.runs)
    assert "pip install" in runs
    for cmd in re.findall(r"pip install ([^&]+)", runs):
        words = [w for w in cmd.split() if not w.startswith("-") and not w.startswith("http")]
        constrained = "--constraint" in cmd or " -c " in cmd
        for w in words:
            w = w.strip("\"'")
            if w in (".[server]", ".[server,workers]", ".[agent]") or w.startswith("docker/constraints") \
                    or w.startswith("/tmp/constraints"):
                assert constrained or not w.startswith("."), f"{path.name}: {cmd!r} without the constraints file"
                continue
            assert "==" in w, f"{path.name}: {w!r} is not pinned in {cmd!r}"
    for cmd in re.findall(r"apt-get install ([^&]+)", runs):
        assert "--no-install-recommends" in cmd
        pkgs = [w for w in cmd.split() if not w.startswith("-")]
        assert pkgs and all("=" in p for p in pkgs), f"{path.name}: unpinned Debian packages in {cmd!r}"


def test_worker_image_installs_torch_cpu_build_pinned() -> None:
    text = " && ".join(Dockerfile.parse(ROOT / "docker" / "worker.Dockerfile").runs)
    assert re.search(r"pip install [^&]*--index-url https://download\.pytorch\.org/whl/cpu [^&]*torch==2\.13\.0",
                     text)
    assert ".[server,workers]" in text


def test_agent_and_server_images_have_no_torch() -> None:
    for name, extra in (("agent.Dockerfile", ".[agent]"), ("server.Dockerfile", ".[server]")):
        installs = re.findall(r"pip install ([^&]+)", " && ".join(Dockerfile.parse(ROOT / "docker" / name).runs))
        assert any(extra in cmd for cmd in installs), name
        assert not [cmd for cmd in installs if "torch" in cmd or "workers" in cmd], name


def test_constraints_agree_with_every_pin_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + [r for reqs in project["optional-dependencies"].values()
                                               for r in reqs])
    have = _pins(CONSTRAINTS.read_text().splitlines())
    drift = {name: (version, have.get(name)) for name, version in wanted.items()
             if have.get(name, "").split("+")[0] != version}
    assert drift == {}, f"docker/constraints.txt is stale (pyproject, constraints): {drift}; " \
                        "run `bash docker/update-constraints.sh`"


@pytest.mark.parametrize("name", ["server", "worker", "agent"])
def test_build_context_allow_list_carries_every_package(name: str) -> None:
    ignore = (ROOT / "docker" / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in cfg["include"]}
    assert packages | {"pyproject.toml", "README.md", "docker/constraints.txt"} <= allowed
    assert next(ln for ln in ignore if not ln.startswith("#")) == "*", "allow-list: ignore everything first"


def test_compose_and_chart_name_the_same_images_the_dockerfiles_build() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    built = {svc["build"]["dockerfile"] for svc in compose["services"].values() if "build" in svc}
    assert built == {f"docker/{p.name}" for p in DOCKERFILES}
    values = yaml.safe_load((ROOT / "helm" / "qsae-fleet" / "values.yaml").read_text())
    repos = {values["image"][k]["repository"].split("/")[-1] for k in ("server", "worker", "mlflow")}
    assert repos == {"server", "worker", "mlflow"}
