"""docker-compose.yml is checked by construction: no Docker engine is needed to run these tests.

Users run the compose file on their own GPU machines, so every mistake that `docker compose up` would
only reveal there (a typo in a service name, an undeclared volume, a variable missing from .env.example,
a command the CLI rejects, a grace period shorter than a job) is caught here instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

ONE_SHOT_SERVICES = {"minio-init", "migrate"}
PIKFIX_IMAGES = ("pikfix-api", "pikfix-gpu")
VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|h|m|s)")
DURATION_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_example() -> tuple[dict[str, str], set[str]]:
    """(variables set in .env.example, variables documented there only as commented-out examples)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if m := re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line):
            active[m[1]] = m[2]
        elif m := re.fullmatch(r"#\s*([A-Z_][A-Z0-9_]*)=(.*)", line):
            commented.add(m[1])
    return active, commented


def strings(node: Any) -> Iterator[str]:
    """Every string (keys included) in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolated_names(text: str) -> set[str]:
    """Variables compose substitutes in `text`; `$$` is compose's escape for a literal `$`."""
    text = text.replace("$$", "")
    return {m[1] or m[2] for m in VAR_REF.finditer(text)}


def resolve_defaults(text: str) -> str:
    """`${VAR:-default}` -> default, as compose renders it when VAR is unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)


def duration_s(value: str) -> float:
    parts = DURATION_PART.findall(value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(n) * DURATION_UNITS_S[u] for n, u in parts)


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}, for both the list and the mapping syntax."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def is_pikfix_service(service: dict[str, Any]) -> bool:
    return any(name in resolve_defaults(service.get("image", "")) for name in PIKFIX_IMAGES)


def parse_pikfix(command: list[str]) -> Namespace:
    """Parse a `pikfix ...` command with the real CLI parser, without running anything."""
    assert isinstance(command, list), f"use the exec (list) form for commands: {command!r}"
    assert command[0] == "pikfix", f"not a pikfix command: {command!r}"
    try:
        return build_parser().parse_args(command[1:])
    except SystemExit as exc:  # argparse reports bad arguments by exiting
        pytest.fail(f"`{' '.join(command)}` is not a valid pikfix command (exit {exc.code})")


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def service_volumes(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume of a service, short or long syntax."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target, read_only = vol.get("source", ""), vol["target"], bool(vol.get("read_only"))
        out.append((source, target, read_only))
    return out


def role_of(services: dict[str, dict[str, Any]], subcommand: str) -> list[str]:
    return [
        name
        for name, svc in services.items()
        if is_pikfix_service(svc) and parse_pikfix(svc["command"]).command == subcommand
    ]


# ---------------------------------------------------------------- docker compose itself


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.mark.needs_container_engine
def test_docker_compose_config_accepts_the_file() -> None:
    """`docker compose config` needs no engine: it validates and renders the file with .env.example."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("docker CLI with the compose plugin is not installed here")
    run = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


# ---------------------------------------------------------------- structure


