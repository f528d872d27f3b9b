"""Forwarding: a relayed party's encoded frames go to every consumer as they came, never decoded
or encoded on the server (signalling/relayed_visit.py wires it; docs/visits.md, "Relay mode").

How the frames are taken and given, inside aiortc (1.16; pinned in pyproject.toml because this
reaches past its public API):

- In: an RTCRtpReceiver reassembles each encoded frame in its jitter buffer (after NACKs, RTX
  and reordering) and puts `(codec, JitterFrame)` on a queue read by its decoder thread. `tap`
  puts a queue of ours in its place before the receiver starts: the frame goes to the party's
  `Source` on the event loop, and the decoder thread, which now never gets a frame, just waits
  for the receiver's stop. The receiver still sends NACKs, PLIs when it loses a frame, REMB and
  receiver reports, as it would for a decoded track. Its timestamps start at 0 with each
  session (aiortc maps them and handles the 32-bit wrap). Its jitter buffer is replaced too:
  aiortc's declares a video frame complete only when the next frame's first packet arrives (one
  frame interval, 33 ms at 30 frames/s, added at every hop) and holds four audio packets
  (80 ms). `_EagerVideo` hands a frame on as soon as its marker packet completes it (falling
  back to aiortc's rule after a loss), `_EagerAudio` each packet as it comes.
- Out: an RTCRtpSender whose track yields `av.Packet`s packs them without encoding (it calls
  its encoder's `pack`: VP8 payload descriptors, or the Opus packet as it is). It numbers the
  RTP packets itself and adds its own random timestamp origin, so each outgoing stream's
  sequence numbers and timestamps run on whatever source feeds it. A `Feed` gives each consumer
  its own timestamps, continuous across the party's sessions (a new session restarts at 0:
  the feed jumps ahead by the time that passed instead).
- Keyframes: a consumer's PLI or FIR reaches its sender's `_send_keyframe`, which for an
  encoder would force the next keyframe; here it asks the party's receiver to send a PLI
  upstream (at most one per KEYFRAME_GAP_S per source). A video feed starts at a keyframe (a
  new watcher, or a party's new session) and asks for one at once, so the consumer sees
  pictures within a round trip plus one frame. When a consumer falls BACKLOG_MAX behind,
  its video feed drops frames until the next keyframe (a decoder cannot resume mid-stream).

- Bandwidth: the relay does not send aiortc's receive-side estimate (REMB) to the parties. On
  a 150 ms link with 2% loss it read 35-58 kbit/s of a path that carries over a megabit, and
  the family's Chromium obeyed it (the kiosk got 4-8 frames/s); without it the sender's own
  loss-based control decides, as it does in a call between browsers (19-20 frames/s both ways
  on that link). Passing the other party's REMB upstream instead was tried: Chromium's
  receive-side estimate under the same loss is as low (32-37 kbit/s), and the picture the
  other way froze. The relay cannot thin a stream it does not encode; instead it estimates
  each consumer's video link from the loss in that consumer's receiver reports
  (`LinkEstimate`, the loss-based rule browsers apply to what they send: a 2% loss link keeps
  it at the top) and asks the party (REMB) to keep under the thinnest consumer's, only while
  one is below the top (a party on clean links gets no REMB at all: one of 2.5 Mbit/s sent
  every second cost the family's own upload its picture on a thin link). On a 300 kbit/s link
  the family's picture of the kiosk went from none to ~6-15 frames/s (docs/BENCHMARKS.md,
  "Links"). For the party's own upload through its link the relay does the receiver's part
  of send-side estimation: transport-wide feedback on the party's video (transport_cc.py,
  fed from `tap`), from which the party's browser finds the link's rate itself.

Both legs must use the same codec: `forward_codecs` keeps only VP8 and Opus on every m-line of
an offer (browsers and aiortc offer both). Drops and keyframe requests are counted in /metrics
(`kinwire_relay_frames_total{outcome}`, `kinwire_relay_keyframe_requests_total`).
"""

from __future__ import annotations

import asyncio
import fractions
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import (
    RTCP_PSFB_APP,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)
from aiortc.utils import uint16_gt

from common.metrics import Counters
from signalling import transport_cc
from signalling.outlets import Timeline

