"""``python3 -m proxy``: the same as the ``tls13-proxy`` command."""

from proxy.cli import main

raise SystemExit(main())
