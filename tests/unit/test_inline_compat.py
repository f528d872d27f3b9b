"""store/inline.py runs SQLite's writer on the loop by replacing aiosqlite internals. The
adversary is an upgrade: an aiosqlite whose internals moved must be refused loudly at the
store's start, not left running statements on a worker thread nobody started."""

from __future__ import annotations

import aiosqlite
import pytest

from store.inline import check_aiosqlite


def test_the_installed_aiosqlite_is_one_inline_was_written_for() -> None:
    check_aiosqlite()


def test_an_aiosqlite_without_its_execute_hook_is_refused() -> None:
    class Moved(aiosqlite.Connection):
        _execute = None  # renamed upstream, say

    with pytest.raises(RuntimeError, match="_execute"):
        check_aiosqlite(Moved)


def test_an_aiosqlite_whose_constructor_changed_is_refused() -> None:
    class Changed(aiosqlite.Connection):
        def __init__(self, connector, *, loop) -> None:  # a new required argument
            super().__init__(connector, 64)

    with pytest.raises(RuntimeError, match="__init__"):
        check_aiosqlite(Changed)


def test_an_aiosqlite_without_a_worker_queue_is_refused() -> None:
    class NoQueue(aiosqlite.Connection):
        def __init__(self, connector, iter_chunk_size) -> None:
            super().__init__(connector, iter_chunk_size)
            del self._tx

    with pytest.raises(RuntimeError, match="_tx"):
        check_aiosqlite(NoQueue)
