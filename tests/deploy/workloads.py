"""Reading rendered Kubernetes manifests and docker-compose.yml: pods, containers, commands and the
FLEET_* variables they set, so the checks can compare them with the code."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Pod:
    owner: str  # "<Kind>/<name>" of the manifest, plus "/head" or "/<group>" for Ray pods
    labels: dict[str, str]  # pod template labels
    spec: dict  # the pod spec


@dataclass
class Invocation:
    where: str  # "compose service x", "Deployment/y container z", ...
    argv: list[str]  # the full command line
    env: set[str] = field(default_factory=set)  # variables set on it by name


def pods(docs: list[dict]) -> Iterator[Pod]:
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            tpl = d["spec"]["template"]
            yield Pod(f"{kind}/{name}", tpl["metadata"].get("labels", {}), tpl["spec"])
        elif kind == "Pod":
            yield Pod(f"Pod/{name}", d["metadata"].get("labels", {}), d["spec"])
        elif kind == "RayCluster":
            head = d["spec"]["headGroupSpec"]["template"]
            yield Pod(f"RayCluster/{name}/head", head.get("metadata", {}).get("labels", {}), head["spec"])
            for group in d["spec"].get("workerGroupSpecs", []):
                tpl = group["template"]
                yield Pod(f"RayCluster/{name}/{group['groupName']}",
                          tpl.get("metadata", {}).get("labels", {}), tpl["spec"])


def chart_invocations(docs: list[dict]) -> list[Invocation]:
    """Every container's command + args, and the variables it gets (env and envFrom ConfigMaps)."""
    configmaps = {d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"}
    out = []
    for pod in pods(docs):
        for c in pod.spec.get("containers", []) + pod.spec.get("initContainers", []):
            env = {e["name"] for e in c.get("env", [])}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    env |= configmaps.get(src["configMapRef"]["name"], set())
            out.append(Invocation(f"{pod.owner} container {c['name']}",
                                  list(c.get("command", [])) + list(c.get("args", [])), env))
    return out


def compose_invocations(compose: dict) -> list[Invocation]:
    out = []
    for name, svc in compose["services"].items():
        entry = _as_list(svc.get("entrypoint"))
        cmd = _as_list(svc.get("command"))
        env = svc.get("environment") or {}
        names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
        out.append(Invocation(f"compose service {name}", entry + cmd, names))
    return out


def _as_list(v: str | list | None) -> list[str]:
    if v is None:
        return []
    return v.split() if isinstance(v, str) else [str(x) for x in v]


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    stages: list[str]  # each FROM line's image reference, in order
    final_user: str | None  # the last USER of the last stage
    env: set[str]  # variables set by ENV
    cmd: list[str]  # the exec-form CMD of the last stage
    entrypoint: list[str]  # the exec-form ENTRYPOINT of the last stage
    runs: list[str]  # every RUN command, continuation lines joined, comments dropped

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        args = {}
        stages, user, env, cmd, entrypoint, runs = [], None, set(), [], [], []
        for ln in lines:
            word, _, rest = ln.partition(" ")
            word = word.upper()
            if word == "ARG" and "=" in rest and not stages:
                k, v = rest.split("=", 1)
                args[k.strip()] = v.strip()
            elif word == "FROM":
                ref = rest.split()[0]
                stages.append(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ref))
                user, cmd, entrypoint = None, [], []
            elif word == "USER":
                user = rest.strip()
            elif word == "ENV":
                env |= set(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", rest))
            elif word == "CMD":
                cmd = json.loads(rest)
            elif word == "ENTRYPOINT":
                entrypoint = json.loads(rest)
            elif word == "RUN":
                runs.append(rest)
        return cls(path, stages, user, env, cmd, entrypoint, runs)
