"""The ``firetitan-async`` command line: one subcommand per module ``_cmd_<name>.py``.

Owns argument parsing (:mod:`._cli`), the subcommands (``serve``, ``demo``, ``wait``,
``checkpoints``, ``jobs``) and the demo they run (:mod:`._demo`).

May import anything in the package; nothing in the package imports it (``__main__`` aside).

Example::

    $ firetitan-async serve --port 8000
"""

from ._cli import main

__all__ = ["main"]
