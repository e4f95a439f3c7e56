"""``pikfix worker``, ``pikfix beat`` and ``pikfix flower``: thin wrappers over Celery's own commands."""

from __future__ import annotations

import argparse
import socket

from pikfix.settings import get_settings


def worker_command(args: argparse.Namespace) -> int:
    from workers.app import app

    if get_settings().eager:
        raise SystemExit("error: PIKFIX_BROKER_URL is not set; a worker needs a broker (e.g. redis://host:6379/0)")
    hostname = args.hostname or f"{args.queues.replace(',', '+')}@{socket.gethostname()}"
    argv = ["worker", "-Q", args.queues, "-c", str(args.concurrency), "-n", hostname, "--loglevel", args.loglevel, "-E"]
    app.worker_main(argv)
    return 0


def beat_command(args: argparse.Namespace) -> int:
    from workers.app import app

    argv = ["beat", "--loglevel", args.loglevel]
    if args.schedule_file:
        argv += ["--schedule", args.schedule_file]
    app.start(argv)
    return 0


def flower_command(args: argparse.Namespace) -> int:
    from workers.app import app

    settings = get_settings()
    argv = ["flower", f"--port={args.port}", f"--address={args.address}", "--persistent=True", "--db=flower.db"]
    if settings.flower_basic_auth:
        argv.append(f"--basic-auth={settings.flower_basic_auth}")
    app.start(argv)
    return 0
