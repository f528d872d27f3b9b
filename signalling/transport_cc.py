"""Transport-wide congestion control feedback from the relay to a party (issue 21, thin links).

A browser fits its sending to the path by send-side estimation: it numbers every packet it
sends with the transport-wide sequence number header extension, and the receiver reports back,
every ~100 ms, which of those packets arrived and when (draft-holmer-rmcat-transport-wide-cc-
extensions-01, section 3.1: RTCP RTPFB, FMT 15). Between two browsers that is how a link
thinner than the camera's rate is found. aiortc neither negotiates the extension nor sends the
feedback, so through the relay the family's browser had only receiver reports to go by, and on
a 300 kbit/s link its own picture reached the relay at 0.3-1.2 frames a second
(docs/BENCHMARKS.md, "Links"). The relay now does the receiver's part for the video it
receives: `negotiate` puts the extension and the `transport-cc` feedback type into its answer
when the offer has them, and `Arrivals` records each packet's arrival and builds the feedback.

The wire format, in brief: base sequence number and packet status count (16 bits each), a
reference time (24 bits, signed, in 64 ms units) and a feedback packet count (8 bits); then the
status of each packet from the base on, in chunks of 16 bits (here always the two-bit status
vector chunk: 7 statuses, 00 not received, 01 received with a one-byte delta, 10 received with
a two-byte signed delta); then the deltas, in 250 us units, each from the previous received
packet's arrival (the first from the reference time); zero-padded to 32 bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpHeaderExtensionParameters
from aiortc.sdp import SessionDescription

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
FEEDBACK = RTCRtcpFeedback(type="transport-cc")
EVERY_S = 0.1  # how often feedback is sent while packets come (libwebrtc: 50-250 ms)
MAX_STATUSES = 500  # packets one feedback reports at most; older ones are given up
TICK_US = 250  # a delta's unit
REFERENCE_US = 64_000  # the reference time's unit
RTPFB, FMT = 205, 15


def negotiate(pc: RTCPeerConnection, offer_sdp: str) -> None:
    """After the offer is applied, before the answer: on each video m-line whose offer has the
    transport-wide sequence number extension, keep it (under the offer's id) and accept the
    `transport-cc` feedback on its codecs."""
    wanted = {}
    for media in SessionDescription.parse(offer_sdp).media:
        ext = next((x for x in media.rtp.headerExtensions if x.uri == URI), None)
        has_feedback = any(FEEDBACK in codec.rtcpFeedback for codec in media.rtp.codecs)
        if media.kind == "video" and ext is not None and has_feedback:
            wanted[media.rtp.muxId] = ext.id
    for transceiver in pc.getTransceivers():
        ext_id = wanted.get(transceiver.mid)
        if transceiver.kind != "video" or ext_id is None:
            continue
        if all(x.uri != URI for x in transceiver._headerExtensions):
            transceiver._headerExtensions.append(
                RTCRtpHeaderExtensionParameters(id=ext_id, uri=URI))
        for codec in transceiver._codecs:
            if FEEDBACK not in codec.rtcpFeedback:
                codec.rtcpFeedback.append(FEEDBACK)


@dataclass
class Arrivals:
    """The arrivals of one party's video packets by transport-wide sequence number, reported
    (`feedback`) every EVERY_S. Sequence numbers are unwrapped from 16 bits; a packet arriving
    after its number was reported lost is not reported again (the sender has moved on)."""

    arrived: dict[int, int] = field(default_factory=dict)  # unwrapped seq -> arrival (us)
    next_seq: int | None = None  # the first number the next feedback reports
    highest: int | None = None
    count: int = 0  # feedback packets sent (8 bits on the wire)
    sent_at_s: float = -float("inf")

    def add(self, seq: int, at_us: int) -> None:
        if self.highest is None:
            unwrapped = seq
            self.next_seq = seq
        else:
            # the number nearest the highest seen, across the 16-bit wrap
            unwrapped = self.highest + ((seq - self.highest + 0x8000) & 0xFFFF) - 0x8000
        if self.next_seq is not None and unwrapped < self.next_seq:
            return  # already reported (as lost): too late
        self.arrived.setdefault(unwrapped, at_us)
        self.highest = unwrapped if self.highest is None else max(self.highest, unwrapped)

    def due(self, now_s: float) -> bool:
        return bool(self.arrived) and now_s - self.sent_at_s >= EVERY_S

    def feedback(self, sender_ssrc: int, media_ssrc: int, now_s: float) -> bytes | None:
        """The next feedback packet (and the packets it reports forgotten), or None."""
        if not self.arrived or self.highest is None or self.next_seq is None:
            return None
        base = max(self.next_seq, self.highest - MAX_STATUSES + 1)
        statuses = [self.arrived.get(seq) for seq in range(base, self.highest + 1)]
        data = build(base & 0xFFFF, statuses, self.count & 0xFF, sender_ssrc, media_ssrc)
        self.count += 1
        self.sent_at_s = now_s
        self.next_seq = self.highest + 1
        self.arrived.clear()
        return data


def build(base_seq: int, arrivals: list[int | None], count: int, sender_ssrc: int,
          media_ssrc: int) -> bytes:
    """One transport-cc feedback packet: `arrivals[i]` is when packet `base_seq + i` arrived
    (microseconds on any clock), or None if it did not. The first entry must have arrived."""
    first = next(at for at in arrivals if at is not None)
    reference = first // REFERENCE_US
    previous = reference * REFERENCE_US
    symbols, deltas = [], bytearray()
    for at in arrivals:
        if at is None:
            symbols.append(0)
            continue
        delta = round((at - previous) / TICK_US)
        previous += delta * TICK_US  # deltas accumulate, so rounding does not drift
        if 0 <= delta <= 0xFF:
            symbols.append(1)
            deltas.append(delta)
        else:
            symbols.append(2)
            deltas += struct.pack("!h", max(-0x8000, min(0x7FFF, delta)))
    chunks = bytearray()
    for i in range(0, len(symbols), 7):
        group = symbols[i:i + 7] + [0] * (7 - len(symbols[i:i + 7]))
        chunk = 0xC000  # status vector chunk (T=1) of two-bit symbols (S=1)
        for j, symbol in enumerate(group):
            chunk |= symbol << (12 - 2 * j)
        chunks += struct.pack("!H", chunk)
    body = (struct.pack("!IIHHI", sender_ssrc, media_ssrc, base_seq, len(arrivals),
                        ((reference & 0xFFFFFF) << 8) | count)
            + chunks + deltas)
    padding = -len(body) % 4
    if padding:  # RTCP padding: the last byte says how many were added
        body += bytes(padding - 1) + bytes([padding])
    words = (4 + len(body)) // 4 - 1
    header = struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | FMT, RTPFB, words)
    return header + bytes(body)