MIME = {"video": "video/vp8", "audio": "audio/opus"}
CLOCK = {"video": 90_000, "audio": 48_000}
# Frames queued for one peer consumer: 0.5 s of either kind. Longer queues only turn a slow
# moment into lasting delay (64 frames measured 2 s behind in a loaded run); past this the
# frames are dropped (counted) and the video resumes at a keyframe.
BACKLOG_MAX = {"video": 15, "audio": 25}
KEYFRAME_GAP_S = 0.25  # shortest time between two keyframe requests sent to one party
# A consumer's link estimate (LinkEstimate): from no limit (above what a 640x480 camera sends)
# down to a floor where a picture still moves.
ESTIMATE_MAX_BPS, ESTIMATE_MIN_BPS = 2_500_000, 60_000
LIMIT_EVERY_S = 1.0  # a limit that rises (or holds) is sent to the party at most this often
FRAMES = "kinwire_relay_frames_total"
KEYFRAME_REQUESTS = "kinwire_relay_keyframe_requests_total"


def forward_codecs(pc: RTCPeerConnection) -> None:
    """After an offer is applied: keep only the forwarded codec (and its RTX) on each m-line, so
    that both legs of a visit carry the same one. ValueError when an m-line does not offer it."""
    for transceiver in pc.getTransceivers():
        codecs = transceiver._codecs
        main = [c for c in codecs if c.mimeType.lower() == MIME[transceiver.kind]]
        if not main:
            raise ValueError(f"the offer has no {MIME[transceiver.kind]} on a "
                             f"{transceiver.kind} m-line")
        pt = main[0].payloadType
        transceiver._codecs = [main[0], *(c for c in codecs
                                          if is_rtx(c) and c.parameters.get("apt") == pt)]


def is_keyframe(kind: str, data: bytes) -> bool:
    """Audio frames all stand alone; a VP8 frame is a keyframe when its first bit is 0."""
    return kind == "audio" or (len(data) > 0 and data[0] & 1 == 0)


def vp8_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe's header (RFC 6386, 9.1); None for other frames."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    return (int.from_bytes(data[6:8], "little") & 0x3FFF,
            int.from_bytes(data[8:10], "little") & 0x3FFF)


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded frame as it left a party's jitter buffer."""

    data: bytes
    timestamp: int  # RTP units, from the session's first frame
    keyframe: bool
    epoch: int  # which of the party's sessions it came from


class LinkEstimate:
    """What one consumer's link carries of a forwarded video, from the loss its receiver reports
    (the loss-based rule of Google's congestion control, as browsers apply it to what they
    send): over 10% lost, down by half the loss; under 2%, up by 5%; between, held. The relay
    cannot thin a stream it does not encode, so the party's sender is asked to send no more
    than the thinnest consumer's link (Source.limit); the recording is no link and asks
    nothing."""

    def __init__(self) -> None:
        self.bps = float(ESTIMATE_MAX_BPS)

    def report(self, fraction_lost: int) -> None:
        lost = fraction_lost / 256
        if lost > 0.10:
            self.bps = max(ESTIMATE_MIN_BPS, self.bps * (1 - 0.5 * lost))
        elif lost < 0.02:
            self.bps = min(ESTIMATE_MAX_BPS, self.bps * 1.05)


