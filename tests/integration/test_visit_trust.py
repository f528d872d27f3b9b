"""The facility's side decides, and no minute for a frozen call (issue 14, items 2 and 3;
docs/visits.md, "Trust"). Real processes (two `kinwire serve` on PostgreSQL and a private
Redis), a private coturn on loopback and aiortc reference clients.

Adversaries: a modified family client that never reports its media connected (before this it
got visits free), one that reports `disconnected` while media flows, both compared with an
honest family in the same run; clients that report nothing at all in relay mode; a kiosk whose
camera and microphone stop producing frames (the family used to pay for a frozen call)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from signalling.media import SyntheticVideoTrack, ToneAudioTrack
from signalling.visit_client import VisitClient
from tests.integration.test_visit_e2e import MINUTE_S, account_id, debits, stack, visit_now
from tests.support.nodes import make_pair

TOLERANCE_S = 1.0  # a report, a meter pass and a debit, each way, on a loaded machine
STALL_S = 2.0
SIZE = dict(width=160, height=120, fps=10)


class SilentFamily(VisitClient):
    """Relays offer and answer but never says its media is connected."""

    async def _report(self, state: str, sending: bool | None = None) -> None:
        return None


class DenyingFamily(VisitClient):
    """Says `disconnected` whatever its peer connection does, media flowing or not."""

    async def _report(self, state: str, sending: bool | None = None) -> None:
        if self._ws is not None and not self._ws.closed and not self._closed:
            await self.call("visit.media", {"visit_id": self.visit_id, "state": "disconnected"})


class Mute(VisitClient):
    """Reports nothing at all (relay mode: the server judges anyway)."""

    async def _report(self, state: str, sending: bool | None = None) -> None:
        return None


class Freezable:
    """Camera and microphone that stop producing frames while `frozen` (a stalled device)."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.running.set()

    def tracks(self) -> list[Any]:
        gate = self.running

        class Video(SyntheticVideoTrack):
            async def recv(self):  # type: ignore[override]
                await gate.wait()
                return await super().recv()

        class Audio(ToneAudioTrack):
            async def recv(self):  # type: ignore[override]
                await gate.wait()
                return await super().recv()

        return [Video(SIZE["width"], SIZE["height"], SIZE["fps"]), Audio()]


def client(node: Any, token: str, visit_id: str, kind: type[VisitClient] = VisitClient,
           **kwargs: Any) -> VisitClient:
    return kind(node.base, token, visit_id, loopback_only=True, **SIZE, **kwargs)


async def status_of(client: VisitClient) -> tuple[str | None, str | None]:
    """The last visit.updated a client got for its visit: (status, pause_reason)."""
    for kind, data in reversed(client.events):
        if kind == "visit.updated" and data.get("id") == client.visit_id:
            return data.get("status"), data.get("pause_reason")
    return None, None


async def run_visit(http: Any, db: str, a: Any, b: Any, family_kind: type[VisitClient],
                    *, media: str = "direct", person_kind: type[VisitClient] = VisitClient,
                    hold_s: float = 3.2 * MINUTE_S) -> tuple[int, float, VisitClient]:
    """One visit: the family on A, the person on B, live for about `hold_s`, then the family's
    socket closes (the meter pauses). Returns (minutes paid, seconds from the `visit.live` push
    to the family leaving, the person client)."""
    family_token, person_token = await make_pair(http, a, b, db)
    family_id = await account_id(http, a, family_token)
    visit_id, _ = await visit_now(db, family_id, media=media, record=False)
    family = client(a, family_token, visit_id, family_kind)
    person = client(b, person_token, visit_id, person_kind)
    try:
        await family.start()
        await person.start()
        async with asyncio.timeout(40):
            await family.wait_frames("video", 5)
            await person.wait_frames("video", 5)
            await person.wait_event("visit.live")
        live_at = time.monotonic()
        await asyncio.sleep(hold_s)
        await family.close()  # not a hang-up: the family's socket goes, the meter pauses
        left_at = time.monotonic()
        await asyncio.sleep(MINUTE_S + 1.0)
        paid = len(await debits(db, visit_id))
    finally:
        await family.close()
        await person.close()
    return paid, left_at - live_at, person


