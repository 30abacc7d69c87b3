"""The layering rules, checked by parsing the package (``ast``): no run time, no imports.

1. Every dialect difference lives in ``wire/``: outside it, no code compares a dialect's name
   (``codec.name == "fireworks"``, ``dialect in ("tinker", ...)``) or imports a dialect module
   (``wire.tinker``, ``wire.fireworks``). ``local/`` is exempt: the local trainer is the
   server side, which plays both dialects.
2. No import circle among the client modules (the session, its futures and the clients), all
   imports counted: top-level, lazy (inside functions) and ``TYPE_CHECKING`` ones.
3. No module reads a private attribute (``obj._name``) that only another layer defines, and
   none imports a private name (``from x import _name``) from another layer. A layer is a
   top-level package (``wire``, ``_http``, ``_session``, ``_clients``, ``platform``,
   ``loops``, ``cli``, ``local``) or the flat top-level modules.

Each checker takes source text, so the tests below also show that it fails on a planted
violation (the rule cannot rot into a test that passes on anything).

Example::

    pytest tests/test_architecture.py -q
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import attrs

import firetitan_async

PACKAGE_DIR = Path(firetitan_async.__file__).resolve().parent
PACKAGE = "firetitan_async"
DIALECT_NAMES = frozenset({"tinker", "fireworks"})
DIALECT_MODULES = frozenset({f"{PACKAGE}.wire.tinker", f"{PACKAGE}.wire.fireworks"})
CLIENT_PACKAGES = (f"{PACKAGE}._session", f"{PACKAGE}._clients")
# Words that mark the other side of a comparison as a dialect (an account named "fireworks"
# is not one).
DIALECT_WORDS = ("dialect", "codec")


@attrs.frozen
class Module:
    name: str  # dotted, e.g. firetitan_async._clients._training
    is_package: bool  # an __init__.py
    tree: ast.Module

    @property
    def layer(self) -> str:
        parts = self.name.split(".")
        if len(parts) == 2 and not self.is_package:
            return "<top>"  # a flat module at the top
        return parts[1] if len(parts) > 1 else "<top>"


@functools.cache  # parsed once for every test here
def load_package() -> list[Module]:
    modules = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        tree = ast.parse(path.read_text(), filename=str(path))
        modules.append(Module(".".join(parts), is_package, tree))
    return modules


def module_of(name: str, source: str, *, is_package: bool = False) -> Module:
    """A module parsed from text (for the planted violations)."""
    return Module(name, is_package, ast.parse(source))


def imported_modules(module: Module, known: set[str]) -> Iterator[tuple[str, int]]:
    """Every module ``module`` imports (anywhere in its body), resolved to a dotted name.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module.
    """
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base, node.lineno
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield f"{base}.{alias.name}", node.lineno


def imported_names(module: Module) -> Iterator[tuple[str, str, int]]:
    """(resolved module, imported name, line) of every ``from ... import name``."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                yield base, alias.name, node.lineno


# -- rule 1: dialects ----------------------------------------------------------------------


def _dialect_literals(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in DIALECT_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_dialect_literals(e) for e in node.elts)
    return False


def _mentions_dialect(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return any(word in text for word in DIALECT_WORDS) or text.endswith(".name")


def dialect_violations(module: Module) -> list[str]:
    """Dialect-name comparisons and dialect-module imports of one module outside ``wire/``."""
    if module.layer in ("wire", "local"):
        return []
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_dialect_literals(o) for o in operands) and any(
                _mentions_dialect(o) for o in operands if not _dialect_literals(o)
            ):
                found.append(f"{module.name}:{node.lineno}: compares a dialect name")
        elif isinstance(node, ast.Match) and _mentions_dialect(node.subject):
            found.append(f"{module.name}:{node.lineno}: matches on a dialect name")
    for name, line in imported_modules(module, set(DIALECT_MODULES)):
        if name in DIALECT_MODULES:
            found.append(f"{module.name}:{line}: imports the dialect module {name}")
    return found


# -- rule 2: no import circle among the client modules --------------------------------------


def import_graph(modules: list[Module]) -> dict[str, set[str]]:
    known = {m.name for m in modules}
    graph: dict[str, set[str]] = {}
    for m in modules:
        deps = set()
        for name, _ in imported_modules(m, known):
            # `import a.b.c` also imports a.b; a package import runs its __init__.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != m.name:
                deps.add(name)
        graph[m.name] = deps
    return graph