class Source:
    """One party's camera or microphone as the relay receives it, across the party's sessions:
    the receiver of its current session (`attach`) and the feeds that read it. `frames`,
    `packets` and `last_at` (time.monotonic of the last frame) are what the server has seen."""

    def __init__(self, kind: str, metrics: Counters) -> None:
        self.kind, self.metrics = kind, metrics
        self.feeds: set[Feed] = set()
        self.frames = self.packets = 0
        self.last_at: float | None = None
        self.epoch = 0
        self._receiver: Any = None
        self._ssrc: int | None = None
        self._asked_at = -KEYFRAME_GAP_S
        self._asking: set[asyncio.Task[None]] = set()
        self._limit_bps: float | None = None  # the last limit sent to the party
        self._limited_at = -LIMIT_EVERY_S

    def attach(self, receiver: RTCRtpReceiver) -> None:
        """Read the party's new session from now on (frames of any other are ignored)."""
        self._receiver, self._ssrc = receiver, None
        self.epoch += 1

    def detach(self, receiver: RTCRtpReceiver) -> None:
        if self._receiver is receiver:
            self._receiver, self._ssrc = None, None

    def saw_packet(self, receiver: RTCRtpReceiver, ssrc: int, primary: bool) -> None:
        if receiver is self._receiver:
            self.packets += 1
            if primary:
                self._ssrc = ssrc

    def receive(self, receiver: RTCRtpReceiver, data: bytes, timestamp: int) -> None:
        if receiver is not self._receiver:
            return
        self.frames += 1
        self.last_at = time.monotonic()
        frame = Encoded(data, timestamp, is_keyframe(self.kind, data), self.epoch)
        for feed in list(self.feeds):
            feed.offer(frame)

    def limit(self) -> None:
        """Tell the party (REMB) the most its video may send: what its thinnest consumer's link
        carries (LinkEstimate). Sent when it falls by a tenth, else at most every LIMIT_EVERY_S,
        so a link that recovers lifts it again."""
        estimates = [f.estimate.bps for f in self.feeds if f.estimate is not None]
        receiver = self._receiver
        if self.kind != "video" or not estimates or receiver is None or self._ssrc is None:
            return
        bps, now = min(estimates), time.monotonic()
        if bps >= ESTIMATE_MAX_BPS and (self._limit_bps is None
                                        or self._limit_bps >= ESTIMATE_MAX_BPS):
            return  # no limit, and none to lift: the party's own control decides alone
        falling = self._limit_bps is not None and bps < 0.9 * self._limit_bps
        if not falling and now - self._limited_at < LIMIT_EVERY_S:
            return
        self._limit_bps, self._limited_at = bps, now
        send = getattr(receiver, "_send_rtcp_as_is", None)
        rtcp_ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
        if send is None or rtcp_ssrc is None:
            return
        packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                fci=pack_remb_fci(int(bps), [self._ssrc]))
        task = asyncio.ensure_future(send(packet))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    def request_keyframe(self) -> None:
        """Ask the party for a keyframe (a PLI on its session), at most once per gap."""
        now = time.monotonic()
        if self.kind != "video" or self._receiver is None or self._ssrc is None \
                or now - self._asked_at < KEYFRAME_GAP_S:
            return
        self._asked_at = now
        self.metrics.inc(KEYFRAME_REQUESTS)
        task = asyncio.ensure_future(self._receiver._send_rtcp_pli(self._ssrc))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)


class _Tap(queue.Queue):  # type: ignore[type-arg]
    """Stands in for an RTCRtpReceiver's decoder queue (module docstring). `put` is called on
    the event loop by the receiver; only its closing None reaches the (idle) decoder thread."""

    def __init__(self, deliver: Callable[[bytes, int], None]) -> None:
        super().__init__()
        self._deliver = deliver

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(None, block, timeout)
        else:
            _codec, frame = item
            self._deliver(frame.data, frame.timestamp)


def _starts_frame(packet: RtpPacket) -> bool:
    """A VP8 payload descriptor with the S bit set and partition 0 (RFC 7741, 4.2)."""
    return bool(packet.payload) and packet.payload[0] & 0x17 == 0x10


class _EagerVideo(JitterBuffer):
    """aiortc's video jitter buffer (reordering, NACKs, PLI flags), with two changes:

    - A frame leaves as soon as it is complete: its packets lie contiguous from the buffer's
      start up to one with the marker bit, and the first begins a VP8 frame. Checked on every
      packet, so a frame whose marker came before a reordered middle packet leaves with that.
    - A lost packet is waited for as long as a NACK and its retransmission take (loss_wait_s:
      the round trip to the party, from `rtt_s`, plus a margin), not until 512 packets have
      piled up behind it (aiortc's rule: seconds of frozen video on a loaded host, where full
      UDP buffers drop packets). Then the incomplete frame is skipped and a keyframe asked for
      (the PLI flag), so the picture recovers in a round trip.
    """

    LOSS_WAIT_S = 0.15  # the least wait (and the wait before a round trip is known)
    # The most: past it a keyframe (one round trip) is the quicker way back to a picture.
    LOSS_WAIT_MAX_S = 0.6

    def __init__(self, rtt_s: Callable[[], float | None] = lambda: None) -> None:
        super().__init__(capacity=512, is_video=True)
        self._rtt_s = rtt_s
        self._stuck_since: float | None = None
        self.skipped = 0  # incomplete frames given up on

    def loss_wait_s(self) -> float:
        """A retransmission comes a round trip after the NACK that asked for it; with a
        150 ms link each way that is over 0.3 s, so a fixed 0.15 s gave up on nearly every
        lost packet (the kiosk got the family's picture at 8 frames/s against 19 direct:
        docs/BENCHMARKS.md, "Links", relay mode)."""
        rtt = self._rtt_s()
        if rtt is None:
            return self.LOSS_WAIT_S
        return min(self.LOSS_WAIT_MAX_S, max(self.LOSS_WAIT_S, 1.5 * rtt + 0.05))

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is None and self._origin is not None:
            frame = self._complete()
            if frame is None and self._stuck():
                pli = True
                frame = self._complete()
        if frame is not None:
            self._stuck_since = None
        return pli, frame

    def _complete(self) -> JitterFrame | None:
        assert self._origin is not None
        first = self._packets[self._origin % self.capacity]
        if first is None or not _starts_frame(first):
            return None
        run = []
        for count in range(self.capacity):
            stored = self._packets[(self._origin + count) % self.capacity]
            if stored is None or stored.timestamp != first.timestamp:
                return None
            run.append(stored)
            if stored.marker:
                break
        self.remove(len(run))
        return JitterFrame(b"".join(p._data for p in run), first.timestamp)

    def _stuck(self) -> bool:
        """The head frame has been incomplete for LOSS_WAIT_S: drop up to the next frame's
        first packet, if one has come. Returns whether anything was dropped."""
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
            return False
        if now - self._stuck_since < self.loss_wait_s():
            return False
        assert self._origin is not None
        head = self._packets[self._origin % self.capacity]
        for count in range(1, self.capacity):
            stored = self._packets[(self._origin + count) % self.capacity]
            if stored is not None and _starts_frame(stored) and (
                    head is None or stored.timestamp != head.timestamp):
                self.remove(count)
                self._stuck_since = None
                self.skipped += 1
                return True
        return False


