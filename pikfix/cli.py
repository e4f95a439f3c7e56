"""The ``pikfix`` command line.

Model-only commands (train, eval) live in the library; service commands (restore, db, tenants,
keys, api, worker, beat, flower) are imported lazily from ``workers``, ``db`` and ``api`` when
invoked, so importing the library never pulls in Celery or the database.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence


def _lazy(target: str) -> Callable[[argparse.Namespace], int | None]:
    """Handler that imports ``module:function`` only when the subcommand runs."""

    def run(args: argparse.Namespace) -> int | None:
        module_name, func_name = target.split(":")
        return getattr(importlib.import_module(module_name), func_name)(args)

    run.target = target  # type: ignore[attr-defined]
    return run


def _add_restore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore and colourize photos locally (embedded mode, no servers)")
    p.add_argument("paths", nargs="+", help="photos or folders of photos")
    p.add_argument("--out", required=True, help="output folder for restored photos and the report")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--reference", help="one colour reference photo for every input")
    group.add_argument("--references", help="folder of colour references; the best one is retrieved per photo")
    p.add_argument("--format", choices=["png", "jpeg", "tiff16"], default="png")
    p.add_argument("--checkpoint", help="model checkpoint (path or s3:// URI); default: the shipped lite model")
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument("--data-dir", default=None, help="where the embedded database and objects live")
    p.set_defaults(handler=_lazy("workers.embedded:restore_command"))


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train Pik-Fix on a folder of colour photos")
    p.set_defaults(handler=_lazy("pikfix.train:train_command"), configure=_lazy("pikfix.train:add_arguments"))
    p = sub.add_parser("combine", help="join the restoration and colorization parts of two checkpoints")
    p.set_defaults(handler=_lazy("pikfix.combine:combine_command"), configure=_lazy("pikfix.combine:add_arguments"))
    p = sub.add_parser("eval", help="evaluate a checkpoint against grey and Reinhard baselines")
    p.set_defaults(handler=_lazy("pikfix.evaluate:eval_command"), configure=_lazy("pikfix.evaluate:add_arguments"))
    p = sub.add_parser("fit-tone", help="fit the global tone head of a checkpoint on whole photos")
    p.set_defaults(handler=_lazy("pikfix.tonefit:fit_tone_command"), configure=_lazy("pikfix.tonefit:add_arguments"))


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database schema (Alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    p = db_sub.add_parser("upgrade", help="migrate the schema up (default: head)")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(handler=_lazy("db.cli:upgrade_command"))
    p = db_sub.add_parser("downgrade", help="migrate the schema down")
    p.add_argument("revision")
    p.set_defaults(handler=_lazy("db.cli:downgrade_command"))

    tenants = sub.add_parser("tenants", help="manage tenants (bureaus)")
    t_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    p = t_sub.add_parser("create", help="create a tenant")
    p.add_argument("name")
    p.set_defaults(handler=_lazy("db.cli:tenants_create_command"))
    p = t_sub.add_parser("list", help="list tenants")
    p.set_defaults(handler=_lazy("db.cli:tenants_list_command"))

    jobs = sub.add_parser("jobs", help="operate on jobs")
    j_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = j_sub.add_parser("resend", help="send a queued or running job (its worker died) to the workers again")
    p.add_argument("job_id")
    p.add_argument("--force", action="store_true", help="even though its worker still reports progress")
    p.set_defaults(handler=_lazy("workers.cli:resend_command"))

    batches = sub.add_parser("batches", help="operate on batches")
    b_sub = batches.add_subparsers(dest="batches_command", required=True)
    p = b_sub.add_parser("resend-stuck", help="send every stuck job of a batch (worker died, task lost) again")
    p.add_argument("batch_id")
    p.add_argument("--silent-for", type=float, default=None, metavar="SECONDS",
                   help="how long a job must have been silent (default: the workers' heartbeat timeout)")
    p.set_defaults(handler=_lazy("workers.cli:resend_stuck_command"))

    keys = sub.add_parser("keys", help="manage API keys")
    k_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = k_sub.add_parser("create", help="create an API key for a tenant; printed once")
    p.add_argument("tenant", help="tenant name or id")
    p.set_defaults(handler=_lazy("db.cli:keys_create_command"))
    p = k_sub.add_parser("list", help="list API keys (ids and public prefixes, never the secrets)")
    p.add_argument("--tenant", default=None, help="only this tenant's keys (name or id)")
    p.set_defaults(handler=_lazy("db.cli:keys_list_command"))
    p = k_sub.add_parser("revoke", help="revoke an API key: the API answers 401 to it from then on")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id, or its prefix as `keys list` shows it")
    p.set_defaults(handler=_lazy("db.cli:keys_revoke_command"))

    p = sub.add_parser("api", help="serve the HTTP API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes (default: 2)")
    p.set_defaults(handler=_lazy("api.cli:api_command"))

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("--queues", default="restore,ingest,maintenance")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--hostname", default=None)
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(handler=_lazy("workers.cli:worker_command"))

    p = sub.add_parser("beat", help="run the Celery beat scheduler (exactly one per deployment)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--schedule-file", default=None, help="default: PIKFIX_STATE_DIR/celerybeat-schedule")
    p.set_defaults(handler=_lazy("workers.cli:beat_command"))

    p = sub.add_parser(
        "flower", help="run Flower against the broker (basic auth from PIKFIX_FLOWER_BASIC_AUTH, history in PIKFIX_STATE_DIR)"
    )
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--address", default="127.0.0.1")
    p.set_defaults(handler=_lazy("workers.cli:flower_command"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pikfix", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_restore(sub)
    _add_model_commands(sub)
    _add_service_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Subcommands with many options (train, eval) add them from their own module.
    args, _ = parser.parse_known_args(argv)
    configure = getattr(args, "configure", None)
    if configure is not None:
        sub_parser = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        configure(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Alembic announces each of its plugins at INFO when imported, before any command could quiet it.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