def client_cycles(modules: list[Module]) -> list[list[str]]:
    """Import circles through the client modules (every import, lazy ones included)."""
    graph = import_graph(modules)
    clients = sorted(
        n for n in graph if any(n == p or n.startswith(p + ".") for p in CLIENT_PACKAGES)
    )
    cycles = []
    for start in clients:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                if dep == start:
                    cycles.append([*path, start])
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    return cycles


# -- rule 3: private attributes across layers -----------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_by_layer(modules: list[Module]) -> dict[str, set[str]]:
    """The private names each layer defines: defs, classes, assignments, ``self._x = ...``."""
    by_layer: dict[str, set[str]] = {}
    for m in modules:
        names = by_layer.setdefault(m.layer, set())
        for node in ast.walk(m.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            else:
                continue
            if _is_private(name):
                names.add(name)
    return by_layer


def private_access_violations(module: Module, by_layer: dict[str, set[str]]) -> list[str]:
    """``obj._name`` reads (and ``from x import _name``) of a private name that only another
    layer defines. ``self``/``cls`` reads are the object's own business."""
    if module.name == f"{PACKAGE}._sdk_private":
        return []  # its job: every private part of the SDKs we read, in one place
    own = by_layer.get(module.layer, set())
    elsewhere = set().union(*(v for k, v in by_layer.items() if k != module.layer))
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in elsewhere and node.attr not in own:
                found.append(
                    f"{module.name}:{node.lineno}: reads {ast.unparse(node)} (private to "
                    "another layer)"
                )
    for base, name, line in imported_names(module):
        if not base.startswith(PACKAGE) or not _is_private(name):
            continue
        parts = base.split(".")
        layer = parts[1] if len(parts) > 1 else "<top>"
        if len(parts) == 2 and layer.startswith("_") and (PACKAGE_DIR / f"{layer}.py").exists():
            layer = "<top>"
        if layer != module.layer and not (PACKAGE_DIR.joinpath(*parts[1:], f"{name}.py")).exists():
            found.append(f"{module.name}:{line}: imports {name} from {base} (another layer)")
    return found


# -- the tests -------------------------------------------------------------------------------


def test_dialect_differences_stay_in_wire() -> None:
    found = [v for m in load_package() for v in dialect_violations(m)]
    assert found == [], "\n".join(found)


def test_no_import_circle_among_client_modules() -> None:
    cycles = client_cycles(load_package())
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_attribute_read_across_layers() -> None:
    modules = load_package()
    by_layer = private_names_by_layer(modules)
    found = [v for m in modules for v in private_access_violations(m, by_layer)]
    assert found == [], "\n".join(found)


# What the two lowest layers may import (the rest of the order is in docs/architecture.md).
LOWER_LAYERS = {
    "wire": {"wire", "errors", "_sdk_private"},
    "_http": {"_http", "wire", "errors", "_version", "_sdk_private"},
}


def upward_imports(modules: list[Module]) -> list[str]:
    """Imports from ``wire/`` or ``_http/`` of anything above them."""
    found = []
    for name, deps in import_graph(modules).items():
        layer = name.split(".")[1] if "." in name else "<top>"
        allowed = LOWER_LAYERS.get(layer)
        if allowed is None:
            continue
        for dep in sorted(deps):
            dep_layer = dep.split(".")[1] if "." in dep else "<top>"
            if dep_layer not in allowed:
                found.append(f"{name} imports {dep}")
    return found


def test_wire_and_http_import_nothing_above_them() -> None:
    found = upward_imports(load_package())
    assert found == [], "\n".join(found)


def test_upward_rule_catches_the_transport_importing_the_session() -> None:
    transport = module_of(
        f"{PACKAGE}._http._transport", "from .._session._tracking import current_tracker\n"
    )
    tracking = module_of(f"{PACKAGE}._session._tracking", "x = 1\n")
    assert upward_imports([transport, tracking]) != []


def test_layers_are_packages_and_the_top_stays_small() -> None:
    flat = sorted(p.name for p in PACKAGE_DIR.glob("*.py"))
    assert len(flat) <= 12, flat
    for package in ("wire", "_http", "_session", "_clients", "platform", "loops", "cli", "local"):
        init = PACKAGE_DIR / package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{package}/__init__.py says what it owns"
        assert "May import" in doc, f"{package}/__init__.py says what it may import"


# -- API paths: one home ------------------------------------------------------------------

PATHS_MODULE = f"{PACKAGE}.wire.paths"


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring nodes of a module and of its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def api_path_literals(module: Module) -> list[str]:
    """``/api/v1`` spelled in code (f-strings included; docstrings aside) anywhere but
    :mod:`firetitan_async.wire.paths`, the local trainer included (its request parsing takes
    the prefix from there too)."""
    if module.name == PATHS_MODULE:
        return []
    docs = _docstrings(module.tree)
    return [
        f"{module.name}:{node.lineno} spells {node.value!r}"
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "/api/v1" in node.value
        and id(node) not in docs
    ]


def test_api_paths_are_spelled_only_in_wire_paths() -> None:
    found = [v for m in load_package() for v in api_path_literals(m)]
    assert found == [], "\n".join(found)


def local_importers(modules: list[Module]) -> list[str]:
    """Modules outside ``local/`` and ``cli/`` that import ``local/`` (the client never may)."""
    return [
        f"{name} imports {dep}"
        for name, deps in import_graph(modules).items()
        if name.split(".")[1:2] not in (["local"], ["cli"])
        for dep in sorted(deps)
        if dep.startswith(f"{PACKAGE}.local")
    ]


def test_the_client_never_imports_the_local_trainer() -> None:
    found = local_importers(load_package())
    assert found == [], "\n".join(found)


# -- each rule catches a planted violation --------------------------------------------------


def test_dialect_rule_catches_a_name_comparison_and_a_dialect_import() -> None:
    planted = module_of(
        f"{PACKAGE}._clients._planted",
        "from ..wire import fireworks as fw\n"
        "from ..wire.tinker import REQUEST_TYPE\n"
        "def f(self):\n"
        "    if self._codec.name == 'fireworks':\n"
        "        return 1\n"
        "    return self.dialect in ('tinker',)\n",
    )
    found = dialect_violations(planted)
    assert len(found) == 4, found
    innocent = module_of(
        f"{PACKAGE}.platform._planted",
        "def f(account):\n    return account != 'fireworks'\n",
    )
    assert dialect_violations(innocent) == []
    inside_wire = module_of(
        f"{PACKAGE}.wire._planted", "def f(d):\n    return d.name == 'fireworks'\n"
    )
    assert dialect_violations(inside_wire) == []


def test_cycle_rule_catches_a_lazy_and_a_type_checking_circle() -> None:
    session = module_of(
        f"{PACKAGE}._session._session",
        "def make():\n    from .._clients._training import TrainingClient\n",
    )
    training = module_of(
        f"{PACKAGE}._clients._training",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .._session._session import ServiceSession\n",
    )
    assert client_cycles([session, training]) != []
    one_way = module_of(f"{PACKAGE}._clients._training", "from .._session._pending import P\n")
    assert client_cycles([session, one_way]) == []


def test_private_rule_catches_a_read_across_layers() -> None:
    jobs = module_of(f"{PACKAGE}.platform._jobs", "class J:\n    def __init__(s):\n"
                     "        s._rest = 1\n")
    session = module_of(
        f"{PACKAGE}._session._session", "def from_job(jobs):\n    return jobs._rest.api_key\n"
    )
    by_layer = private_names_by_layer([jobs, session])
    assert private_access_violations(session, by_layer) != []
    own = module_of(f"{PACKAGE}.platform._other", "def f(j):\n    return j._rest\n")
    assert private_access_violations(own, private_names_by_layer([jobs, own])) == []


def test_path_rule_catches_a_spelled_path_and_the_local_rule_an_import() -> None:
    planted = module_of(
        f"{PACKAGE}._clients._planted",
        '"""Posts to ``/api/v1/asample`` (a docstring may say so)."""\n'
        "def f(t, op, run):\n"
        "    t.submit(f'/api/v1/{op}')\n"
        "    return t.call('GET', '/api/v1/training_runs/' + run)\n",
    )
    assert len(api_path_literals(planted)) == 2, api_path_literals(planted)
    home = module_of(PATHS_MODULE, "PREFIX = '/api/v1'\n")
    assert api_path_literals(home) == []
    client = module_of(f"{PACKAGE}._clients._planted", "from ..local import _model\n")
    model = module_of(f"{PACKAGE}.local._model", "x = 1\n")
    assert local_importers([client, model]) != []
    served = module_of(f"{PACKAGE}.local._planted", "from ..wire import paths\n")
    assert local_importers([served, home]) == []