class _EagerAudio(JitterBuffer):
    """Every audio packet is a frame: hand it on at once; one older than the last is dropped
    (its moment has passed)."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._last is not None and not uint16_gt(packet.sequence_number, self._last):
            return False, None
        self._last = packet.sequence_number
        return False, JitterFrame(packet._data, packet.timestamp)


def recover_quickly(transceiver: RTCRtpTransceiver) -> None:
    """Give a video receiver `_EagerVideo` in place of aiortc's jitter buffer: a frame whose
    packet and retransmission were both lost is given up on after a round trip and a keyframe
    asked for. With aiortc's, the video stops until 512 packets have come behind the hole
    (measured: one such loss, then 0 frames in 6 s at 160x120; ~14 frames/s with this). For
    every receiver of ours, decoding or not; must be called in the "track" event, before the
    receiver starts. Audio and other codecs than VP8 keep aiortc's rules."""
    receiver = transceiver.receiver
    if transceiver.kind != "video" or not hasattr(receiver, _BUFFER):
        return
    sender = transceiver.sender  # measures the round trip from the far end's receiver reports

    def rtt_s() -> float | None:
        return getattr(sender, "_RTCRtpSender__rtt", None)

    setattr(receiver, _BUFFER, _EagerVideo(rtt_s))


_BUFFER = "_RTCRtpReceiver__jitter_buffer"


