"""The relay's transport-wide congestion control feedback (signalling/transport_cc.py), read
back by a parser written here from the draft's section 3.1, not from the builder.

Adversaries: packets lost (they must be reported missing, not skipped), arriving out of order
or long after (a delta that needs two bytes, or a negative one), the 16-bit sequence number
wrapping mid-call, a packet arriving after it was reported lost, and a burst longer than one
feedback may carry. A browser that misreads these fits its sending to a link that is not there.
"""

from __future__ import annotations

import struct

from signalling.transport_cc import MAX_STATUSES, Arrivals, build


def parse(data: bytes) -> dict:
    """A transport-cc feedback packet: its fields, each packet's status and arrival (us)."""
    first, pt, words = struct.unpack("!BBH", data[:4])
    assert first >> 6 == 2 and first & 0x1F == 15 and pt == 205
    assert len(data) == (words + 1) * 4, "length field"
    if first & 0x20:  # padding: the last byte says how many
        data = data[:len(data) - data[-1]]
    sender, media, base, count, ref_and_count = struct.unpack("!IIHHI", data[4:20])
    reference = ref_and_count >> 8
    if reference & 0x800000:
        reference -= 1 << 24
    pos, symbols = 20, []
    while len(symbols) < count:
        (chunk,) = struct.unpack("!H", data[pos:pos + 2])
        pos += 2
        if chunk >> 15 == 0:  # run length
            symbols += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
        elif (chunk >> 14) & 1:  # two-bit vector
            symbols += [(chunk >> (12 - 2 * i)) & 3 for i in range(7)]
        else:
            symbols += [(chunk >> (13 - i)) & 1 for i in range(14)]
    symbols = symbols[:count]
    at = reference * 64_000
    arrivals: list[int | None] = []
    for symbol in symbols:
        if symbol == 0:
            arrivals.append(None)
            continue
        if symbol == 1:
            delta = data[pos]
            pos += 1
        else:
            (delta,) = struct.unpack("!h", data[pos:pos + 2])
            pos += 2
        at += delta * 250
        arrivals.append(at)
    assert pos == len(data), "nothing after the deltas but padding"
    return {"sender": sender, "media": media, "base": base, "count": ref_and_count & 0xFF,
            "arrivals": arrivals}


def test_statuses_and_deltas_read_back_within_a_tick():
    t = 1_000_000_000
    arrivals = [t + 30_000, None, t + 31_000, t + 200_000, t + 150_000, None, None, t + 151_000]
    got = parse(build(65_530, arrivals, 7, sender_ssrc=11, media_ssrc=22))
    assert (got["sender"], got["media"], got["base"], got["count"]) == (11, 22, 65_530, 7)
    assert [a is None for a in got["arrivals"]] == [a is None for a in arrivals]
    for sent, read in zip(arrivals, got["arrivals"], strict=True):
        if sent is not None:  # a large gap (169 ms) and a negative one (-50 ms) both
            assert abs(read - sent) <= 125, (sent, read)


def test_arrivals_report_losses_across_the_wrap_and_never_twice():
    a = Arrivals()
    us = 5_000_000
    for seq in (65_533, 65_534, 0, 2):  # 65_535 and 1 lost, the number wraps
        a.add(seq, us)
        us += 2_000
    assert a.due(now_s=10.0)
    first = parse(a.feedback(1, 2, now_s=10.0))
    assert first["base"] == 65_533
    assert [x is not None for x in first["arrivals"]] == [True, True, False, True, False, True]
    assert not a.due(now_s=10.05), "at most every 100 ms"
    a.add(1, us)  # seq 1 arrives after it was reported lost: not reported again
    a.add(3, us + 1_000)
    second = parse(a.feedback(1, 2, now_s=10.2))
    assert second["base"] == 3 and len(second["arrivals"]) == 1
    assert second["count"] == first["count"] + 1


def test_a_long_burst_reports_its_newest_packets():
    a = Arrivals()
    for seq in range(MAX_STATUSES + 40):
        a.add(seq, 1_000_000 + seq * 100)
    got = parse(a.feedback(1, 2, now_s=1.0))
    assert got["base"] == 40 and len(got["arrivals"]) == MAX_STATUSES
    assert all(x is not None for x in got["arrivals"])
