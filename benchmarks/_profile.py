"""Profiling one worker run: pyinstrument's call tree, or cProfile's flat self-time table.

pyinstrument is installed on demand (``pip install pyinstrument``); cProfile is stdlib.

Example::

    python benchmarks/run.py --worker throughput --client ours --url URL --profile prof.txt
    python benchmarks/run.py --worker throughput --client ours --url URL --profile flat.cprof
"""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["profiled"]


@contextmanager
def profiled(path: str) -> Iterator[None]:
    """Profile the block and write a text report to ``path``.

    A path ending in ``.cprof`` gets cProfile's top functions by self time (and by cumulative
    time); any other path gets pyinstrument's call tree (plus an HTML twin beside it).
    """
    if path.endswith(".cprof"):
        with _cprofiled(path):
            yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(path).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        Path(path).with_suffix(".html").write_text(profiler.output_html())


@contextmanager
def _cprofiled(path: str) -> Iterator[None]:
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(Path(path).with_suffix(".pstats"))  # raw, for pstats or snakeviz
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        Path(path).write_text(out.getvalue())
