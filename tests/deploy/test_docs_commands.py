"""The worker commands README.md and docs/operations.md tell an operator to run are the ones the compose
file and the Kubernetes manifests run: same queues, same concurrency."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from service.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "docs" / "operations.md")
WORKER_COMMAND = re.compile(r"pikfix worker(?: [^\n`#|]*)?")


def _worker_roles(commands: list[list[str]]) -> dict[str, set[int]]:
    """{queues: {concurrency, ...}} of `pikfix worker` commands, parsed by the real CLI."""
    roles: dict[str, set[int]] = {}
    for argv in commands:
        args = build_parser().parse_args(argv[1:])
        roles.setdefault(",".join(sorted(args.queues.split(","))), set()).add(args.concurrency)
    return roles


def _documented(path: Path) -> list[list[str]]:
    return [shlex.split(m.group(0).strip()) for m in WORKER_COMMAND.finditer(path.read_text())]


def _deployed() -> list[list[str]]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    commands = [svc["command"] for svc in compose.values() if svc.get("command", [None])[:2] == ["pikfix", "worker"]]
    for name in ("worker-gpu.yaml", "worker-cpu.yaml"):
        for doc in yaml.safe_load_all((REPO / "infra" / "k8s" / name).read_text()):
            if doc and doc.get("kind") == "Deployment":
                commands += [c["args"] for c in doc["spec"]["template"]["spec"]["containers"]]
    return commands


def test_documented_worker_commands_match_what_is_deployed() -> None:
    deployed = _worker_roles(_deployed())
    assert set(deployed) == {"restore", "ingest,maintenance"}
    assert all(len(c) == 1 for c in deployed.values()), f"compose and k8s disagree: {deployed}"
    for path in DOCS:
        documented = _worker_roles(_documented(path))
        assert documented, f"{path.name} shows no worker command"
        for queues, concurrency in documented.items():
            assert queues in deployed, f"{path.name}: a worker on {queues}, which nothing deploys"
            assert concurrency == deployed[queues], (
                f"{path.name}: worker on {queues} with concurrency {sorted(concurrency)}; "
                f"compose and k8s run {sorted(deployed[queues])}"
            )
