"""The Helm chart: `helm lint --strict`, `helm template | kubernetes-validate --strict`, the RayCluster
against the committed KubeRay schema, and what an operator relies on in the rendered manifests."""

from __future__ import annotations

import base64
import importlib.resources
import json
import re
import tomllib

import jsonschema
import pytest
from referencing import Registry, Resource

from tests.deploy.conftest import CHART, CI_VALUES, ROOT, DeployTools, Rendered, render
from tests.deploy.workloads import pods

RAYCLUSTER_SCHEMA = ROOT / "tests" / "deploy" / "schemas" / "raycluster-ray.io-v1.json"


@pytest.mark.parametrize("values_file", [None, *CI_VALUES],
                         ids=["defaults", *[p.name for p in CI_VALUES]])
def test_helm_lint_strict_passes(deploy_tools: DeployTools, values_file) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values_file)] if values_file else [])
    proc = deploy_tools.helm_cmd(*args)
    print(proc.stdout)
    assert proc.returncode == 0, f"helm lint --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


def test_rendered_manifests_pass_kubernetes_validate_strict(deploy_tools: DeployTools,
                                                            rendered: Rendered) -> None:
    proc = deploy_tools.run([str(deploy_tools.kubernetes_validate), "--strict", "-"], input=rendered.text)
    lines = proc.stdout.splitlines()
    passed = [ln for ln in lines if ln.startswith("INFO") and " passed for resource " in ln]
    problems = [ln for ln in lines if not ln.startswith("INFO")]
    # kubernetes-validate has no schema for custom resources: it warns and moves on. The RayCluster
    # is validated by test_raycluster_matches_the_committed_kuberay_schema instead.
    unvalidated = [ln for ln in problems if ln.startswith("WARN") and "kind RayCluster with api version ray.io/v1" in ln]
    print(f"kubernetes-validate --strict ({rendered.values_file.name}): {len(passed)} resources passed; "
          f"{len(unvalidated)} RayCluster left to the committed KubeRay schema")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [ln for ln in problems if ln not in unvalidated] == []
    custom = [d for d in rendered.docs if d["kind"] == "RayCluster"]
    assert len(passed) == len(rendered.docs) - len(custom) > 0


def _raycluster_validator() -> jsonschema.Draft202012Validator:
    ours = json.loads(RAYCLUSTER_SCHEMA.read_text())
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    newest = max((p for p in schemas.iterdir() if p.name.endswith("-local-strict")),
                 key=lambda p: tuple(int(x) for x in re.findall(r"\d+", p.name)[:3]))
    k8s = json.loads((newest / "_definitions.json").read_text())
    registry = Registry().with_resources([(k8s["$id"], Resource.from_contents(k8s)),
                                          (ours["$id"], Resource.from_contents(ours))])
    return jsonschema.Draft202012Validator(ours, registry=registry)


def test_raycluster_matches_the_committed_kuberay_schema(rendered_full: Rendered) -> None:
    (cluster,) = rendered_full.of_kind("RayCluster")
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in _raycluster_validator().iter_errors(cluster)]
    print(f"RayCluster {cluster['metadata']['name']}: {len(errors)} errors against "
          f"{RAYCLUSTER_SCHEMA.relative_to(ROOT)}")
    assert errors == []


