"""What compose, the images and the chart run must exist in the code they run: every command and
option in the real command lines (typer apps, and the pinned mlflow and ray CLIs), every FLEET_*
variable in control_plane.settings.Settings, every QSAE_AGENT_* one in the agent's settings. Read
from the code at test time, so either side drifting fails here."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, Rendered
from tests.deploy.workloads import Dockerfile, Invocation, chart_invocations, compose_invocations

# The click command tree behind each executable the deployment runs.
CLIS = {
    "qsae-fleet": "control_plane.cli:app",
    "qsae-agent": "edge_agent.cli:app",
    "mlflow": "mlflow.cli:cli",
    "ray": "ray.scripts.scripts:cli",
}

# Deployed commands that control_plane/cli.py does not have yet (issue 4 is adding them), with the
# reason. Each is an xfail; pytest -ra lists it as XPASS once the command exists: then delete it here.
PENDING: dict[str, str] = {}  # deployed commands not in the CLI yet: name -> reason (xfail)


@cache
def _cli(exe: str) -> Any:
    """The click command (or typer's own click-alike, which is not a click subclass) of `exe`."""
    module, attr = CLIS[exe].split(":")
    obj = getattr(importlib.import_module(module), attr)
    if hasattr(obj, "params") and hasattr(obj, "main"):
        return obj
    import typer.main

    return typer.main.get_command(obj)


def _is_group(cmd: Any) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


@dataclass(frozen=True)
class Resolved:
    path: tuple[str, ...]  # command names after the executable, as far as the tree has them
    command: Any  # the command the path leads to (None: a name it does not have)
    options: tuple[str, ...]  # --options on the command line


def _resolve(argv: list[str]) -> Resolved:
    exe, rest = argv[0], argv[1:]
    cmd = _cli(exe)
    words = [w for w in rest if not w.startswith("-")]
    path: list[str] = []
    if not _is_group(cmd) and words and words[0] == cmd.name:
        path.append(words.pop(0))  # a typer app with a single command collapses into it
    while words and _is_group(cmd):
        name = words.pop(0)
        path.append(name)
        cmd = cmd.commands.get(name)
    options = tuple(w.split("=", 1)[0] for w in rest if w.startswith("--"))
    return Resolved(tuple(path), cmd, options)


def _static_invocations() -> list[Invocation]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    found = compose_invocations(compose)
    for path in sorted((ROOT / "docker").glob("*.Dockerfile")):
        df = Dockerfile.parse(path)
        found.append(Invocation(f"{path.name} CMD", df.entrypoint + df.cmd, df.env))
    return [inv for inv in found if inv.argv and inv.argv[0] in CLIS]


def _command_name(argv: list[str]) -> str:
    words = []
    for w in argv:
        if w.startswith("-"):
            break
        words.append(w)
    return " ".join(words)


STATIC = _static_invocations()
DEPLOYED = sorted({_command_name(inv.argv) for inv in STATIC if inv.argv[0].startswith("qsae-")})


def _params():
    for name in DEPLOYED:
        marks = [pytest.mark.xfail(reason=PENDING[name], strict=False)] if name in PENDING else []
        yield pytest.param(name, marks=marks, id=name)


def test_deployment_runs_the_processes_of_the_design() -> None:
    assert set(DEPLOYED) == {"qsae-fleet serve", "qsae-fleet db upgrade", "qsae-fleet controller",
                             "qsae-fleet worker", "qsae-fleet simulate", "qsae-agent run"}


def _problems(inv: Invocation) -> list[str]:
    r = _resolve(inv.argv)
    if r.command is None:
        return [f"{inv.where}: `{inv.argv[0]} {' '.join(r.path)}` is not a command of {CLIS[inv.argv[0]]}"]
    known = {o for p in r.command.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    return [f"{inv.where}: `{inv.argv[0]} {' '.join(r.path)}` has no option {o}"
            for o in r.options if o not in known]


@pytest.mark.parametrize("name", list(_params()))
def test_deployed_command_exists_with_its_options(name: str) -> None:
    invocations = [inv for inv in STATIC if _command_name(inv.argv) == name]
    assert invocations
    problems = [p for inv in invocations for p in _problems(inv)]
    assert problems == []


def test_mlflow_and_ray_command_lines_fit_the_pinned_versions(rendered_full: Rendered) -> None:
    others = [inv for inv in STATIC if not inv.argv[0].startswith("qsae-")]
    assert {inv.argv[0] for inv in others} == {"mlflow", "ray"}
    problems = [p for inv in others for p in _problems(inv)]
    # KubeRay turns rayStartParams into `ray start --<key>=<value>`.
    (cluster,) = rendered_full.of_kind("RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for g in groups:
        argv = ["ray", "start", *[f"--{k}={v}" for k, v in g["rayStartParams"].items()]]
        problems += _problems(Invocation("RayCluster rayStartParams", argv))
    assert problems == []


def test_chart_runs_only_commands_checked_here(rendered: Rendered) -> None:
    invocations = [inv for inv in chart_invocations(rendered.docs) if inv.argv and inv.argv[0] in CLIS]
    ours = {_command_name(inv.argv) for inv in invocations if inv.argv[0].startswith("qsae-")}
    assert ours and ours <= set(DEPLOYED)
    pending = set(PENDING)
    problems = [p for inv in invocations if _command_name(inv.argv) not in pending for p in _problems(inv)]
    assert problems == []


# ---- variables ---------------------------------------------------------------------------------


def _settings_env(prefix: str, module: str, cls: str) -> set[str]:
    fields = getattr(importlib.import_module(module), cls).model_fields
    return {f"{prefix}{name.upper()}" for name in fields}


def _used(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n.startswith(prefix)}


def _env_example_names() -> set[str]:
    return {ln.split("=", 1)[0].strip() for ln in (ROOT / ".env.example").read_text().splitlines()
            if "=" in ln and not ln.lstrip().startswith("#")}


def test_every_fleet_variable_in_compose_images_and_env_example_is_a_setting() -> None:
    settings = _settings_env("FLEET_", "control_plane.settings", "Settings")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    used = {n for inv in compose_invocations(compose) for n in inv.env}
    used |= {n for p in (ROOT / "docker").glob("*.Dockerfile") for n in Dockerfile.parse(p).env}
    used |= _env_example_names()
    unknown = sorted(_used(used, "FLEET_") - settings)
    assert unknown == [], f"not fields of control_plane.settings.Settings: {unknown}"
    assert len(_used(used, "FLEET_")) >= 10


def test_every_fleet_variable_in_the_chart_is_a_setting(rendered: Rendered) -> None:
    settings = _settings_env("FLEET_", "control_plane.settings", "Settings")
    used = {n for inv in chart_invocations(rendered.docs) for n in inv.env}
    unknown = sorted(_used(used, "FLEET_") - settings)
    assert unknown == [], f"not fields of control_plane.settings.Settings: {unknown}"
    assert {"FLEET_DATABASE_URL", "FLEET_SIGNING_KEY_FILE", "FLEET_ARTIFACT_DIR"} <= used


def test_extra_settings_from_values_reach_every_fleet_process(deploy_tools) -> None:
    from tests.deploy.conftest import CHART, render

    proc = render(deploy_tools, CHART / "ci" / "full-values.yaml", "--set", "config.extraEnv.FLEET_CALIBRATION_SIZE=256")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    fleet = [inv for inv in chart_invocations(docs) if inv.argv[:1] == ["qsae-fleet"] and "migrations" not in inv.where]
    assert len(fleet) == 3
    assert all("FLEET_CALIBRATION_SIZE" in inv.env for inv in fleet)
    assert "FLEET_CALIBRATION_SIZE" in _settings_env("FLEET_", "control_plane.settings", "Settings")


def test_every_agent_variable_is_an_agent_setting() -> None:
    settings = _settings_env("QSAE_AGENT_", "edge_agent.config", "AgentSettings")
    used: set[str] = set()
    for p in (ROOT / "docker").glob("*.Dockerfile"):
        used |= Dockerfile.parse(p).env
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    used |= {n for inv in compose_invocations(compose) for n in inv.env}
    agent = _used(used, "QSAE_AGENT_")
    assert agent, "the agent image sets its state dir"
    assert sorted(agent - settings) == []


def test_no_variable_escapes_its_prefix() -> None:
    """Compose-only knobs use QSAE_ (not FLEET_ or QSAE_AGENT_), so nobody mistakes them for settings."""
    names = _env_example_names()
    for n in names:
        assert re.fullmatch(r"(FLEET|QSAE|POSTGRES|REDIS)_[A-Z0-9_]+", n), n
