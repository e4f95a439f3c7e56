"""infra/k8s is validated offline: Kubernetes' own JSON schemas (bundled by kubernetes-validate), a small
schema of our own for the KEDA custom resource, and the cross-references no schema can see (selectors,
Secret keys, the CLI commands, grace periods against the job time limit).
"""

from __future__ import annotations

import re
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from service.cli import build_parser
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
# The oldest Kubernetes minor still in common support; the manifests use nothing newer.
KUBERNETES_VERSION = "1.30"
NAMESPACE = "pikfix"
WORKLOAD_KINDS = {"Deployment", "Job"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


ALL_DOCS: list[tuple[str, dict[str, Any]]] = [(p.name, doc) for p in manifest_files() for doc in load_docs(p)]
KUSTOMIZATION = load_docs(K8S / "kustomization.yaml")[0]


def docs_of(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in ALL_DOCS if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs_of(kind) if d["metadata"]["name"] == name]
    return doc


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every Deployment and Job."""
    for _, doc in ALL_DOCS:
        if doc["kind"] in WORKLOAD_KINDS:
            for container in pod_spec(doc)["containers"]:
                yield doc, container


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pikfix_args(container: dict[str, Any]) -> Namespace:
    """Parse the container's `pikfix ...` command with the real CLI parser (the image's tini stays PID 1)."""
    assert "command" not in container, "set args, not command: command would replace the tini entrypoint"
    args = container["args"]
    assert args[0] == "pikfix", args
    try:
        return build_parser().parse_args(args[1:])
    except SystemExit as exc:
        pytest.fail(f"`{' '.join(args)}` is not a valid pikfix command (exit {exc.code})")


def container_of(name: str) -> dict[str, Any]:
    (container,) = pod_spec(one("Deployment", name))["containers"]
    return container


def secret_example() -> dict[str, str]:
    (secret,) = load_docs(K8S / "secret.example.yaml")
    return secret["stringData"]


def configmap() -> dict[str, str]:
    return one("ConfigMap", "pikfix-config")["data"]


def env_names(container: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == "pikfix-config"
            names |= set(configmap())
    return names


def hard_time_limit_s() -> int:
    default = Settings.model_fields["job_hard_time_limit_s"].default
    return max(default, int(configmap().get("PIKFIX_JOB_HARD_TIME_LIMIT_S", default)))


# ---------------------------------------------------------------- kustomize and schemas


def test_kustomization_lists_every_manifest() -> None:
    listed = KUSTOMIZATION["resources"]
    assert len(listed) == len(set(listed)), "duplicate resources"
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization lists missing {name}"
    # The example Secret is kept out on purpose: applying the base must not overwrite real credentials.
    expected = {p.name for p in manifest_files() if not p.name.endswith(".example.yaml")}
    assert set(listed) == expected
    assert KUSTOMIZATION["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert KUSTOMIZATION["kind"] == "Kustomization"
    assert KUSTOMIZATION["namespace"] == NAMESPACE
    known = {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "images",
        "patches",
        "configMapGenerator",
    }
    assert set(KUSTOMIZATION) <= known, set(KUSTOMIZATION) - known
    images = {i["name"] for i in KUSTOMIZATION["images"]}
    assert images == {c["image"].rpartition(":")[0] for _, c in containers()}, "images: names every image"


@pytest.mark.parametrize(
    ("filename", "doc"),
    [(f, d) for f, d in ALL_DOCS if not d["apiVersion"].startswith("keda.sh/")],
    ids=[
        f"{f}:{d['kind']}:{d['metadata']['name']}"
        for f, d in ALL_DOCS
        if not d["apiVersion"].startswith("keda.sh/")
    ],
)
def test_manifest_matches_kubernetes_schema(filename: str, doc: dict[str, Any]) -> None:
    """Strict schemas: an unknown field (a typo) fails as well as a wrong type or a missing field."""
    from kubernetes_validate import utils as kv

    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{filename}: {doc['kind']} {doc['metadata']['name']}: {path}: {exc.message}")


def test_everything_lives_in_the_pikfix_namespace() -> None:
    for filename, doc in ALL_DOCS:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, filename


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": _NAME,
                "namespace": _NAME,
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _NAME,
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"}},
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,  # KEDA reads every trigger parameter as a string
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": _NAME, "kind": {"type": "string"}},
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        },
                    },
                },
            },
        },
    },
}
# Parameters of KEDA's `redis` (list length) scaler; anything else there is a typo KEDA would reject.
REDIS_TRIGGER_PARAMETERS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username", "usernameFromEnv",
    "passwordFromEnv", "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS",
    "unsafeSsl",
}  # fmt: skip


def test_keda_scaled_object_matches_its_schema() -> None:
    (scaled,) = docs_of("ScaledObject")
    jsonschema.Draft202012Validator.check_schema(SCALED_OBJECT_SCHEMA)
    errors = sorted(jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).iter_errors(scaled), key=str)
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]
    for trigger in scaled["spec"]["triggers"]:
        if trigger["type"] == "redis":
            unknown = set(trigger["metadata"]) - REDIS_TRIGGER_PARAMETERS
            assert not unknown, f"unknown redis scaler parameters: {unknown}"


def test_keda_schema_rejects_a_misspelt_field() -> None:
    """The home-made schema must actually bite: a typo and a non-string parameter both fail."""
    (scaled,) = docs_of("ScaledObject")
    validator = jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA)
    typo = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}
    assert any("maxReplicas" in e.message for e in validator.iter_errors(typo))
    trigger = {**scaled["spec"]["triggers"][0], "metadata": {"listName": "restore", "listLength": 4}}
    numeric = {**scaled, "spec": {**scaled["spec"], "triggers": [trigger]}}
    assert list(validator.iter_errors(numeric))


# ---------------------------------------------------------------- autoscaling


def test_keda_scales_the_gpu_worker_on_the_restore_list() -> None:
    (scaled,) = docs_of("ScaledObject")
    spec = scaled["spec"]
    target = one("Deployment", spec["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "pikfix-worker-gpu"
    assert "replicas" not in target["spec"], "KEDA owns the replica count; a fixed one is reset by each apply"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis"
    # Celery on Redis keeps each queue as a list named after the queue.
    assert meta["listName"] == pikfix_args(container_of("pikfix-worker-gpu")).queues == "restore"
    assert int(meta["listLength"]) >= 1
    # *FromEnv parameters are read from the target's container environment.
    names = env_names(container_of("pikfix-worker-gpu"))
    for key in ("addressFromEnv", "passwordFromEnv"):
        assert meta[key] in names, f"{meta[key]} is not in the worker-gpu container's environment"
    # ...and must describe the same Redis database as the workers' broker URL.
    broker = urlsplit(secret_example()["PIKFIX_BROKER_URL"])
    assert configmap()[meta["addressFromEnv"]] == f"{broker.hostname}:{broker.port}"
    assert meta["databaseIndex"] == broker.path.strip("/")
    assert secret_example()["KEDA_REDIS_PASSWORD"] == broker.password


# ---------------------------------------------------------------- commands and roles


def test_every_container_runs_a_real_pikfix_subcommand() -> None:
    seen = {}
    for workload, container in containers():
        seen[workload["metadata"]["name"]] = pikfix_args(container)
    assert set(seen) == {
        "pikfix-api", "pikfix-worker-gpu", "pikfix-worker-cpu", "pikfix-beat", "pikfix-flower", "pikfix-migrate",
    }  # fmt: skip
    assert (seen["pikfix-migrate"].command, seen["pikfix-migrate"].db_command) == ("db", "upgrade")
    assert (seen["pikfix-api"].command, seen["pikfix-api"].host) == ("api", "0.0.0.0")
    assert (seen["pikfix-worker-gpu"].queues, seen["pikfix-worker-gpu"].concurrency) == ("restore", 1)
    assert set(seen["pikfix-worker-cpu"].queues.split(",")) == {"ingest", "maintenance"}
    assert [n for n, a in seen.items() if a.command == "beat"] == ["pikfix-beat"]
    assert (seen["pikfix-flower"].command, seen["pikfix-flower"].address) == ("flower", "0.0.0.0")


def test_images_are_pinned_and_match_the_role() -> None:
    for workload, container in containers():
        image = container["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
        gpu = workload["metadata"]["name"] == "pikfix-worker-gpu"
        assert name == ("pikfix-gpu" if gpu else "pikfix-api"), (workload["metadata"]["name"], image)
    for entry in KUSTOMIZATION["images"]:
        assert entry["newTag"] != "latest"


# ---------------------------------------------------------------- GPU, beat, grace periods


def test_gpu_worker_is_scheduled_on_the_gpu_pool() -> None:
    worker = one("Deployment", "pikfix-worker-gpu")
    spec = pod_spec(worker)
    resources = container_of("pikfix-worker-gpu")["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert int(resources["requests"].get("nvidia.com/gpu", 1)) == 1
    assert spec["nodeSelector"], "GPU workers must land on the GPU pool"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    # No surge: a full pool has no spare GPU for an extra pod during a rollout.
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    for _, container in containers():
        if container is not container_of("pikfix-worker-gpu"):
            assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})


def test_beat_is_a_singleton() -> None:
    beat = one("Deployment", "pikfix-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate", "a rolling update would briefly run two beats"
    assert not [s for s in docs_of("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == "pikfix-beat"]


def test_worker_grace_period_outlasts_the_hard_time_limit() -> None:
    limit = hard_time_limit_s()
    soft = int(configmap()["PIKFIX_JOB_SOFT_TIME_LIMIT_S"])
    assert soft < limit
    for workload, container in containers():
        if pikfix_args(container).command == "worker":
            grace = pod_spec(workload)["terminationGracePeriodSeconds"]
            assert grace > limit, f"{workload['metadata']['name']}: grace {grace}s <= hard limit {limit}s"


# ---------------------------------------------------------------- probes


def test_long_running_containers_have_probes() -> None:
    for workload, container in containers():
        if workload["kind"] == "Deployment":
            assert "livenessProbe" in container, workload["metadata"]["name"]
    api = container_of("pikfix-api")
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container_of("pikfix-flower")["livenessProbe"]["httpGet"]["path"] == "/healthcheck"


def test_worker_probes_ping_their_own_node_name() -> None:
    """Celery names a worker by --hostname (ROLE@%h); the probe pings that name on this pod."""
    for name in ("pikfix-worker-gpu", "pikfix-worker-cpu"):
        container = container_of(name)
        hostname = pikfix_args(container).hostname
        assert hostname and hostname.endswith("@%h"), f"{name}: set --hostname ROLE@%h"
        node = hostname.replace("%h", "$HOSTNAME")
        for probe in ("startupProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["sh", "-c"] and f"-A workers.app inspect ping -d {node} " in command[2]
            assert container[probe]["timeoutSeconds"] >= 15, "the ping itself waits 10 s"


def test_named_ports_used_by_probes_and_services_exist() -> None:
    for workload, container in containers():
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str):
                assert port in ports, (workload["metadata"]["name"], probe, port)
    for service in docs_of("Service"):
        pods = [
            d for d in docs_of("Deployment")
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert len(pods) == 1, f"Service {service['metadata']['name']} selects {len(pods)} Deployments"
        (container,) = pod_spec(pods[0])["containers"]
        names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names


# ---------------------------------------------------------------- selectors, budgets, config


def test_deployment_selectors_match_their_pods() -> None:
    for deployment in docs_of("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]


def test_disruption_budgets_cover_api_and_workers_only() -> None:
    covered = set()
    for pdb in docs_of("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matches = [
            d["metadata"]["name"] for d in docs_of("Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert len(matches) == 1, f"PDB {pdb['metadata']['name']} selects {matches}"
        covered |= set(matches)
        if "maxUnavailable" in pdb["spec"]:
            assert pdb["spec"]["maxUnavailable"] >= 1, "a budget of 0 blocks every node drain"
    assert covered == {"pikfix-api", "pikfix-worker-gpu", "pikfix-worker-cpu"}
    assert one("Deployment", "pikfix-api")["spec"]["replicas"] > 1, "minAvailable 1 needs two API pods"


def test_secret_and_config_references_resolve() -> None:
    secret = secret_example()
    for workload, container in containers():
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "pikfix-secrets"
                assert ref["key"] in secret, (
                    f"{workload['metadata']['name']}: no key {ref['key']} in the Secret"
                )
        env_names(container)  # asserts every envFrom names pikfix-config
    assert "PIKFIX_DATABASE_URL" not in env_names(container_of("pikfix-flower")), (
        "flower needs the broker only"
    )


def test_pikfix_variables_are_real_settings() -> None:
    """A misspelt PIKFIX_* name is silently ignored by pydantic-settings: catch it here."""
    fields = set(Settings.model_fields)
    names = {n for n in set(configmap()) | set(secret_example()) if n.startswith("PIKFIX_")}
    for _, container in containers():
        names |= {e["name"] for e in container.get("env", []) if e["name"].startswith("PIKFIX_")}
    commented = re.findall(r"#\s*(PIKFIX_[A-Z0-9_]+):", (K8S / "configmap.yaml").read_text())
    names |= set(commented)
    unknown = {n for n in names if n.removeprefix("PIKFIX_").lower() not in fields}
    assert not unknown, f"not fields of service.settings.Settings: {sorted(unknown)}"


def test_pods_run_unprivileged() -> None:
    for workload, container in containers():
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"], name
        if ctx.get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"


def test_migrate_job_runs_once_to_completion() -> None:
    job = one("Job", "pikfix-migrate")
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    (container,) = pod_spec(job)["containers"]
    assert pikfix_args(container).command == "db"


def test_nothing_is_downloaded_at_start() -> None:
    checkpoint_vars = ("PIKFIX_CHECKPOINT", "PIKFIX_BACKBONE_WEIGHTS", "PIKFIX_RETRIEVAL_WEIGHTS")
    text = "\n".join(p.read_text() for p in manifest_files())
    for var, value in re.findall(rf"({'|'.join(checkpoint_vars)}):\s*(\S+)", text):
        assert not value.startswith(("http://", "https://")), f"{var} must be baked in or on S3: {value}"
    for word in ("pretrained", "hf_hub", "torch.hub", "wget ", "curl "):
        assert word not in text.lower(), word