def test_the_raycluster_schema_rejects_what_kuberay_would(rendered_full: Rendered) -> None:
    (cluster,) = rendered_full.of_kind("RayCluster")
    broken = json.loads(json.dumps(cluster))
    broken["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    broken["spec"]["autoscalerOptions"]["upscalingMode"] = "Eager"
    messages = [e.message for e in _raycluster_validator().iter_errors(broken)]
    assert any("'maxReplicas' is a required property" in m for m in messages)
    assert any("'imagePullPolcy' was unexpected" in m for m in messages)
    assert any("'Eager' is not one of" in m for m in messages)


def test_ray_workers_autoscale_within_bounds_on_the_pinned_ray(rendered_full: Rendered) -> None:
    (cluster,) = rendered_full.of_kind("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["minReplicas"] < group["maxReplicas"]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (ray_pin,) = [r for r in deps["workers"] if r.startswith("ray[") or r.startswith("ray==")]
    assert spec["rayVersion"] == ray_pin.split("==")[1], "ray.rayVersion must follow pyproject's ray pin"
    images = {c["image"] for p in pods([cluster]) for c in p.spec["containers"]}
    (dispatcher,) = [p for p in pods(rendered_full.docs) if p.owner.endswith("-dispatcher")]
    assert images == {dispatcher.spec["containers"][0]["image"]}, "Ray nodes and their client share one image"
    address = rendered_full.named("ConfigMap", "qsae-fleet")["data"]["FLEET_RAY_ADDRESS"]
    assert address == f"ray://{cluster['metadata']['name']}-head-svc:10001"


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(rendered: Rendered) -> None:
    (job,) = rendered.of_kind("Job")
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == ["qsae-fleet", "db", "upgrade"]
    # Hooks run before the release's resources exist: whatever Secret the Job reads must be a hook
    # with a lower weight, or one the operator created beforehand (secrets.existingSecret).
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    (secret_name,) = refs
    hook_secrets = {s["metadata"]["name"]: s for s in rendered.of_kind("Secret")
                    if "helm.sh/hook" in s["metadata"].get("annotations", {})}
    values = rendered.values_file.read_text()
    if "existingSecret:" in values:
        assert secret_name not in hook_secrets and secret_name == "qsae-fleet-credentials"
    else:
        s = hook_secrets[secret_name]
        assert int(s["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"])
        assert set(s["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}


def test_every_workload_runs_as_non_root_with_resource_requests(rendered: Rendered) -> None:
    checked = 0
    for pod in pods(rendered.docs):
        pod_ctx = pod.spec.get("securityContext", {})
        for c in pod.spec["containers"]:
            ctx = {**pod_ctx, **c.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, pod.owner
            assert ctx.get("allowPrivilegeEscalation") is False, pod.owner
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{pod.owner} container {c['name']} has no requests"
            checked += 1
    assert checked >= 4


def test_control_plane_has_health_probes_on_its_port(rendered: Rendered) -> None:
    (cp,) = [p for p in pods(rendered.docs) if p.owner.endswith("-control-plane")]
    c = cp.spec["containers"][0]
    assert c["command"] + c["args"] == ["qsae-fleet", "serve", "--no-migrate"]
    assert c["ports"][0]["containerPort"] == 8000
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    svc = rendered.named("Service", "qsae-fleet")
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_every_pod_is_covered_by_a_network_policy(rendered_full: Rendered) -> None:
    policies = rendered_full.of_kind("NetworkPolicy")

    def selects(selector: dict, labels: dict) -> bool:
        if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expr in selector.get("matchExpressions", []):
            if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
                return False
        return True

    uncovered = [p.owner for p in pods(rendered_full.docs) if not p.owner.startswith("Pod/")
                 and not any(selects(np["spec"]["podSelector"], p.labels) for np in policies)]
    assert uncovered == []


def test_secrets_stay_out_of_pod_specs_and_configmaps(rendered_full: Rendered) -> None:
    values = rendered_full.values_file.read_text()
    secrets = re.findall(r"not-a-real-[a-z-]+", values)
    assert secrets
    public = [d for d in rendered_full.docs if d["kind"] != "Secret"]
    leaked = [s for s in set(secrets) if any(s in json.dumps(d) for d in public)]
    assert leaked == []
    (secret,) = [s for s in rendered_full.of_kind("Secret") if "helm.sh/hook" not in s["metadata"].get("annotations", {})]
    assert len(base64.b64decode(secret["data"]["signing.key"])) == 32


def test_install_without_a_database_url_fails_with_what_to_set(deploy_tools: DeployTools) -> None:
    proc = render(deploy_tools, None)
    assert proc.returncode != 0
    assert "database.url is required" in proc.stderr


def test_values_schema_rejects_a_misspelt_key(deploy_tools: DeployTools) -> None:
    proc = render(deploy_tools, CHART / "ci" / "full-values.yaml", "--set", "ray.worker.maxReplica=3")
    assert proc.returncode != 0
    assert "maxReplica" in proc.stderr and "not allowed" in proc.stderr


def test_signing_key_of_the_wrong_length_is_refused(deploy_tools: DeployTools) -> None:
    short = base64.b64encode(b"sixteen-byte-key").decode()
    proc = render(deploy_tools, CHART / "ci" / "full-values.yaml", "--set", f"secrets.signingKeyBase64={short}")
    assert proc.returncode != 0
    assert "32" in proc.stderr and "signingKeyBase64" in proc.stderr
