"""The ``pikfix`` command line.

Model commands (train, combine, eval, fit-tone) take their options from their own module; service commands
(restore, db, tenants, jobs, batches, keys, api, worker, beat, flower) run code from ``workers``, ``db`` and
``api``. Those modules are imported only when their command is used, so ``pikfix --help`` never pulls in
torch, Celery or the database. It lives in the service, not in the model library, because it names them all.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import click
from click import Argument, Option
from pikfix_client.cli import fetch_command, status_command, submit_command

_PARSE_ONLY = object()  # Context.obj of parse_args: commands return their options instead of running


def _load(target: str) -> Any:
    module_name, name = target.split(":")
    return getattr(importlib.import_module(module_name), name)


def _lazy(target: str) -> Callable[..., Any]:
    """Callback that imports ``module:function`` only when the command runs and passes it the options."""

    def run(**params: Any) -> Any:
        ctx = click.get_current_context()
        if ctx.obj is _PARSE_ONLY:  # subcommands inherit the root's obj
            return _parsed(ctx, handler=run, **params)
        logging.basicConfig(level=logging.DEBUG if ctx.find_root().params["verbose"] else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        # Alembic announces each of its plugins at INFO when imported, before any command could quiet it.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        if target.startswith("pikfix."):  # model commands: s3:// URIs with the service's endpoint and keys
            from pikfix.uri import configure_s3
            from service.settings import get_settings

            configure_s3(**get_settings().s3_client_options)
        return _load(target)(SimpleNamespace(**params))

    run.target = target  # type: ignore[attr-defined]
    return run


def _parsed(ctx: click.Context, **params: Any) -> SimpleNamespace:
    """What argparse returned: the options, ``command`` and ``db_command`` (...) naming the subcommands."""
    names = {}
    while ctx.parent is not None:
        ctx = ctx.parent
        names[f"{ctx.info_name}_command" if ctx.parent else "command"] = ctx.invoked_subcommand
    return SimpleNamespace(**ctx.params, **names, **params)


class _ModelCommand(click.Command):
    """Its options come from ``options()`` in the handler's module, imported (with torch) only when used."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self.params:
            self.params = _load(self.callback.target.split(":")[0] + ":options")()  # type: ignore[union-attr]
        return super().get_params(ctx)


def _command(name: str, target: str, help: str, *params: click.Parameter, more: str = "") -> click.Command:
    """``short_help``: click would otherwise cut the command list's line at its first sentence."""
    return click.Command(name, params=list(params), callback=_lazy(target), short_help=help,
                         help=f"{help}\n\n{more}" if more else help)


def _model(name: str, target: str, help: str) -> click.Command:
    return _ModelCommand(name, callback=_lazy(target), short_help=help, help=help)


def _group(name: str, help: str, *commands: click.Command) -> click.Group:
    return click.Group(name, commands=commands, short_help=help, help=help)


