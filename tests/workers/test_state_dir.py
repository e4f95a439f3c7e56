"""``pikfix beat`` and ``pikfix flower`` keep their state files (``celerybeat-schedule``, ``flower.db``) in
``PIKFIX_STATE_DIR`` (default ``PIKFIX_DATA_DIR/state``), never in the folder they were started from:
real processes against a private redis-server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fixtures.processes import free_port, port_open, wait_until

CLI = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, broker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKFIX_")}
    env.update(PIKFIX_BROKER_URL=broker, PIKFIX_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO_ROOT), **extra)
    return env


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_beat_and_flower_write_their_state_to_the_state_dir_not_the_current_folder(
    tmp_path: Path, fresh_redis_server, process_group
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    state = tmp_path / "state"

    beat = process_group.start_process(
        [*CLI, "beat", "--loglevel", "INFO"], env=_env(tmp_path, fresh_redis_server.url, PIKFIX_STATE_DIR=str(state)),
        cwd=cwd, ready=lambda proc: "beat: Starting" in proc.log_text(), timeout=120, name="beat")
    assert wait_until(lambda: any(n.startswith("celerybeat-schedule") for n in _names(state)), timeout=30), (
        _names(state), beat.log_text(tail=2000))

    # Unset, the state folder is PIKFIX_DATA_DIR/state.
    port = free_port()
    flower = process_group.start_process(
        [*CLI, "flower", "--port", str(port)], env=_env(tmp_path, fresh_redis_server.url, FLOWER_UNAUTHENTICATED_API="1"),
        cwd=cwd, ready=lambda: port_open(port), timeout=60, name="flower")
    default_state = tmp_path / "data" / "state"  # persistent mode opens its history file at start
    assert wait_until(lambda: any(n.startswith("flower.db") for n in _names(default_state)), timeout=30), (
        _names(default_state), flower.log_text(tail=2000))

    assert _names(cwd) == [], f"state files in the current folder: {_names(cwd)}"
