"""The documentation: every Python block of the site's pages and of the README runs against the
local trainer, the README stays short and its commands true, and the site's config names every
page.

A block that cannot run here (it needs a Fireworks account, or it is a fragment of a larger
program) is marked on the line before its fence::

    <!-- docs-test: skip (needs a Fireworks account) -->

and is still compiled, so its syntax is checked. An unmarked block that fails fails the test.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import inspect
import re
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
UNAWAITED = re.compile(r"coroutine .* was never awaited")  # the RuntimeWarning's text


@attrs.frozen
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> Iterator[Block]:
    """The ```python blocks of a Markdown file, with their skip marks."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None or not fence.group("lang"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group("lang") == "python":
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = SKIP.search(before)
            code = "\n".join(lines[i + 1 : end]) + "\n"
            yield Block(path, i + 1, code, mark.group("reason") if mark else None)
        i = end + 1


PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [b for page in (*PAGES, README) for b in blocks_of(page)]


def run_block(block: Block) -> None:
    """Run one block as a script (top-level ``await`` under ``asyncio.run``); raise
    ``AssertionError`` naming the block if it fails or leaves a coroutine un-awaited."""
    code = compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    # A coroutine built and never awaited (`main()` without `anyio.run`, a forgotten `await`)
    # warns from its finaliser, where raising is impossible: the block looked fine and did
    # nothing. Those warnings are caught here; every other one goes on as it would.
    unawaited: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=UNAWAITED.pattern, category=RuntimeWarning)
        passed_on = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if UNAWAITED.search(str(message)):
                unawaited.append(str(message))
            else:
                passed_on(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            if code.co_flags & inspect.CO_COROUTINE:  # top-level await: exec would not run it
                asyncio.run(eval(code, {"__name__": "__main__"}))
            else:
                exec(code, {"__name__": "__main__"})
        except BaseException as exc:
            raise AssertionError(
                f"{block.id}: this block does not run ({type(exc).__name__}: {exc}). Fix it, or, "
                "if it cannot run against the local trainer, put `<!-- docs-test: skip (why) -->` "
                "on the line before its fence."
            ) from exc
        gc.collect()  # a coroutine dropped in a reference cycle warns only when collected
    assert not unawaited, (
        f"{block.id}: a coroutine was never awaited, so part of this block never ran: "
        f"{'; '.join(unawaited)}"
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_code_block(block: Block, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Fragments may use top-level await; every block must at least compile.
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if block.skip is not None:
        pytest.skip(block.skip)
    for var in ("FIREWORKS_API_KEY", "TINKER_API_KEY", "FIREWORKS_BASE_URL", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.chdir(tmp_path)  # what a block writes (data files, a run dir) stays out of the repo
    run_block(block)


def test_the_harness_runs_top_level_await_and_refuses_unawaited_coroutines(
    tmp_path: Path,
) -> None:
    """A block with top-level ``await`` really runs; one whose coroutine nobody awaits (it
    would look fine and do nothing) fails, naming the block."""
    page = DOCS / "not-a-page.md"  # blocks are named by their page in the repository
    ran = tmp_path / "ran"
    awaited = Block(page, 1, f"import anyio\nawait anyio.sleep(0)\nopen({str(ran)!r}, 'w')\n", None)
    run_block(awaited)
    assert ran.exists()
    dropped = Block(page, 9, "async def main() -> None:\n    pass\n\nmain()\n", None)
    with pytest.raises(AssertionError, match=r"docs/not-a-page\.md:9: .*never awaited"):
        run_block(dropped)
    failing = Block(page, 17, "import asyncio\nawait asyncio.sleep(0)\n1 / 0\n", None)
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_block(failing)


def test_most_blocks_run() -> None:
    """Skipping is the exception: at least two blocks in three run."""
    ran = [b for b in BLOCKS if b.skip is None]
    assert len(ran) >= 2 * len(BLOCKS) / 3, [b.id for b in BLOCKS if b.skip]


def test_site_config_names_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    named = set(re.findall(r":\s*([\w./-]+\.md)\s*$", config, flags=re.M))
    pages = {p.name for p in PAGES}
    # A page the nav does not name is unreachable.
    assert not pages - named, pages - named
    assert named <= pages, named - pages


def test_readme_is_short_and_its_commands_are_true() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert re.search(r"git clone \S+ firetitan_async && cd firetitan_async", text)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "3.11" in pyproject["project"]["requires-python"]
    assert "Python 3.11" in text
    extras = pyproject["project"]["optional-dependencies"]
    for extra in re.findall(r"pip install -e '\.\[(\w+)\]'", text):
        assert extra in extras, extra
    assert "pip install -e '.[local]' && firetitan-async demo" in text
    # The test command the README gives is the one CI runs.
    assert "python -m pytest -q" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci
    assert "mkdocs build --strict" in ci  # and CI builds the site in strict mode
    # Its links into the site name pages that exist.
    for page in re.findall(r"\(docs/([\w-]+\.md)[#)]", text):
        assert (DOCS / page).exists(), page