def test_depends_on_names_defined_services_with_satisfiable_conditions(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        for dep, condition in depends_on(svc).items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            assert dep != name
            if condition == "service_healthy":
                check = services[dep].get("healthcheck", {"disable": True})
                assert not check.get("disable"), (
                    f"{name} waits for {dep} to be healthy; it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert dep in ONE_SHOT_SERVICES, f"{name} waits for long-running {dep} to exit"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_every_named_volume_is_declared_and_used(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for source, _, _ in service_volumes(svc):
            if source.startswith((".", "/", "~")) or not source:
                continue  # bind mount or anonymous volume
            assert source in declared, f"{name} uses undeclared volume {source}"
            used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_stateful_services_keep_data_on_volumes(services: dict[str, dict[str, Any]]) -> None:
    targets = {name: {t for _, t, _ in service_volumes(svc)} for name, svc in services.items()}
    assert "/data" in targets["redis"]
    assert "/var/lib/postgresql/data" in targets["postgres"]
    assert "/data" in targets["minio"]
    assert "/var/lib/pikfix/flower" in targets["flower"]


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    one_shots = {name for name, svc in services.items() if svc.get("restart", "no") == "no"}
    assert one_shots == ONE_SHOT_SERVICES
    for name, svc in services.items():
        if name in ONE_SHOT_SERVICES:
            assert svc.get("healthcheck", {"disable": True}).get("disable") is True, name
            continue
        assert svc["restart"] == "unless-stopped", name
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)
        for key in ("interval", "timeout"):
            assert duration_s(check[key]) > 0, (name, key)
        assert duration_s(check["timeout"]) < duration_s(check["interval"]), name


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = resolve_defaults(svc["image"])
        repo_part, _, tag = image.rpartition(":")
        assert repo_part and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"


def test_pikfix_images_are_built_from_the_repository_dockerfiles(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if not is_pikfix_service(svc):
            continue
        build = svc["build"]
        assert build["context"] == "."
        assert (REPO / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        gpu = "pikfix-gpu" in resolve_defaults(svc["image"])
        assert build["dockerfile"].endswith("Dockerfile.gpu" if gpu else "Dockerfile.api"), name


# ---------------------------------------------------------------- variables


def test_every_variable_is_in_env_example(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    active, commented = env_example()
    used = set()
    for text in strings(compose):
        used |= interpolated_names(text)
    missing = used - set(active) - commented
    assert not missing, f"used in docker-compose.yml, missing from .env.example: {sorted(missing)}"
    # Pass-through entries (no value) come from .env only when set there: they must be documented too.
    passthrough = {
        key for svc in services.values() for key, value in environment(svc).items() if value is None
    }
    assert passthrough <= set(active) | commented, sorted(passthrough - set(active) - commented)
    stale = (set(active) | commented) - used - passthrough
    assert not stale, f"in .env.example but unused by docker-compose.yml: {sorted(stale)}"


def test_required_variables_have_example_values(compose: dict[str, Any]) -> None:
    """`${VAR:?msg}` aborts `compose up` when VAR is unset: .env.example must set each of them."""
    active, _ = env_example()
    required = set()
    for text in strings(compose):
        required |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text.replace("$$", "")))
    assert required, "expected the secrets to be required"
    for var in required:
        assert active.get(var), f"{var} is required but has no value in .env.example"
    for secret in (
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "PIKFIX_S3_SECRET_ACCESS_KEY",
    ):
        assert secret in required, f"{secret} must be required, never silently defaulted"


def test_pikfix_variables_are_real_settings(services: dict[str, dict[str, Any]]) -> None:
    """A misspelt PIKFIX_* name would be silently ignored by pydantic-settings: catch it here."""
    fields = set(Settings.model_fields)
    active, commented = env_example()
    names = {n for n in set(active) | commented if n.startswith("PIKFIX_")}
    for svc in services.values():
        if is_pikfix_service(svc):
            names |= {k for k in environment(svc) if k.startswith("PIKFIX_")}
    unknown = {n for n in names if n.removeprefix("PIKFIX_").lower() not in fields}
    assert not unknown, f"not fields of service.settings.Settings: {sorted(unknown)}"


def test_services_share_one_broker_and_database(services: dict[str, dict[str, Any]]) -> None:
    brokers = {
        environment(svc).get("PIKFIX_BROKER_URL") for svc in services.values() if is_pikfix_service(svc)
    }
    assert len(brokers) == 1 and None not in brokers
    broker = brokers.pop()
    assert broker.startswith("redis://") and "@redis:6379/" in broker
    databases = {
        environment(svc).get("PIKFIX_DATABASE_URL")
        for name, svc in services.items()
        if is_pikfix_service(svc) and name != "flower"
    }
    assert len(databases) == 1 and databases.pop().startswith("postgresql+psycopg://")
    assert "PIKFIX_DATABASE_URL" not in environment(services["flower"]), "flower needs the broker only"


# ---------------------------------------------------------------- commands and roles


def test_every_pikfix_command_parses(services: dict[str, dict[str, Any]]) -> None:
    pikfix_services = [name for name, svc in services.items() if is_pikfix_service(svc)]
    assert set(pikfix_services) == {"migrate", "api", "worker-gpu", "worker-cpu", "beat", "flower"}
    for name in pikfix_services:
        parse_pikfix(services[name]["command"])


def test_roles_consume_every_queue_with_one_beat(services: dict[str, dict[str, Any]]) -> None:
    migrate = parse_pikfix(services["migrate"]["command"])
    assert (migrate.command, migrate.db_command, migrate.revision) == ("db", "upgrade", "head")
    api = parse_pikfix(services["api"]["command"])
    assert (api.command, api.host, api.port) == ("api", "0.0.0.0", 8000)
    gpu = parse_pikfix(services["worker-gpu"]["command"])
    assert (gpu.command, gpu.queues, gpu.concurrency) == ("worker", "restore", 1)
    cpu = parse_pikfix(services["worker-cpu"]["command"])
    assert cpu.command == "worker" and set(cpu.queues.split(",")) == {"ingest", "maintenance"}
    assert role_of(services, "beat") == ["beat"], "exactly one beat"
    flower = parse_pikfix(services["flower"]["command"])
    assert (flower.command, flower.address, flower.port) == ("flower", "0.0.0.0", 5555)
    consumed = {
        q
        for name in role_of(services, "worker")
        for q in parse_pikfix(services[name]["command"]).queues.split(",")
    }
    assert consumed == {"restore", "ingest", "maintenance"}


def test_worker_healthchecks_ping_their_own_node_name(services: dict[str, dict[str, Any]]) -> None:
    """Celery names a worker by --hostname (ROLE@%h); the check must ping that name, on this container."""
    for name in role_of(services, "worker"):
        args = parse_pikfix(services[name]["command"])
        assert args.hostname and args.hostname.endswith("@%h"), f"{name}: set --hostname ROLE@%h"
        node = args.hostname.replace("%h", "$${HOSTNAME}")
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and f"inspect ping -d {node} " in test[1], (name, test)
        assert "-A workers.app" in test[1]


def test_schema_consumers_wait_for_migrations(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "worker-gpu", "worker-cpu", "beat"):
        deps = depends_on(services[name])
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("minio-init") == "service_completed_successfully", name
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    assert depends_on(services["minio-init"]) == {"minio": "service_healthy"}


# ---------------------------------------------------------------- reliability settings


def test_gpu_worker_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    (device,) = devices
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") == 1, "one GPU per worker process"
    assert environment(services["worker-gpu"])["PIKFIX_DEVICE"] == "cuda"
    for name, svc in services.items():
        if name != "worker-gpu":
            assert "deploy" not in svc, f"{name} should not reserve devices"


def test_redis_keeps_the_queue(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "redis-server"
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert "--requirepass" in pairs


def test_postgres_healthcheck_uses_pg_isready(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_worker_grace_period_outlasts_the_hard_time_limit(services: dict[str, dict[str, Any]]) -> None:
    """On SIGTERM Celery finishes the running task: compose must wait longer than any task may run."""
    hard_limit = Settings.model_fields["job_hard_time_limit_s"].default
    example = (REPO / ".env.example").read_text()
    if m := re.search(r"PIKFIX_JOB_HARD_TIME_LIMIT_S=(\d+)", example):
        hard_limit = max(hard_limit, int(m[1]))
    assert hard_limit >= 2100
    for name in role_of(services, "worker"):
        grace = duration_s(services[name]["stop_grace_period"])
        assert grace > hard_limit, f"{name}: stop_grace_period {grace}s <= hard time limit {hard_limit}s"


def test_minio_init_creates_a_versioned_bucket(services: dict[str, dict[str, Any]]) -> None:
    script = "\n".join(services["minio-init"]["command"])
    assert services["minio-init"]["entrypoint"][0] == "/bin/sh"
    for step in ("mc alias set local http://minio:9000", "mc mb --ignore-existing", "mc version enable"):
        assert step in script
    env = environment(services["minio-init"])
    assert resolve_defaults(env["S3_BUCKET"]) in resolve_defaults(
        environment(services["api"])["PIKFIX_STORAGE_URL"]
    )


def test_flower_has_auth_state_and_no_public_port(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert "PIKFIX_FLOWER_BASIC_AUTH" in environment(flower)
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"]), "Flower's /metrics needs no login"
    state = {target for source, target, _ in service_volumes(flower) if not source.startswith((".", "/"))}
    assert environment(flower)["PIKFIX_STATE_DIR"] in state, "Flower's history (flower.db) is kept in its state dir"


def test_beat_and_flower_keep_their_state_files_on_volumes(services: dict[str, dict[str, Any]]) -> None:
    """`pikfix beat` and `pikfix flower` write celerybeat-schedule and flower.db to PIKFIX_STATE_DIR."""
    for name in ("beat", "flower"):
        svc = services[name]
        assert "working_dir" not in svc, f"{name}: state goes to PIKFIX_STATE_DIR, not the working folder"
        state_dir = environment(svc).get("PIKFIX_STATE_DIR")
        named = {target for source, target, _ in service_volumes(svc) if not source.startswith((".", "/", "~"))}
        assert state_dir in named, f"{name}: PIKFIX_STATE_DIR={state_dir} is not a named volume"
    assert parse_pikfix(services["beat"]["command"]).schedule_file is None  # the state dir's default


def test_presigned_urls_name_an_endpoint_clients_can_reach(services: dict[str, dict[str, Any]]) -> None:
    """Clients outside the compose network cannot resolve `minio`: the API signs for a published address."""
    from urllib.parse import urlparse

    api = environment(services["api"])
    internal = urlparse(api["PIKFIX_S3_ENDPOINT_URL"])
    public = urlparse(api["PIKFIX_S3_PUBLIC_ENDPOINT_URL"])
    assert internal.hostname == "minio" and public.hostname not in (None, "minio")
    published = {tuple(int(n) for n in resolve_defaults(str(p)).split(":")[-2:]) for p in services["minio"]["ports"]}
    assert (public.port, internal.port) in published, "MinIO's S3 port must be published where the endpoint points"


def test_checkpoints_are_mounted_read_only_and_never_downloaded(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker-gpu", "worker-cpu"):
        assert ("./checkpoints", "/checkpoints", True) in service_volumes(services[name]), name
    examples = ENV_EXAMPLE.read_text()
    for var in ("PIKFIX_CHECKPOINT", "PIKFIX_BACKBONE_WEIGHTS", "PIKFIX_RETRIEVAL_WEIGHTS"):
        for value in re.findall(rf"{var}=(\S*)", examples):
            assert value.startswith(("/checkpoints/", "s3://")), f"{var}={value} must be mounted or on S3"
    for name, svc in services.items():
        text = " ".join(strings(svc.get("command", []))).lower()
        for word in ("pretrained", "hf_hub", "torch.hub", "wget", "curl"):
            assert word not in text, f"{name} command downloads at start: {word}"
