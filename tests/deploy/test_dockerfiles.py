"""The Dockerfiles are checked by parsing them: no Docker engine or network is needed.

A small line parser (continuations joined, comments dropped) is enough for what matters to users who
build these images on their own machines: pinned bases, exec-form commands that the pikfix CLI accepts,
a non-root user, a health check, no download at start, and a GPU image that keeps its base's torch.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from service.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
API = DOCKER / "Dockerfile.api"
GPU = DOCKER / "Dockerfile.gpu"
TORCH_CONSTRAINTS = "/opt/torch-constraints.txt"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, with `\\` continuations joined and comment lines dropped."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not parts):
            continue  # comments (also inside a continuation) and blank lines between instructions
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, value = " ".join(p for p in parts if p).partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
        parts = []
    assert not parts, f"{path.name}: the last instruction ends with a line continuation"
    return out


def values(path: Path, keyword: str) -> list[str]:
    return [i.value for i in parse_dockerfile(path) if i.keyword == keyword]


def build_args(path: Path) -> dict[str, str]:
    """ARG defaults (name=value) anywhere in the file."""
    args = {}
    for value in values(path, "ARG"):
        name, sep, default = value.partition("=")
        if sep:
            args[name] = default
    return args


def base_images(path: Path) -> list[str]:
    """FROM images with ${ARG} defaults substituted and any `AS stage` dropped."""
    args = build_args(path)
    images = []
    for value in values(path, "FROM"):
        image = value.split()[0]
        image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args[m[1]], image)
        images.append(image)
    return images


def exec_form(path: Path, keyword: str) -> list[str]:
    (value,) = values(path, keyword)
    parsed = json.loads(value)  # shell form would not be JSON: signals would go to /bin/sh, not Celery
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def pikfix_cmd(path: Path):
    cmd = exec_form(path, "CMD")
    assert cmd[0] == "pikfix", cmd
    try:
        return build_parser().parse_args(cmd[1:])
    except SystemExit as exc:
        pytest.fail(f"{path.name}: CMD {cmd} is not a valid pikfix command (exit {exc.code})")


def run_commands(path: Path) -> list[str]:
    """RUN shell commands without their leading BuildKit flags (--mount=..., --network=...)."""
    return [re.sub(r"^(--[a-z-]+=\S+\s+)+", "", value) for value in values(path, "RUN")]


def pip_installs(path: Path) -> list[str]:
    """Every `pip install ...` command inside the RUN instructions."""
    return [
        segment.strip()
        for command in run_commands(path)
        for segment in command.split("&&")
        if re.search(r"\bpip install\b", segment)
    ]


def project_requirement(name: str) -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    return req


BOTH = pytest.mark.parametrize("path", [API, GPU], ids=["api", "gpu"])


# ---------------------------------------------------------------- parser


def test_parser_joins_continuations_and_skips_comments(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "# syntax=docker/dockerfile:1\nFROM a:1\n\nRUN one \\\n    # note\n    && two\nUSER 1\n"
    )
    parsed = parse_dockerfile(dockerfile)
    assert [(i.keyword, i.value, i.line) for i in parsed] == [
        ("FROM", "a:1", 2),
        ("RUN", "one && two", 4),
        ("USER", "1", 7),
    ]


# ---------------------------------------------------------------- base images


@BOTH
def test_base_images_are_pinned_by_tag(path: Path) -> None:
    images = base_images(path)
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{path.name}: {image} has no tag"
        assert tag != "latest" and not tag.startswith("latest-"), f"{path.name}: {image} is not pinned"


def test_gpu_base_is_a_pytorch_cuda_runtime_satisfying_the_project() -> None:
    (image,) = base_images(GPU)
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", image)
    assert m, f"expected a pytorch/pytorch CUDA runtime image, got {image}"
    assert Version(m[1]) in project_requirement("torch").specifier


def test_cpu_and_gpu_images_run_the_same_torch() -> None:
    """Reference descriptors are computed on the CPU worker and used on the GPU: same torch release."""
    args = build_args(API)
    (gpu_image,) = base_images(GPU)
    gpu_torch = re.search(r":(\d+\.\d+\.\d+)-", gpu_image)[1]
    assert args["TORCH_VERSION"] == gpu_torch
    assert Version(args["TORCH_VERSION"]) in project_requirement("torch").specifier
    assert Version(args["TORCHVISION_VERSION"]) in project_requirement("torchvision").specifier
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu"), "the CPU image takes CPU wheels of torch"


# ---------------------------------------------------------------- installing the project


def test_gpu_image_never_replaces_the_base_torch() -> None:
    runs = run_commands(GPU)
    first_pip = next(i for i, run in enumerate(runs) if "pip install" in run)
    assert any("import torch, torchvision" in run and TORCH_CONSTRAINTS in run for run in runs[:first_pip]), (
        "record the base image's torch as constraints before any pip install"
    )
    installs = pip_installs(GPU)
    assert installs
    for install in installs:
        assert "--index-url" not in install and "--extra-index-url" not in install, install
        assert f"-c {TORCH_CONSTRAINTS}" in install or "--no-deps" in install, install
        assert not re.search(r"\btorch(vision)?([=<>~ ]|$)", install.replace(TORCH_CONSTRAINTS, "")), install


def test_cpu_image_pins_torch_for_every_later_install() -> None:
    installs = pip_installs(API)
    assert "--index-url ${TORCH_INDEX_URL}" in installs[0] and "torch==${TORCH_VERSION}" in installs[0]
    for install in installs[1:]:
        assert f"-c {TORCH_CONSTRAINTS}" in install or "--no-deps" in install, install


@BOTH
def test_dependencies_come_from_pyproject_and_the_project_installs_last(path: Path) -> None:
    installs = pip_installs(path)
    assert any("-r /tmp/requirements.txt" in i for i in installs)
    assert any("tomllib" in run and "pyproject.toml" in run for run in run_commands(path))
    assert installs[-1].startswith("pip install --no-deps"), "the project itself adds no dependency"


# ---------------------------------------------------------------- runtime


@BOTH
def test_entrypoint_and_cmd_are_exec_form_pikfix_subcommands(path: Path) -> None:
    assert exec_form(path, "ENTRYPOINT") == ["tini", "--"], "tini forwards SIGTERM to the worker"
    args = pikfix_cmd(path)
    if path is API:
        assert (args.command, args.host, args.port) == ("api", "0.0.0.0", 8000)
    else:
        assert (args.command, args.queues, args.concurrency) == ("worker", "restore", 1)


@BOTH
def test_runs_as_the_non_root_user_it_creates(path: Path) -> None:
    instructions = parse_dockerfile(path)
    users = [i for i in instructions if i.keyword == "USER"]
    assert users, f"{path.name} runs as root"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes' runAsNonRoot can check it"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    created = " ".join(run_commands(path))
    assert re.search(rf"useradd .*--uid {uid}\b", created), f"USER {uid} is never created"
    assert users[-1].line > max(i.line for i in instructions if i.keyword == "RUN"), "drop root last"


@BOTH
def test_healthcheck_is_present(path: Path) -> None:
    (check,) = values(path, "HEALTHCHECK")
    assert check.upper() != "NONE"
    options, _, command = check.partition("CMD ")
    assert command.strip()
    assert "--interval=" in options and "--timeout=" in options
    if path is API:
        assert "http://127.0.0.1:8000/healthz" in command
    else:
        node = pikfix_cmd(path).hostname
        assert node and node.endswith("@%h")
        assert f'inspect ping -d "{node.replace("%h", "${HOSTNAME}")}"' in command


@BOTH
def test_nothing_is_downloaded_at_start(path: Path) -> None:
    text = path.read_text().lower()
    for word in ("pretrained", "torch.hub", "hf_hub", "huggingface", "from_pretrained"):
        assert word not in text, f"{path.name} mentions {word}"
    for keyword in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
        for value in values(path, keyword):
            assert not re.search(r"\b(curl|wget)\b", value), f"{keyword} downloads: {value}"
            assert not re.search(r"https?://(?!127\.0\.0\.1)", value), f"{keyword} reaches out: {value}"
    for env in values(path, "ENV"):
        assert not re.search(r"PIKFIX_(CHECKPOINT|BACKBONE_WEIGHTS|RETRIEVAL_WEIGHTS)=https?:", env)


def test_cpu_image_prepares_the_volume_mount_points_compose_uses() -> None:
    """Docker copies an image folder's owner into a fresh named volume: create them as the app user."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    runs = " ".join(run_commands(API))
    assert "chown -R 10001:10001 /var/lib/pikfix" in runs
    for name, svc in compose["services"].items():
        if "pikfix-api" not in svc.get("image", ""):
            continue
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if target.startswith("/var/lib/pikfix/"):
                assert target in runs, f"{name}: mount point {target} is not created in the image"
            elif source.startswith("./"):
                assert target in runs, f"{name}: bind-mount target {target} is not created in the image"


def test_celery_app_named_by_the_health_checks_exists() -> None:
    module = importlib.import_module("workers.app")
    assert type(module.app).__name__ == "Celery"


# ---------------------------------------------------------------- build context


def _excluded(path: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough: a pattern excludes a path or any folder above it; the last match wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        pattern = raw.removeprefix("!").strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch(part, pattern.removeprefix("**/")) for part in parts)
        else:
            hit = any(fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            excluded = not raw.startswith("!")
    return excluded


def test_dockerignore_keeps_dev_files_and_secrets_out_but_the_package_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".venv/bin/python", "tests/deploy/test_k8s.py", ".git/HEAD", ".env", "checkpoints/x.pt",
                 "pikfix/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v"):  # fmt: skip
        assert _excluded(path, patterns), f"{path} would be sent to the build"
    for path in ("pyproject.toml", "README.md", "service/cli.py", "storage/s3.py", "pikfix/weights/lite.pt",
                 "workers/app.py", "api/app.py", "db/alembic.ini", "db/migrations/env.py"):  # fmt: skip
        assert not _excluded(path, patterns), f"{path} is needed by `pip install .` but excluded"
