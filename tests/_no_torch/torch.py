"""Stands in for torch in the test suite's subprocesses (see tests/conftest.py): importing it
fails as if torch were not installed, which tinker's optional ``import torch`` handles."""

raise ImportError("torch is kept out of the test suite's subprocesses (tests/conftest.py)")
