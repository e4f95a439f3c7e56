"""``python -m pikfix_client``: the same as the ``pikfix-client`` command."""

from pikfix_client.cli import main

raise SystemExit(main())
