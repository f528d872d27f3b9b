"""The layers' dependency rules (docs/architecture.md), read from every module's imports.

The adversary: a developer in a hurry who reaches across a layer for a helper, often with a lazy
import inside a function to dodge a cycle. Every `import` and `from ... import` anywhere in a
module counts, relative ones resolved; the rules are:

- common/ (the error model every layer raises) imports no other Kinwire package;
- store/ imports no web (server/), billing or signalling code: it runs statements, knows no
  table of its own domain, and every layer may use it;
- billing/ imports neither signalling/ nor server/;
- signalling/ imports billing/ and the store, never server/;
- in server/, only the edges (server/http/, server/gateway/) and the composition root (app.py,
  cli.py, context.py) import the HTTP edge, server/http/.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (package whose modules are checked, packages they must not import, modules exempted)
RULES = [
    ("common", ("store", "server", "billing", "signalling"), ()),
    ("store", ("server", "billing", "signalling"), ()),
    ("billing", ("server", "signalling"), ()),
    ("signalling", ("server",), ()),
    ("server", ("server.http",), ("server.http", "server.gateway", "server.app", "server.cli",
                                   "server.context", "server.__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth in it, with the line: relative imports are
    resolved against the file's package; `from a import b` counts as `a.b` as well as `a`, so
    `from server import http` is seen as importing server.http."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(path: Path) -> list[str]:
    name = module_name(path)
    broken = []
    for package, forbidden, exempt in RULES:
        if not within(name, package) or any(within(name, e) for e in exempt):
            continue
        for line, module in imported(path):
            for banned in forbidden:
                if within(module, banned):
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {module} "
                                  f"({package} must not import {banned})")
    return broken


def modules() -> list[Path]:
    return sorted(p for package in ("common", "store", "billing", "signalling", "server")
                  for p in (ROOT / package).rglob("*.py"))


def test_no_module_breaks_a_layer_rule() -> None:
    assert len(modules()) > 80  # the walk found the code, not an empty tree
    broken = [v for path in modules() for v in violations(path)]
    assert broken == [], "\n".join(broken)


@pytest.mark.parametrize(("where", "source"), [
    ("billing/sneak.py", "def f():\n    from server.store import raw\n"),
    ("billing/sneak.py", "import signalling.visits\n"),
    ("store/sneak.py", "from billing.tables import ledger_transfers\n"),
    ("store/sneak.py", "from ..server import schema\n"),
    ("signalling/sneak.py", "from server import events\n"),
    ("server/sneak.py", "from server import http\n"),
    ("server/sneak.py", "from .http.routing import Route\n"),
])
def test_the_check_sees_each_kind_of_crossing(tmp_path: Path, monkeypatch, where: str,
                                             source: str) -> None:
    """A lazy import, a relative one and `from package import module` are all caught: the rule
    test above could otherwise pass by not seeing them."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert violations(path) != []


def test_an_allowed_import_is_not_flagged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    path = tmp_path / "signalling" / "fine.py"
    path.parent.mkdir(parents=True)
    path.write_text("from billing import ledger\nfrom store import raw\nimport serverless\n")
    assert violations(path) == []
