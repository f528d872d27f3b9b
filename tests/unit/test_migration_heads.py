"""A process on a database at head starts without importing Alembic (store/migrate.py): it
compares the version row with the heads it reads from the revision files itself. Those must be
Alembic's own; a migration written in a shape the reader misses (a tuple of parents, another
quote) must not make a database look at head when it is not."""

from __future__ import annotations

import subprocess
import sys

from alembic.script import ScriptDirectory

from store.migrate import alembic_config, heads_on_disk


def test_the_heads_read_from_the_files_are_alembics() -> None:
    assert heads_on_disk() == frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def test_the_server_imports_no_alembic() -> None:
    """Importing the app (every process start) leaves Alembic unloaded."""
    code = "import sys, server.app; print('alembic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False", done.stdout
