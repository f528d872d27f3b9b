"""No SQL text and no driver-level store objects outside store/ (issue 20 item 1).

Domain code writes SQLAlchemy Core: a hot statement is declared once as a `store.Statement`,
which the store compiles per dialect and runs on its fast paths (store/statement.py); a cold
one goes through `conn.execute`. The adversary: a newcomer who pastes a hand-written
`UPDATE ... SET ... WHERE id = ?` into a domain module (it would skip the columns' types and
hold one dialect's placeholders), or reaches into the store's internals (store.raw,
store.quickread, store.inline, store.group) for speed.

Checked: every string literal of the product's Python (billing, common, server, signalling;
store/ and its migrations are where SQL may be written), docstrings aside, f-strings by their
literal parts. Tests and bench/ read the database from outside and may write SQL.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.unit.test_import_rules import ROOT, imported, within

PACKAGES = ("billing", "common", "server", "signalling")
# Nothing is excepted: the events partitions' DDL (store/partitions.py) and the backup's
# snapshots (store/snapshot.py) moved into the store.
EXEMPT: dict[str, str] = {}
SQL = re.compile(r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b"
                 r"|\bUPDATE\s+\w+(\s+\w+)?\s+SET\b|\bDELETE\s+FROM\b")
STORE_INSIDES = ("store.raw", "store.quickread", "store.inline", "store.group",
                 "store.statement")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def sql_strings(path: Path) -> list[str]:
    """`file:line: text` for each string literal of `path` that reads as SQL."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            literal = "".join(part.value for part in node.values
                              if isinstance(part, ast.Constant) and isinstance(part.value, str))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in skip:
            literal = node.value
        else:
            continue
        if SQL.search(literal):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {literal[:60]!r}")
    return found


def store_insides(path: Path) -> list[str]:
    """`file:line imports module` for each import line of `path` that reaches into the store."""
    lines = {line: module for line, module in reversed(imported(path))
             if any(within(module, inside) for inside in STORE_INSIDES)}
    return [f"{path.relative_to(ROOT)}:{line} imports {module}"
            for line, module in sorted(lines.items())]


def product_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                  if p.relative_to(ROOT).as_posix() not in EXEMPT)


def test_no_sql_text_outside_the_store() -> None:
    assert len(product_modules()) > 60  # the walk found the code
    found = [hit for path in product_modules() for hit in sql_strings(path)]
    assert found == [], "write Core (a store.Statement on a hot path):\n" + "\n".join(found)


def test_domain_code_uses_the_store_interface_only() -> None:
    found = [hit for path in product_modules() for hit in store_insides(path)]
    assert found == [], "use store.Statement, not the store's internals:\n" + "\n".join(found)


@pytest.mark.parametrize("source", [
    '_BUMP = "UPDATE event_heads SET last_seq = last_seq + ? WHERE account_id = ?"\n',
    '_KINDS = ("SELECT id, kind"\n          " FROM ledger_accounts WHERE id = ?")\n',
    'def f(t):\n    return f"DELETE FROM {t} WHERE at < ?"\n',
    'Q = "INSERT INTO messages (id, body) VALUES (?, ?)"\n',
    'Q = """\n    UPDATE visits v\n    SET status = $1\n"""\n',
])
def test_pasted_sql_is_found(tmp_path: Path, monkeypatch, source: str) -> None:
    monkeypatch.setattr("tests.unit.test_sql_stays_in_the_store.ROOT", tmp_path)
    path = tmp_path / "server" / "pasted.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert sql_strings(path) != []


def test_words_that_are_not_sql_pass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("tests.unit.test_sql_stays_in_the_store.ROOT", tmp_path)
    path = tmp_path / "server" / "fine.py"
    path.parent.mkdir(parents=True)
    path.write_text('"""Select the rows from the table; UPDATE ... SET in prose."""\n'
                    'ROUTE = ("DELETE", "/messages/{id}")\nWORD = "Update"\n')
    assert sql_strings(path) == []


def test_reaching_into_the_store_is_found(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("tests.unit.test_import_rules.ROOT", tmp_path)
    monkeypatch.setattr("tests.unit.test_sql_stays_in_the_store.ROOT", tmp_path)
    path = tmp_path / "billing" / "quick.py"
    path.parent.mkdir(parents=True)
    path.write_text("from store import raw\nfrom store.quickread import connection\n"
                    "from store import Statement\n")
    assert len(store_insides(path)) == 2
