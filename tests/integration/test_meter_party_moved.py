"""A party back on another process, with the same facts as before, is billed again only from
its return (signalling/meters.py, `moved`; billing/meter.py, "Presence").

The adversary: process A, holding the family's socket, dies; the family's client reconnects on
process B before any meter pass has seen A gone. The visit row then reads as before (both
connected, held by processes other than the meter's) but names B for the family. B has been
renewing its liveness lease all along, on its own time: its renewals prove B alive, not that
the family was on it. Before, the meter's next pass took B's latest renewal as proof for the
whole stretch since A's last one and billed the gap between A's death and the family's return
(found by the billing simulator, seed 3220298586, visit 486).

One real meter process (M) on the real store, driven by hand (tests/support/meter_shell.py)."""

from __future__ import annotations

import pytest

from signalling import visits
from tests.support.meter_shell import metered_visit


@pytest.mark.parametrize(("seat", "old_holder"), [("family", "died"), ("family", "lives"),
                                                  ("relay", "died")])
async def test_the_gap_between_leaving_a_process_and_the_return_elsewhere_is_not_billed(
        db_url: str, seat: str, old_holder: str) -> None:
    """`family`, `died`: A dies at 10.5 holding the family (its last renewal at 10); the family
    is back on B at 12. A's renewals still prove the family up to 10 (it left A only by A's
    death), and B's count from the pass that found the family there (13). `lives`: A lives on
    (the family's socket there lost, its new one on B taking the seat before A noticed): A's
    renewals say nothing of the family after the last pass (8). `relay`: in relay mode A is the
    process relaying the call (the server's observation); the relay is placed again on B."""
    # The family's socket on A, the kiosk's on P; or in relay mode both on P, A relaying.
    seats = (dict(family_node="A", person_node="P") if seat == "family" else
             dict(family_node="P", person_node="P", media="relay", server_media=True,
                  server_node="A"))
    async with metered_visit(db_url, **seats) as shell:
        a = ("A",) if old_holder == "lives" else ()
        for second in range(11):  # A and P renew every second; B, up already, too
            await shell.at(float(second), "A", "P", "B")
            if second in (0, 8):
                assert await shell.meter_pass()
        assert await shell.connected_s() == pytest.approx(8.0)  # up to A's renewal then
        # The family is back on B at 12 (or the relay placed there), before A's lease
        # (touched at 10, 3 s) ran out: the row names B, the facts read as before.
        await shell.at(11.0, "P", "B", *a)
        await shell.at(12.0, "P", "B", *a)
        family = shell.pair.family.account_id
        if seat == "family":
            await shell.write(lambda conn, sink, visit, now: visits.join(
                conn, sink, visit, family, now, node="B"))
            await shell.write(lambda conn, sink, visit, now: visits.set_media(
                conn, sink, visit, family, True, now, node="B"))
        else:  # the new relay sees the media from both
            await shell.write(lambda conn, sink, visit, now: visits.observe(
                conn, sink, visit, True, now, node="B"))
        row = await shell.row()
        moved = (row.family_node, row.family_media) if seat == "family" else (
            row.server_node, row.server_media)
        assert (row.status, *moved) == ("live", "B", "connected" if seat == "family" else True)
        await shell.at(13.0, "P", "B", *a)
        assert await shell.meter_pass()
        for second in (14.0, 15.0, 16.0):
            await shell.at(second, "P", "B", *a)
        assert await shell.meter_pass()
        # Before, B's renewals carried the time on from the last proof: 16 s either way.
        proven_on_a = 10.0 if old_holder == "died" else 8.0
        assert await shell.connected_s() == pytest.approx(proven_on_a + (16.0 - 13.0))
