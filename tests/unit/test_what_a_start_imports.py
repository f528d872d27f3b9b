"""What a process start imports. On a database at head it needs no Alembic (store/migrate.py):
it compares the version row with the heads it reads from the revision files itself. Those must
be Alembic's own; a migration written in a shape the reader misses (a tuple of parents, another
quote) must not make a database look at head when it is not."""

from __future__ import annotations

import subprocess
import sys

from alembic.script import ScriptDirectory

from store.migrate import alembic_config, heads_on_disk


def test_the_heads_read_from_the_files_are_alembics() -> None:
    assert heads_on_disk() == frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def test_a_start_imports_neither_alembic_nor_the_media_stack() -> None:
    """Importing the app (every process start) leaves Alembic, aiortc and PyAV unloaded:
    they are imported when a migration runs and when a process first relays a visit."""
    code = ("import sys, server.app; "
            "print(sorted(m for m in ('alembic', 'aiortc', 'av') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_a_one_shot_command_does_not_import_the_web() -> None:
    """`kinwire migrate`, `backup`, `restore` configure their logs (common/logs.py) without
    the HTTP edge's routes: they were 0.1 s of CPU every such command."""
    code = ("import sys, server.cli; from common.logs import configure; "
            "configure('warning', 'json'); "
            "print(sorted(m for m in ('server.http.routing', 'server.app') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