def tap(transceiver: RTCRtpTransceiver, source: Source) -> None:
    """Route what `transceiver`'s receiver reassembles to `source` instead of a decoder. Must be
    called before the receiver starts (in the peer connection's "track" event)."""
    receiver = transceiver.receiver
    queue_name = "_RTCRtpReceiver__decoder_queue"
    if not all(hasattr(receiver, n) for n in (queue_name, _BUFFER, "_handle_rtp_packet")):
        raise RuntimeError("aiortc's receiver has changed; forwarding cannot tap it")
    setattr(receiver, queue_name, _Tap(lambda data, ts: source.receive(receiver, data, ts)))
    if source.kind == "video":
        recover_quickly(transceiver)
    else:
        setattr(receiver, _BUFFER, _EagerAudio())
    send_rtcp = receiver._send_rtcp

    async def without_own_estimate(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            return  # aiortc's receive-side REMB: not sent (module docstring, "Bandwidth")
        await send_rtcp(packet)

    receiver._send_rtcp = without_own_estimate
    receiver._send_rtcp_as_is = send_rtcp  # for the relay's own estimate (Source.limit)
    handle = receiver._handle_rtp_packet
    # The party's send-side estimate (transport_cc.py): its video packets' arrivals, fed back
    # when the answer took the extension (otherwise no packet carries a number)
    arrivals = transport_cc.Arrivals() if source.kind == "video" else None

    async def counted(packet: RtpPacket, arrival_time_ms: int) -> None:
        codecs = transceiver._codecs
        source.saw_packet(receiver, packet.ssrc,
                          bool(codecs) and packet.payload_type == codecs[0].payloadType)
        seq = packet.extensions.transport_sequence_number
        if arrivals is not None and seq is not None:
            # aiortc's arrival time, taken as the datagram is read, before decryption and
            # this receiver's work: the time after them varies with the process's load, and
            # the party's estimator would read that as a queue on its link
            arrivals.add(seq, arrival_time_ms * 1000)
        await handle(packet, arrival_time_ms)
        if arrivals is not None and seq is not None:
            now = time.monotonic()
            ours = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
            if ours is not None and arrivals.due(now):
                report = arrivals.feedback(ours, packet.ssrc, now)
                if report is not None:
                    await send_rtcp(report)  # aiortc sends bytes(packet): the bytes as they are

    receiver._handle_rtp_packet = counted


class Feed:
    """One consumer's stream of one source: packets with the consumer's own timestamps on
    `timeline`, video from a keyframe on, drops counted. `put` hands a packet over and says
    whether the consumer took it (False: it is BACKLOG_MAX behind)."""

    def __init__(self, source: Source, timeline: Timeline, put: Callable[[av.Packet], bool],
                 consumer: str) -> None:
        self.source, self.timeline, self._put, self.consumer = source, timeline, put, consumer
        self.kind = source.kind
        self.time_base = fractions.Fraction(1, CLOCK[self.kind])
        self.awaiting_keyframe = self.kind == "video"
        self.estimate: LinkEstimate | None = None  # a peer consumer's video link, once reported
        self._epoch: int | None = None
        self._base_in = self._base_out = 0
        self._last: int | None = None

    def start(self) -> None:
        self.source.feeds.add(self)
        self.source.request_keyframe()

    def stop(self) -> None:
        self.source.feeds.discard(self)

    def offer(self, frame: Encoded) -> None:
        if self.awaiting_keyframe:
            if not frame.keyframe:
                self._count("awaiting_keyframe")
                self.source.request_keyframe()
                return
            self.awaiting_keyframe = False
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = self._pts(frame)
        packet.time_base = self.time_base
        packet.is_keyframe = frame.keyframe
        if self._put(packet):
            self._count("forwarded")
            return
        self._count("backlog")
        if self.kind == "video":
            self.awaiting_keyframe = True
            self.source.request_keyframe()

    def _pts(self, frame: Encoded) -> int:
        if frame.epoch != self._epoch:  # a new session of the party: carry on from the wall
            self._epoch, self._base_in = frame.epoch, frame.timestamp
            wall = round(self.timeline.elapsed_s() * CLOCK[self.kind])
            self._base_out = wall if self._last is None else max(wall, self._last + 1)
        pts = self._base_out + frame.timestamp - self._base_in
        if self._last is not None and pts <= self._last:
            pts = self._last + 1
        self._last = pts
        return pts

    def _count(self, outcome: str) -> None:
        self.source.metrics.inc(FRAMES, outcome=outcome, kind=self.kind, consumer=self.consumer)


class ForwardTrack(MediaStreamTrack):
    """What a peer's RTCRtpSender reads to forward one source: encoded packets, which it packs
    without encoding. `want_keyframe` takes the sender's place for PLI/FIR (module docstring)."""

    def __init__(self, source: Source, consumer: str = "peer") -> None:
        super().__init__()
        self.kind = source.kind
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue(BACKLOG_MAX[self.kind])
        self.feed = Feed(source, Timeline(), self._offer, consumer)
        self.feed.start()

    def attach_to(self, sender: RTCRtpSender) -> None:
        sender.replaceTrack(self)
        sender._send_keyframe = self.want_keyframe
        if self.kind == "video":
            self._read_reports(sender)

    def _read_reports(self, sender: RTCRtpSender) -> None:
        """The consumer's receiver reports on this stream feed its LinkEstimate, and the source
        is told (Source.limit)."""
        handle = sender._handle_rtcp_packet
        feed = self.feed

        async def read(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpRrPacket | RtcpSrPacket):
                for report in packet.reports:
                    if report.ssrc == sender._ssrc:
                        feed.estimate = feed.estimate or LinkEstimate()
                        feed.estimate.report(report.fraction_lost)
                        feed.source.limit()
            await handle(packet)

        sender._handle_rtcp_packet = read

    def want_keyframe(self) -> None:
        self.feed.source.request_keyframe()

    def _offer(self, packet: av.Packet) -> bool:
        if self.readyState != "live":
            return True  # stopped: nobody reads; not a drop
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:
            return False
        return True

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        return packet

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
        self.feed.stop()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
