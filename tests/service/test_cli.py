"""The command line exposes every entry point the docs, compose file and manifests name, each with its help."""

import subprocess
import sys

import click
import pytest

from service.cli import cli, main, parse_args


def _every_command(group: click.Group = cli, path: tuple[str, ...] = ()):
    """(argv prefix, command) for the root and each command and subcommand, so new ones are covered too."""
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _every_command(command, (*path, name))
        else:
            yield (*path, name), command


@pytest.mark.parametrize("path, command", [pytest.param(*c, id=" ".join(c[0]) or "pikfix") for c in _every_command()])
def test_every_command_has_help_listing_its_options(path, command, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main([*path, "--help"])
    assert exit.value.code == 0
    shown = capsys.readouterr().out
    assert f"Usage: pikfix {' '.join(path)}".rstrip() in shown
    params = command.get_params(click.Context(command))
    assert all(opt in shown for p in params if isinstance(p, click.Option) for opt in p.opts)


@pytest.mark.parametrize(
    "command, option",
    [("train", "--max-minutes"), ("eval", "--against"), ("combine", "--colorization"), ("fit-tone", "--knots")],
)
def test_model_commands_list_their_options(command: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert option in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, target",
    [
        (["restore", "samples", "--out", "out"], "workers.embedded:restore_command"),
        (["db", "upgrade"], "db.cli:upgrade_command"),
        (["tenants", "create", "acme"], "db.cli:tenants_create_command"),
        (["keys", "create", "acme"], "db.cli:keys_create_command"),
        (["keys", "list"], "db.cli:keys_list_command"),
        (["keys", "list", "--tenant", "acme"], "db.cli:keys_list_command"),
        (["keys", "revoke", "0b7c8a9e-0000-4000-8000-000000000000"], "db.cli:keys_revoke_command"),
        (["api", "--host", "0.0.0.0"], "api.cli:api_command"),
        (["worker", "--queues", "restore", "--concurrency", "1"], "workers.cli:worker_command"),
        (["beat"], "workers.cli:beat_command"),
        (["flower", "--port", "5555"], "workers.cli:flower_command"),
        (["train", "--data", "photos"], "pikfix.train:train_command"),
    ],
)
def test_subcommands_dispatch_to_their_handler(argv: list[str], target: str) -> None:
    args = parse_args(argv)
    assert args.handler.target == target and args.command == argv[0]


def test_options_keep_their_names_and_defaults() -> None:
    args = parse_args(["train", "--data", "p", "--scales", "1,0.5", "--no-progress", "--perceptual-stages", "2"])
    assert args.scales == (1.0, 0.5) and args.progress is False and args.perceptual_stages == 2
    assert parse_args(["train", "--data", "p"]).progress is True
    args = parse_args(["eval", "--photos", "p", "--references", "r", "--no-anchor-chroma"])
    assert args.anchor_chroma is False and args.ship_tolerance == 0.1 and args.against is None
    args = parse_args(["-v", "db", "upgrade"])
    assert (args.verbose, args.command, args.db_command, args.revision) == (True, "db", "upgrade", "head")
    assert parse_args(["restore", "a.png", "b.png", "--out", "o"]).paths == ("a.png", "b.png")


@pytest.mark.parametrize(
    "argv",
    [
        ["restore", "a.png", "--out", "o", "--reference", "r.jpg", "--references", "refs"],
        ["restore", "a.png"],
        ["train", "--data", "p", "--scales", "a,b"],
        ["train"],
        [],
        ["db"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parse_args(argv)
    assert exit.value.code == 2


def test_help_imports_neither_torch_nor_the_services() -> None:
    code = ("import sys\nfrom service.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'celery', 'sqlalchemy', 'db', 'workers', 'api', 'storage', 'service.settings'}"
            " & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines()[-1] == "[]"
