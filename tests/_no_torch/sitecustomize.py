"""Keeps torch out of the test suite's subprocesses (see tests/conftest.py): ``import torch``
fails and ``importlib.util.find_spec("torch")`` is None, as if torch were not installed, which
tinker's optional import and transformers' availability check both take as "no torch"."""

import sys

sys.modules["torch"] = None  # type: ignore[assignment]