def _one_reference(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--reference and --references exclude each other."""
    other = "references" if param.name == "reference" else "reference"
    if value is not None and ctx.params.get(other) is not None:
        raise click.UsageError("--reference and --references exclude each other", ctx)
    return value


cli = click.Group(
    "pikfix",
    help=__doc__.splitlines()[0],
    context_settings={"help_option_names": ["-h", "--help"]},
    params=[Option(["-v", "--verbose"], is_flag=True)],
    commands=[
        _command("restore", "workers.embedded:restore_command",
                 "restore and colourize photos locally (embedded mode, no servers)",
                 Argument(["paths"], nargs=-1, required=True),
                 Option(["--out"], required=True, help="output folder for restored photos and the report"),
                 Option(["--reference"], callback=_one_reference, help="one colour reference photo for every input"),
                 Option(["--references"], callback=_one_reference,
                        help="folder of colour references; the best one is retrieved per photo"),
                 Option(["--format"], type=click.Choice(["png", "jpeg", "tiff16", "jp2"]), default="png"),
                 Option(["--no-colour", "no_colour"], is_flag=True,
                        help="restore only: keep the photos grey (16-bit where the input was), no reference"),
                 Option(["--checkpoint"], help="model checkpoint (path or s3:// URI); default: the shipped lite model"),
                 Option(["--device"], help="auto, cpu, cuda"),
                 Option(["--data-dir"], help="where the embedded database and objects live"),
                 more="PATHS: photos or folders of photos."),
        _model("train", "pikfix.train:train_command", "train Pik-Fix on a folder of colour photos"),
        _model("combine", "pikfix.combine:combine_command",
               "join the restoration and colorization parts of two checkpoints"),
        _model("eval", "pikfix.evaluate:eval_command", "evaluate a checkpoint against grey and Reinhard baselines"),
        _model("fit-tone", "pikfix.tonefit:fit_tone_command", "fit the global tone head of a checkpoint on whole photos"),
        _group("db", "database schema (Alembic migrations)",
               _command("upgrade", "db.cli:upgrade_command", "migrate the schema up (default: head)",
                        Argument(["revision"], required=False, default="head")),
               _command("downgrade", "db.cli:downgrade_command", "migrate the schema down", Argument(["revision"]))),
        _group("tenants", "manage tenants (bureaus)",
               _command("create", "db.cli:tenants_create_command", "create a tenant", Argument(["name"])),
               _command("list", "db.cli:tenants_list_command", "list tenants")),
        _group("jobs", "operate on jobs",
               _command("resend", "workers.cli:resend_command",
                        "send a queued or running job (its worker died) to the workers again", Argument(["job_id"]),
                        Option(["--force"], is_flag=True, help="even though its worker still reports progress"))),
        _group("batches", "operate on batches",
               _command("resend-stuck", "workers.cli:resend_stuck_command",
                        "send every stuck job of a batch (worker died, task lost) again", Argument(["batch_id"]),
                        Option(["--silent-for"], type=float, metavar="SECONDS",
                               help="how long a job must have been silent (default: the workers' heartbeat timeout)"))),
        _group("keys", "manage API keys",
               _command("create", "db.cli:keys_create_command", "create an API key for a tenant; printed once",
                        Argument(["tenant"]), more="TENANT: tenant name or id."),
               _command("list", "db.cli:keys_list_command", "list API keys (ids and public prefixes, never the secrets)",
                        Option(["--tenant"], help="only this tenant's keys (name or id)")),
               _command("revoke", "db.cli:keys_revoke_command",
                        "revoke an API key: the API answers 401 to it from then on", Argument(["key_id"], metavar="KEY_ID"),
                        more="KEY_ID: the key's id, or its prefix as `keys list` shows it.")),
        _command("api", "api.cli:api_command", "serve the HTTP API (uvicorn)",
                 Option(["--host"], default="127.0.0.1"), Option(["--port"], type=int, default=8000),
                 Option(["--workers"], type=int, help="uvicorn worker processes (default: 2)")),
        _command("worker", "workers.cli:worker_command", "run a Celery worker",
                 Option(["--queues"], default="restore,ingest,maintenance"), Option(["--concurrency"], type=int, default=1),
                 Option(["--hostname"]), Option(["--loglevel"], default="INFO")),
        _command("beat", "workers.cli:beat_command", "run the Celery beat scheduler (exactly one per deployment)",
                 Option(["--loglevel"], default="INFO"),
                 Option(["--schedule-file"], help="default: PIKFIX_STATE_DIR/celerybeat-schedule")),
        _command("flower", "workers.cli:flower_command",
                 "run Flower against the broker (basic auth from PIKFIX_FLOWER_BASIC_AUTH, history in PIKFIX_STATE_DIR)",
                 Option(["--port"], type=int, default=5555), Option(["--address"], default="127.0.0.1")),
    ],
)

# The bureau client's commands (a distribution of its own, without torch: client/).
for _client_command in (submit_command, status_command, fetch_command):
    cli.add_command(_client_command)


def _run(argv: Sequence[str], obj: object = None) -> Any:
    """Run like argparse did: usage errors print and exit 2, --help exits 0, a command's result is returned."""
    try:
        with cli.make_context("pikfix", list(argv), obj=obj) as ctx:
            return cli.invoke(ctx)
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None


def parse_args(argv: Sequence[str]) -> SimpleNamespace:
    """The options of a command line without running it, plus ``command`` and ``handler`` (for tests)."""
    return _run(argv, obj=_PARSE_ONLY)


def build_parser() -> SimpleNamespace:
    """The deployment tests check commands with ``build_parser().parse_args(argv)``."""
    return SimpleNamespace(parse_args=parse_args)


def main(argv: Sequence[str] | None = None) -> int:
    return int(_run(sys.argv[1:] if argv is None else argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
