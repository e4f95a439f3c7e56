"""``pikfix-client submit | status | fetch``: the library's three calls as commands.

The commands are plain click commands, so ``pikfix`` mounts the very same ones. Every failure ends
with one line saying what went wrong and a non-zero exit status; progress goes to stderr, results to
stdout.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pikfix_client import __version__
from pikfix_client.client import OUTPUT_FORMATS, REFERENCE_MODES, Client
from pikfix_client.errors import ClientError
from pikfix_client.status import render
from pikfix_client.upload import MiB

EXIT_INCOMPLETE = 3  # fetch: the batch is still running, results so far were fetched but not bagged


def _api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--key", envvar="PIKFIX_API_KEY", required=True, show_envvar=True,
                           help="the tenant's API key")(command)
    return click.option("--api", "api_url", envvar="PIKFIX_API_URL", required=True, show_envvar=True,
                        metavar="URL", help="the pikfix API, e.g. https://pikfix.example.org")(command)


def _reporting(command: Callable[..., Any]) -> Callable[..., Any]:
    """Client errors become one clear line and exit 1; Ctrl-C says how to resume."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        _log_to_stderr(kwargs.pop("verbose", False))
        try:
            return command(*args, **kwargs)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to carry on where it stopped", err=True)
            sys.exit(130)

    return click.option("-v", "--verbose", is_flag=True, help="say more (each retry too)")(run)


def _log_to_stderr(verbose: bool) -> None:
    logger = logging.getLogger("pikfix_client")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


@click.command("submit")
@click.argument("folder", type=click.Path(path_type=Path))
@_api_options
@click.option("--references", type=click.Path(path_type=Path), help="folder of colour references, uploaded first")
@click.option("--batch-name", help="default: the folder's name")
@click.option("--output-format", type=click.Choice(OUTPUT_FORMATS), default="png", show_default=True)
@click.option("--reference-mode", type=click.Choice(REFERENCE_MODES), default="auto", show_default=True)
@click.option("--reference-id", help="the reference for --reference-mode manual")
@click.option("--working-size", type=click.IntRange(32, 4096), help="colourization resolution (short side)")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True, help="uploads in flight")
@click.option("--state", type=click.Path(path_type=Path), help="state file; default FOLDER/.pikfix-submit.sqlite")
@click.option("--multipart-threshold", type=click.IntRange(5, None), default=64, show_default=True, metavar="MIB",
              help="files this large (MiB) go up in parts")
@click.option("--part-size", type=click.IntRange(5, 5120), default=16, show_default=True, metavar="MIB")
@_reporting
def submit_command(folder: Path, api_url: str, key: str, references: Path | None, batch_name: str | None,
                   output_format: str, reference_mode: str, reference_id: str | None, working_size: int | None,
                   concurrency: int, state: Path | None, multipart_threshold: int, part_size: int) -> None:
    """Upload the photos under FOLDER into one batch and submit it; run again to resume."""
    with Client(api_url, key) as client:
        result = client.submit(
            folder, references=references, batch_name=batch_name, output_format=output_format,
            reference_mode=reference_mode, reference_id=reference_id, working_size=working_size,
            concurrency=concurrency, state=state, multipart_threshold=multipart_threshold * MiB,
            part_size=min(part_size, multipart_threshold) * MiB, progress=True,
        )
    if result.already_submitted:
        click.echo(f"batch {result.batch_id} was already submitted; nothing more to upload", err=True)
    else:
        rate = result.bytes_uploaded / MiB / result.seconds if result.seconds else 0.0
        click.echo(f"submitted {result.files} file(s) ({result.uploaded} uploaded now, {rate:.1f} MiB/s), "
                   f"{result.registered} job(s) created, {len(result.rejected)} refused, "
                   f"{len(result.skipped)} skipped", err=True)
    click.echo(result.batch_id)


@click.command("status")
@click.argument("batch_id", metavar="BATCH")
@_api_options
@click.option("--watch", is_flag=True, help="redraw until the batch has finished")
@click.option("--interval", type=click.FloatRange(1, 3600), default=5.0, show_default=True, metavar="SECONDS")
@_reporting
def status_command(batch_id: str, api_url: str, key: str, watch: bool, interval: float) -> None:
    """Counts, progress, rate, ETA and failures of BATCH."""
    with Client(api_url, key) as client:
        while True:
            status = client.status(batch_id)
            if watch and sys.stdout.isatty():
                click.clear()
            click.echo(render(status))
            if not watch or status.finished:
                return
            time.sleep(interval)
            if not sys.stdout.isatty():
                click.echo("")


@click.command("fetch")
@click.argument("batch_id", metavar="BATCH")
@_api_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the bag's folder (empty, or an "
              "earlier fetch of this batch)")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True, help="downloads in flight")
@click.option("--wait", is_flag=True, help="wait for the batch to finish, then fetch and bag")
@_reporting
def fetch_command(batch_id: str, api_url: str, key: str, out: Path, concurrency: int, wait: bool) -> None:
    """Download BATCH's results mirroring the submitted folder, verify them and write a BagIt bag."""
    with Client(api_url, key) as client:
        result = client.fetch(batch_id, out, concurrency=concurrency, wait=wait, progress=True)
    click.echo(f"{result.downloaded} result(s) downloaded, {result.already_present} already present, "
               f"{result.failed_jobs} job(s) failed", err=True)
    if not result.bagged:
        click.echo(f"batch {batch_id} is still running: not bagged yet; run fetch again (or with --wait)", err=True)
        sys.exit(EXIT_INCOMPLETE)
    click.echo(str(result.out))


cli = click.Group("pikfix-client", commands=[submit_command, status_command, fetch_command],
                  help="Submit folders of scans to pikfix, follow batches, fetch results as BagIt bags.",
                  context_settings={"help_option_names": ["-h", "--help"]})
cli = click.version_option(__version__, prog_name="pikfix-client")(cli)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (click exits on its own otherwise)."""
    try:
        cli.main(args=argv, prog_name="pikfix-client")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
