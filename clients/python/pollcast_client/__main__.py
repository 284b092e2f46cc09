"""``python -m pollcast_client TASK…`` is ``pollcast-watch TASK…``."""

from pollcast_client.watch_cli import main

raise SystemExit(main())
