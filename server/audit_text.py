"""The audit log as people read it: each entry as one sentence with names ("Officer Ana Diaz
ended the visit of Alex Rivers and Dana Rivers: 'threatening language'"), for the staff console
and the CSV export alike, so both say the same thing.

Names are looked up when the log is read, not stored in it: the log stays the bare record of
who did what to which id, and a row is never rewritten. Ids are typed by their prefix
(store/ids.py), so a target is looked up in the one table it can name.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.schema import accounts, connections, devices, facilities, messages, visits
from store import Record

TITLES = {"staff": "Officer", "admin": "Administrator"}

# What each action's filter is called in the console; the order is the menu's.
ACTIONS = {
    "visit.end": "Ended a visit", "visit.cancel": "Cancelled a visit",
    "visit.watch": "Watched a visit", "message.approve": "Approved a message",
    "message.reject": "Rejected a message", "connection.block": "Blocked a connection",
    "connection.unblock": "Unblocked a connection",
    "connection.privileged": "Changed a privileged contact", "person.create": "Added a resident",
    "staff.create": "Added an officer", "device.register": "Registered a device",
    "facility.update": "Changed facility settings", "facility.create": "Created a facility",
    "admin.create": "Added an administrator", "demo.seed": "Seeded demo data",
}


class Names:
    """Everything an entry may name, fetched in one query a table for a page of entries."""

    def __init__(self) -> None:
        self.accounts: dict[str, Any] = {}
        self.targets: dict[str, Any] = {}

    async def load(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> Names:
        targets = {r["target"] for r in rows if r["target"]}
        by_prefix: dict[str, set[str]] = {}
        for t in targets:
            by_prefix.setdefault(t.split("_", 1)[0], set()).add(t)
        for table, prefix in ((visits, "vis"), (connections, "con"), (messages, "msg"),
                              (devices, "dev"), (facilities, "fac")):
            ids = by_prefix.get(prefix)
            if ids:
                for row in await conn.execute(select(table).where(table.c.id.in_(ids))):
                    self.targets[row.id] = row
        people = {r["actor_id"] for r in rows} | targets
        for row in self.targets.values():
            for key in ("family_id", "person_id", "sender_id", "recipient_id"):
                if key in row._fields:
                    people.add(getattr(row, key))
        if people:
            for row in await conn.execute(select(accounts.c.id, accounts.c.name,
                                                 accounts.c.role, accounts.c.inmate_number)
                                          .where(accounts.c.id.in_(people))):
                self.accounts[row.id] = row
        return self

    def name(self, account_id: str | None) -> str:
        row = self.accounts.get(account_id or "")
        return row.name if row is not None else "someone"

    def actor(self, entry: dict[str, Any]) -> str:
        if entry["actor_id"] == "cli":
            return "An operator at the command line"
        title = TITLES.get(entry["actor_role"], "")
        name = self.name(entry["actor_id"])
        return name if not title or name.startswith(title + " ") else f"{title} {name}"


def _quote(text: Any) -> str:
    return f"'{text}'"


def _pair(names: Names, row: Record) -> str:
    return f"{names.name(row.family_id)} and {names.name(row.person_id)}"


def _visit(verb: str) -> Callable[[Names, dict[str, Any], Any], str]:
    def say(names: Names, e: dict[str, Any], row: Record) -> str:
        what = f"the visit of {_pair(names, row)}" if row is not None else "a visit"
        reason = e["details"].get("reason")
        return f"{verb} {what}" + (f": {_quote(reason)}" if reason else "")
    return say


def _message(verb: str) -> Callable[[Names, dict[str, Any], Any], str]:
    def say(names: Names, e: dict[str, Any], row: Record) -> str:
        what = (f"a message from {names.name(row.sender_id)} to {names.name(row.recipient_id)}"
                if row is not None else "a message")
        reason = e["details"].get("reason")
        return f"{verb} {what}" + (f": {_quote(reason)}" if reason else "")
    return say


def _connection(verb: str) -> Callable[[Names, dict[str, Any], Any], str]:
    def say(names: Names, e: dict[str, Any], row: Record) -> str:
        what = f"between {_pair(names, row)}" if row is not None else ""
        if e["action"] == "connection.privileged":
            on = e["details"].get("privileged")
            return f"marked the contact {what} as {'privileged' if on else 'not privileged'}"
        return f"{verb} the contact {what}".rstrip()
    return say


def _settings(names: Names, e: dict[str, Any], row: Record) -> str:
    changed = sorted(e["details"].get("settings") or {})
    extra = [k for k in ("name", "timezone") if k in e["details"]]
    what = ", ".join(k.replace("_", " ") for k in [*changed, *extra]) or "nothing"
    return f"changed the facility's settings ({what})"


SENTENCES: dict[str, Callable[[Names, dict[str, Any], Any], str]] = {
    "visit.end": _visit("ended"), "visit.cancel": _visit("cancelled"),
    "visit.watch": _visit("watched"),
    "message.approve": _message("approved"), "message.reject": _message("rejected"),
    "connection.block": _connection("blocked"), "connection.unblock": _connection("unblocked"),
    "connection.privileged": _connection(""),
    "person.create": lambda n, e, r: (f"added the resident {n.name(e['target'])} "
                                      f"({e['details'].get('inmate_number', '')})"),
    "staff.create": lambda n, e, r: f"added the officer {n.name(e['target'])}",
    "admin.create": lambda n, e, r: f"added the administrator {n.name(e['target'])}",
    "device.register": lambda n, e, r: f"registered the device {_quote(e['details'].get('label'))}",
    "facility.update": _settings,
    "facility.create": lambda n, e, r: f"created the facility {e['details'].get('name', '')}",
    "demo.seed": lambda n, e, r: "seeded the demo data",
}


def sentence(names: Names, entry: dict[str, Any]) -> str:
    say = SENTENCES.get(entry["action"])
    row = names.targets.get(entry["target"] or "")
    what = say(names, entry, row) if say else f"did {entry['action']} on {entry['target'] or '-'}"
    return f"{names.actor(entry)} {what}"


async def described(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with `actor_name` and `sentence` added."""
    names = await Names().load(conn, rows)
    return [{**r, "actor_name": names.actor(r), "sentence": sentence(names, r)} for r in rows]


CSV_COLUMNS = ("time", "actor", "role", "action", "what happened", "target", "details")


def _cell(value: Any) -> str:
    # A spreadsheet runs a cell that starts with = + - @ (or a tab or return) as a formula, and
    # names and reasons are typed by people: such a cell is prefixed with ' (OWASP's advice).
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(rows: Iterable[dict[str, Any]], zone: ZoneInfo) -> str:
    """Described entries as CSV, times in `zone` with their offset."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        at = datetime.fromisoformat(r["at"]).astimezone(zone).isoformat(timespec="seconds")
        writer.writerow([_cell(v) for v in (
            at, r["actor_name"], r["actor_role"], r["action"], r["sentence"], r["target"],
            json.dumps(r["details"], sort_keys=True) if r["details"] else "")])
    return out.getvalue()
