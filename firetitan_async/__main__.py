"""``python -m firetitan_async`` runs the ``firetitan-async`` command line."""

from .cli._cli import main

raise SystemExit(main())