def assert_billed_for(paid: int, live_s: float, who: str) -> None:
    assert (paid - 1) * MINUTE_S < live_s + TOLERANCE_S, f"{who}: billed beyond the call"
    assert paid * MINUTE_S > live_s - TOLERANCE_S, f"{who}: connected time went unbilled"


@pytest.mark.timeout(180)
async def test_a_lying_family_client_is_billed_like_an_honest_one(pg_db: str,
                                                                  tmp_path: Path) -> None:
    async with stack(pg_db, tmp_path) as ((a, b), _turn, http):
        results = await asyncio.gather(
            run_visit(http, pg_db, a, b, VisitClient),
            run_visit(http, pg_db, a, b, SilentFamily),
            run_visit(http, pg_db, a, b, DenyingFamily))
    (honest, honest_s, _), (silent, silent_s, _), (denying, denying_s, _) = results
    print(f"honest {honest} minutes for {honest_s:.2f} s live; silent {silent} for "
          f"{silent_s:.2f} s; denying {denying} for {denying_s:.2f} s (minute {MINUTE_S} s)")
    assert honest >= 3
    for paid, live_s, who in [(honest, honest_s, "honest"), (silent, silent_s, "silent"),
                              (denying, denying_s, "denying")]:
        assert_billed_for(paid, live_s, who)


@pytest.mark.timeout(150)
async def test_relay_mode_ignores_both_clients_reports(pg_db: str, tmp_path: Path) -> None:
    relay = {"KINWIRE_RELAY_LEASE_S": "3", "KINWIRE_RELAY_LOOPBACK_ONLY": "1"}
    async with stack(pg_db, tmp_path, **relay) as ((a, b), _turn, http):
        paid, live_s, _ = await run_visit(http, pg_db, a, b, Mute, media="relay",
                                          person_kind=Mute)
    print(f"relay, no client reports: {paid} minutes for {live_s:.2f} s live")
    assert paid >= 3
    assert_billed_for(paid, live_s, "relay")


@pytest.mark.timeout(150)
async def test_a_frozen_kiosk_pauses_the_meter_and_both_screens_say_why(
        pg_db: str, tmp_path: Path) -> None:
    device = Freezable()
    async with stack(pg_db, tmp_path, KINWIRE_MEDIA_STALL_S=str(STALL_S)) as ((a, b), _t, http):
        family_token, person_token = await make_pair(http, a, b, pg_db)
        family_id = await account_id(http, a, family_token)
        visit_id, _ = await visit_now(pg_db, family_id, record=False)
        family = client(a, family_token, visit_id)
        person = client(b, person_token, visit_id, tracks=device.tracks)
        try:
            await family.start()
            await person.start()
            async with asyncio.timeout(40):
                await person.wait_event("visit.live")
            await asyncio.sleep(1.5 * MINUTE_S)
            device.running.clear()  # the camera and microphone stop producing frames
            frozen_at = time.monotonic()
            async with asyncio.timeout(STALL_S + 4):
                for side in (family, person):
                    await side.wait_for(lambda side=side: any(
                        k == "visit.updated" and d.get("pause_reason") == "person_not_sending"
                        for k, d in side.events))
            paused_s = time.monotonic() - frozen_at
            paid_paused = len(await debits(pg_db, visit_id))
            await asyncio.sleep(3 * MINUTE_S)  # frozen: no minute beyond the one under way
            assert len(await debits(pg_db, visit_id)) <= paid_paused + 1
            paid_frozen = len(await debits(pg_db, visit_id))
            assert await status_of(family) == ("paused", "person_not_sending")
            device.running.set()  # back: billing resumes with the unused seconds
            deadline = time.monotonic() + STALL_S + 6
            while len(await debits(pg_db, visit_id)) <= paid_frozen:
                assert time.monotonic() < deadline, "billing did not resume"
                await asyncio.sleep(0.1)
            assert (await status_of(person))[0] == "live"
        finally:
            await family.close()
            await person.close()
    print(f"frozen camera: the meter paused after {paused_s:.2f} s (threshold {STALL_S} s); "
          f"{paid_paused} minutes at the pause, {paid_frozen} after {3 * MINUTE_S} s frozen")
    assert paused_s <= STALL_S + 2.0
