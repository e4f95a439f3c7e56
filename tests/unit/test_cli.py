"""The command line exposes every entry point the docs, compose file and manifests name."""

import pytest

from pikfix.cli import build_parser


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
    ],
)
def test_subcommands_dispatch_to_their_handler(argv: list[str], target: str) -> None:
    args = build_parser().parse_args(argv)
    assert args.handler.target == target


def test_reference_options_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["restore", "a.png", "--out", "o", "--reference", "r.jpg", "--references", "refs"])
