"""The forwarding relay's parts in one process (signalling/forwarding.py, signalling/remux.py):
real aiortc peers on loopback, a "server" pair of peer connections in between that taps the
incoming receivers and forwards what they reassemble.

Adversaries: a party that reconnects mid-stream (a new session: a new random RTP origin and new
sequence numbers), a watcher that joins long after the only keyframe (aiortc's encoder sends
one every 3000 frames unless asked), a consumer that stops reading (backlog), and a recording
closed while frames are still arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import av
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from server.http.metrics import Metrics
from signalling.forwarding import (
    BACKLOG_MAX,
    ESTIMATE_MAX_BPS,
    ESTIMATE_MIN_BPS,
    FRAMES,
    KEYFRAME_REQUESTS,
    ForwardTrack,
    Source,
    forward_codecs,
    recover_quickly,
    tap,
    vp8_size,
)
from signalling.media import SyntheticVideoTrack, ToneAudioTrack
from signalling.remux import RemuxRecording
from tests.integration.test_relay import until

SIZE = (160, 120)
FPS = 15


class Party:
    """A client that sends a synthetic camera and microphone, and the server's peer connection
    that receives them into the party's sources."""

    def __init__(self, sources: dict[str, Source], size: tuple[int, int] = SIZE) -> None:
        self.sources, self.size = sources, size
        self.client: RTCPeerConnection | None = None
        self.server: RTCPeerConnection | None = None
        self.server_tracks: list[Any] = []
        self.limits: list[int] = []  # the bitrates (REMB) the relay asked the camera to keep to

    async def connect(self) -> None:
        self.client, self.server = RTCPeerConnection(), RTCPeerConnection()
        self.client.addTrack(SyntheticVideoTrack(*self.size, fps=FPS))
        self.client.addTrack(ToneAudioTrack())
        server = self.server

        @server.on("track")
        def on_track(track: Any) -> None:
            transceiver = next(t for t in server.getTransceivers() if t.receiver.track is track)
            tap(transceiver, self.sources[track.kind])
            self.server_tracks.append(track)

        camera = next(t.sender for t in self.client.getTransceivers() if t.kind == "video")
        handle = camera._handle_rtcp_packet

        async def noted(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                self.limits.append(unpack_remb_fci(packet.fci)[0])
            await handle(packet)

        camera._handle_rtcp_packet = noted
        await self.client.setLocalDescription(await self.client.createOffer())
        await server.setRemoteDescription(self.client.localDescription)
        forward_codecs(server)
        for transceiver in server.getTransceivers():
            self.sources[transceiver.kind].attach(transceiver.receiver)
        await server.setLocalDescription(await server.createAnswer())
        await self.client.setRemoteDescription(server.localDescription)

    async def close(self) -> None:
        for pc in (self.client, self.server):
            if pc is not None:
                await pc.close()


class Viewer:
    """A receive-only client (a party or a watcher) fed by ForwardTracks of the given sources:
    counts decoded frames and notes the time of the first video frame and every video RTP
    packet's sequence number and timestamp."""

    def __init__(self, sources: dict[str, Source], recover: bool = True) -> None:
        self.sources, self.recover = sources, recover
        self.client, self.server = RTCPeerConnection(), RTCPeerConnection()
        self.frames = {"video": 0, "audio": 0}
        self.first_video_at: float | None = None
        self.rtp: list[tuple[int, int, int]] = []  # (ssrc, sequence, timestamp)
        self.sizes: set[tuple[int, int]] = set()
        self.tracks: list[ForwardTrack] = []
        self.lose_next = self.lose_retransmissions = False  # the link's losses, when set
        self.loss = 0.0  # the share of video packets lost on the way, at random
        self._random = random.Random(15)
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        client, server = self.client, self.server
        for kind in ("video", "audio"):
            client.addTransceiver(kind, direction="recvonly")

        @client.on("track")
        def on_track(track: Any) -> None:
            if self.recover:  # as every client of ours does (a browser recovers likewise)
                recover_quickly(next(t for t in client.getTransceivers()
                                     if t.receiver.track is track))
            self._tasks.append(asyncio.create_task(self._count(track)))

        watched = next(t for t in client.getTransceivers() if t.kind == "video")
        video = watched.receiver
        handle = video._handle_rtp_packet

        async def noted(packet: Any, arrival_time_ms: int) -> None:
            if packet.payload_type != watched._codecs[0].payloadType:  # RTX
                if self.lose_retransmissions:
                    return
            elif self.lose_next or self._random.random() < self.loss:
                self.lose_next = False
                return
            else:
                self.rtp.append((packet.ssrc, packet.sequence_number, packet.timestamp))
            await handle(packet, arrival_time_ms)

        video._handle_rtp_packet = noted
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        forward_codecs(server)
        for transceiver in server.getTransceivers():
            track = ForwardTrack(self.sources[transceiver.kind])
            self.tracks.append(track)
            track.attach_to(transceiver.sender)
            transceiver.direction = "sendrecv"
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)

    async def _count(self, track: Any) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames[track.kind] += 1
                if track.kind == "video":
                    self.sizes.add((frame.width, frame.height))
                    if self.first_video_at is None:
                        self.first_video_at = loop.time()

    async def close(self) -> None:
        await self.client.close()
        await self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def new_sources(metrics: Metrics) -> dict[str, Source]:
    return {kind: Source(kind, metrics) for kind in ("video", "audio")}


class Recorded(NamedTuple):
    family_sources: dict[str, Source]
    person_sources: dict[str, Source]
    family: Party
    person: Party
    recording: RemuxRecording


def recorded_pair(tmp_path: Path, visit_id: str, family_size: tuple[int, int],
                  person_size: tuple[int, int]) -> Recorded:
    """Both parties' sources and peers, and a remuxed recording of their four streams (family
    video, person video, family audio, person audio), not yet started."""
    metrics = Metrics()
    family_sources, person_sources = new_sources(metrics), new_sources(metrics)
    return Recorded(family_sources, person_sources, Party(family_sources, family_size),
                    Party(person_sources, person_size),
                    RemuxRecording(tmp_path, visit_id, [
                        family_sources["video"], person_sources["video"],
                        family_sources["audio"], person_sources["audio"]]))


async def start_recording(pair: Recorded) -> None:
    """Connect both parties and start the recording once both cameras deliver."""
    await pair.family.connect()
    await pair.person.connect()
    await until(lambda: pair.family_sources["video"].frames > 0
                and pair.person_sources["video"].frames > 0, 20)
    pair.recording.start()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dropped(metrics: Metrics, **labels: str) -> float:
    return sum(metrics.counter_value(FRAMES, outcome=outcome, **labels)
               for outcome in ("backlog", "awaiting_keyframe"))


async def test_frames_are_forwarded_undecoded_and_numbered_on_across_a_reconnect() -> None:
    metrics = Metrics()
    sources = new_sources(metrics)
    family, viewer = Party(sources), Viewer(sources)
    loop = asyncio.get_running_loop()
    try:
        await family.connect()
        await viewer.connect()
        await until(lambda: viewer.frames["video"] >= 20 and viewer.frames["audio"] >= 50, 20)
        assert viewer.sizes == {SIZE}
        # Nothing reached the server side's decoders: their tracks never got a frame.
        assert family.server_tracks and all(t._queue.qsize() == 0 for t in family.server_tracks)
        assert sources["video"].packets >= sources["video"].frames >= 20
        assert sources["video"].last_at is not None
        # The family's client restarts: a new session, new RTP origin and sequence numbers.
        await family.close()
        await asyncio.sleep(0.5)
        gone_at, before = loop.time(), viewer.frames["video"]
        family = Party(sources)
        await family.connect()
        await until(lambda: viewer.frames["video"] >= before + 20, 20)
    finally:
        await family.close()
        await viewer.close()
    ssrcs = {ssrc for ssrc, _, _ in viewer.rtp}
    assert len(ssrcs) == 1, "one outgoing stream throughout"
    sequence = [seq for _, seq, _ in viewer.rtp]
    steps = [(b - a) % 65536 for a, b in itertools.pairwise(sequence)]
    # Contiguous. This host drops UDP under load (RcvbufErrors), so a lost packet may show as a
    # step of a few; a sender that carried the new session's numbers on would jump by
    # thousands (or go back).
    assert all(1 <= step <= 20 for step in steps), sorted(set(steps))[-5:]
    assert steps.count(1) >= 0.98 * len(steps), sorted(set(steps))
    stamps = [ts for _, _, ts in viewer.rtp]
    jumps = [(b - a) % (1 << 32) for a, b in itertools.pairwise(stamps)]
    assert all(j < 90_000 * 30 for j in jumps), "timestamps never go back"
    # Across the reconnect the timestamps jump by about the time that passed (the family was
    # away >= 0.5 s): stamps are taken as frames leave the relay, and the old session's last
    # ones, queued, left up to ~0.1 s late under load (0.478 s seen in a full run); a feed that
    # ran its numbers on would step one frame (1/15 s).
    assert max(jumps) >= 90_000 * 0.35, max(jumps)
    assert max(jumps) <= 90_000 * (loop.time() - gone_at + 1.0)
    assert metrics.counter_value(FRAMES, outcome="forwarded", kind="video",
                                 consumer="peer") >= 40


async def test_a_late_watcher_gets_a_keyframe_within_a_second() -> None:
    metrics = Metrics()
    sources = new_sources(metrics)
    family, first = Party(sources), Viewer(sources)
    late = Viewer(sources)
    loop = asyncio.get_running_loop()
    try:
        await family.connect()
        await first.connect()
        await until(lambda: first.frames["video"] >= 2 * FPS, 20)  # long past the keyframe
        requests = metrics.counter_value(KEYFRAME_REQUESTS)
        await late.connect()
        joined_at = loop.time()
        await until(lambda: late.first_video_at is not None, 5)
        assert late.first_video_at is not None
        assert late.first_video_at - joined_at < 1.0
        assert metrics.counter_value(KEYFRAME_REQUESTS) > requests
    finally:
        await family.close()
        await first.close()
        await late.close()


@pytest.mark.parametrize("recover", [True, False], ids=["ours", "aiortc's"])
async def test_a_packet_lost_with_its_retransmission_costs_the_viewer_a_round_trip(
        recover: bool) -> None:
    """The adversary is the link: a video packet and every retransmission lost on the way to a
    viewer (a loaded host's full UDP buffers do that). Our receivers give the frame up and ask
    for a keyframe; aiortc's own buffer waits for 512 more packets (half a minute at this size:
    the stalled-viewer failures of loaded full runs). The second case shows the first is
    needed."""
    metrics = Metrics()
    sources = new_sources(metrics)
    family, viewer = Party(sources), Viewer(sources, recover=recover)
    try:
        await family.connect()
        await viewer.connect()
        await until(lambda: viewer.frames["video"] >= 10, 20)
        viewer.lose_retransmissions = viewer.lose_next = True
        await until(lambda: not viewer.lose_next, 5)
        before = viewer.frames["video"]
        await asyncio.sleep(3.0)
        got = viewer.frames["video"] - before
    finally:
        await family.close()
        await viewer.close()
    if recover:
        assert got >= FPS, got  # 3 s at 15 frames/s, less a round trip and the keyframe
    else:
        assert got <= 2, got


async def test_a_thin_link_to_a_consumer_holds_the_party_s_camera_to_it() -> None:
    """The relay cannot thin a stream it does not encode: a consumer whose link loses a third
    of the video (a link thinner than the camera's rate) must make the party's camera send
    less. The relay reads the consumer's receiver reports and asks the party (REMB) to keep
    under what that link carries; with a clean link it asks nothing (the camera's own control
    decides). aiortc's sender, like a browser's, takes the REMB as its encoder's target."""
    metrics = Metrics()
    sources = new_sources(metrics)
    family, viewer = Party(sources), Viewer(sources)
    try:
        await family.connect()
        await viewer.connect()
        await until(lambda: viewer.frames["video"] >= 2 * FPS, 20)  # receiver reports came
        assert family.limits == [], "a clean link asks nothing"
        viewer.loss = 0.33
        await until(lambda: family.limits and family.limits[-1] < 0.5 * ESTIMATE_MAX_BPS, 20)
        lowest = min(family.limits)
        viewer.loss = 0.0  # the link recovers: the limit rises again
        await until(lambda: family.limits[-1] > 1.25 * lowest, 30)
    finally:
        await family.close()
        await viewer.close()
    assert lowest >= ESTIMATE_MIN_BPS


async def test_a_stalled_consumer_drops_counted_frames_and_holds_no_more() -> None:
    metrics = Metrics()
    sources = new_sources(metrics)
    family, viewer = Party(sources), Viewer(sources)
    stalled = ForwardTrack(sources["video"], consumer="stalled")  # nobody reads it
    try:
        await family.connect()
        await viewer.connect()
        await until(lambda: metrics.counter_value(FRAMES, outcome="backlog", kind="video",
                                                  consumer="stalled") >= 5, 20)
        assert stalled._queue.qsize() <= BACKLOG_MAX["video"]
        before = viewer.frames["video"]
        try:
            await until(lambda: viewer.frames["video"] >= before + 10, 10)  # the others go on
        except AssertionError as exc:  # failed once in a loaded full run: say what stood still
            def peer(outcome: str) -> float:
                return metrics.counter_value(FRAMES, outcome=outcome, kind="video",
                                             consumer="peer")
            raise AssertionError(
                f"viewer: {viewer.frames} (from {before} video); family frames in "
                f"{sources['video'].frames}; the viewer's feed awaiting a keyframe "
                f"{peer('awaiting_keyframe')}, backlog {peer('backlog')}; keyframe requests "
                f"{metrics.counter_value(KEYFRAME_REQUESTS)}") from exc
        assert dropped(metrics, kind="video", consumer="peer") <= 1  # only its first wait
    finally:
        stalled.stop()
        await family.close()
        await viewer.close()


async def test_a_remuxed_recording_has_both_parties_in_step(tmp_path: Path) -> None:
    pair = recorded_pair(tmp_path, "vis_x", (160, 120), (128, 96))
    _, person_sources, family, person, recording = pair
    loop = asyncio.get_running_loop()
    try:
        await start_recording(pair)
        started = loop.time()
        await asyncio.sleep(4.0)
        await person.close()  # the person's kiosk drops for a while, then comes back
        await asyncio.sleep(1.5)
        person = Party(person_sources, (128, 96))
        await person.connect()
        await asyncio.sleep(4.0)
        path = await recording.close()  # while both still send
        expected_s = loop.time() - started
    finally:
        await family.close()
        await person.close()
    assert path == tmp_path / "vis_x.webm" and names(tmp_path) == ["vis_x.webm"]
    with av.open(str(path)) as container:
        streams = container.streams
        assert [s.metadata.get("title") for s in streams] == \
            ["family video", "person video", "family audio", "person audio"]
        assert [s.codec_context.name for s in streams] == ["vp8", "vp8", "opus", "opus"]
        assert (streams[0].codec_context.width, streams[1].codec_context.width) == (160, 128)
        duration_s = container.duration / 1_000_000
        decoded = dict.fromkeys(range(4), 0)
        last_s = dict.fromkeys(range(4), 0.0)
        for packet in container.demux():
            for frame in packet.decode():
                decoded[packet.stream.index] += 1
                last_s[packet.stream.index] = float(frame.pts * frame.time_base)
    assert abs(duration_s - expected_s) <= 0.5, (duration_s, expected_s)
    assert decoded[0] >= FPS * (expected_s - 1.5), decoded
    assert decoded[1] >= FPS * (expected_s - 1.5 - 2.5), decoded  # the person was away
    assert decoded[2] >= 50 * (expected_s - 1.5) and decoded[3] >= 50 * (expected_s - 4), decoded
    assert all(abs(last_s[i] - expected_s) <= 0.7 for i in range(4)), (last_s, expected_s)


def test_vp8_size_reads_a_keyframe_only() -> None:
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 176, 144, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 90_000)
    frames = []
    for n in range(3):
        frame = av.VideoFrame(176, 144, "yuv420p")
        frame.pts = n * 3000
        frames += [bytes(p) for p in encoder.encode(frame)]
    frames += [bytes(p) for p in encoder.encode(None)]
    assert vp8_size(frames[0]) == (176, 144)
    assert [vp8_size(f) for f in frames[1:]] == [None] * (len(frames) - 1)


def vp8_packet(seq: int, timestamp: int, *, start: bool, marker: bool) -> Any:
    from aiortc.rtp import RtpPacket

    packet = RtpPacket(payload_type=97, sequence_number=seq, timestamp=timestamp)
    packet.marker = int(marker)
    packet.payload = bytes([0x10 if start else 0x00]) + bytes([seq % 256]) * 10
    packet._data = packet.payload[1:]
    return packet


def test_a_video_frame_leaves_the_buffer_with_its_marker_packet() -> None:
    from aiortc.jitterbuffer import JitterBuffer

    from signalling.forwarding import _EagerVideo

    eager, stock = _EagerVideo(), JitterBuffer(capacity=512, is_video=True)
    # Frame 1 (seq 10-12) in order; frame 2 (13-15) with its marker before its middle packet;
    # frame 3 (16-18) loses seq 17.
    arrivals = [vp8_packet(10, 3000, start=True, marker=False),
                vp8_packet(11, 3000, start=False, marker=False),
                vp8_packet(12, 3000, start=False, marker=True),
                vp8_packet(13, 6000, start=True, marker=False),
                vp8_packet(15, 6000, start=False, marker=True),
                vp8_packet(14, 6000, start=False, marker=False),
                vp8_packet(16, 9000, start=True, marker=False),
                vp8_packet(18, 9000, start=False, marker=True)]
    out = [(p.sequence_number, eager.add(p)[1]) for p in arrivals]
    done = {seq: frame.timestamp for seq, frame in out if frame is not None}
    assert done == {12: 3000, 14: 6000}, "each frame as soon as it is complete, not later"
    frame = next(f for s, f in out if s == 12)
    assert frame.data == bytes([10]) * 10 + bytes([11]) * 10 + bytes([12]) * 10
    assert next(f for s, f in out if s == 14).data == \
        bytes([13]) * 10 + bytes([14]) * 10 + bytes([15]) * 10
    # aiortc's own buffer waits for the next frame's first packet to see one complete.
    stock_out = {p.sequence_number: stock.add(p)[1] for p in arrivals}
    assert stock_out[12] is None and stock_out[13] is not None


def test_a_lost_packet_is_given_up_on_and_a_keyframe_asked_for() -> None:
    from signalling.forwarding import _EagerVideo

    buffer = _EagerVideo()
    buffer.LOSS_WAIT_S = 0.05
    # Frame 1 (10-11) loses 11 for good; frames 2 and 3 arrive whole behind it.
    assert buffer.add(vp8_packet(10, 3000, start=True, marker=False)) == (False, None)
    assert buffer.add(vp8_packet(12, 6000, start=True, marker=False)) == (False, None)
    assert buffer.add(vp8_packet(13, 6000, start=False, marker=True)) == (False, None)
    time.sleep(0.06)
    pli, frame = buffer.add(vp8_packet(14, 9000, start=True, marker=True))
    assert pli is True, "a keyframe is asked for"
    assert frame is not None and frame.timestamp == 6000, "frame 1 skipped, frame 2 goes on"
    assert buffer.skipped == 1
    pli, frame = buffer.add(vp8_packet(15, 12000, start=True, marker=True))
    assert frame is not None and frame.timestamp == 9000  # the next one, in order


def test_a_lost_packet_is_waited_for_a_round_trip_on_a_long_link() -> None:
    """Adversary: a family on a long, lossy link (150 ms each way). Its retransmission comes a
    round trip after the NACK; a buffer that gives up sooner drops a frame that was coming,
    and the kiosk waits for a keyframe (8 frames/s against 19 in direct mode, bench links)."""
    from signalling.forwarding import _EagerVideo

    rtt = [None]
    buffer = _EagerVideo(lambda: rtt[0])
    assert buffer.loss_wait_s() == _EagerVideo.LOSS_WAIT_S  # no round trip known yet
    rtt[0] = 0.32
    assert 0.5 <= buffer.loss_wait_s() <= _EagerVideo.LOSS_WAIT_MAX_S
    rtt[0] = 5.0  # a keyframe beats waiting that long
    assert buffer.loss_wait_s() == _EagerVideo.LOSS_WAIT_MAX_S
    rtt[0] = 0.32
    # Frame 1 (10-11) loses 11; 0.2 s later (past the old fixed 0.15 s) frame 2 is whole
    # behind it, and then the retransmission of 11 arrives, a round trip after the loss.
    assert buffer.add(vp8_packet(10, 3000, start=True, marker=False)) == (False, None)
    assert buffer.add(vp8_packet(12, 6000, start=True, marker=False)) == (False, None)
    time.sleep(0.2)
    assert buffer.add(vp8_packet(13, 6000, start=False, marker=True)) == (False, None), \
        "gave up on frame 1 before its retransmission could come"
    _, frame = buffer.add(vp8_packet(11, 3000, start=False, marker=True))
    assert frame is not None and frame.timestamp == 3000 and buffer.skipped == 0
    _, frame = buffer.add(vp8_packet(14, 9000, start=True, marker=True))
    assert frame is not None and frame.timestamp == 6000  # frame 2 follows, nothing skipped


def test_media_seen_reads_what_each_party_sent_per_kind() -> None:
    """The presence reading (Relay.media_seen): frames, RTP packets and the last frame's time,
    per party and kind; a frame from a replaced session does not count."""
    from types import SimpleNamespace

    from signalling.relayed_visit import VisitRelay

    relay = SimpleNamespace(metrics=Metrics(), transcode=False)
    row = SimpleNamespace(id="vis_1", end_at=None, record=False, family_id="acc_f",
                          person_id="acc_p")
    held = VisitRelay(relay, row, holder="n/t", slot=0)  # type: ignore[arg-type]
    assert held.media_seen() == {"family": {"video": (0, 0, None), "audio": (0, 0, None)},
                                 "person": {"video": (0, 0, None), "audio": (0, 0, None)}}
    old, new = object(), object()
    video = held.sources[("family", "video")]
    video.attach(old)
    video.attach(new)  # the family rejoined
    before = time.monotonic()
    for n in range(3):
        video.saw_packet(new, 1234, True)
        video.saw_packet(new, 1234, True)
        video.receive(new, b"\x00\x00\x00", n * 3000)
    video.saw_packet(old, 99, True)
    video.receive(old, b"\x00", 0)  # late, from the replaced session
    seen = held.media_seen()
    frames, packets, last_at = seen["family"]["video"]
    assert (frames, packets) == (3, 6) and last_at is not None and last_at >= before
    assert seen["person"]["video"] == (0, 0, None)


VISIT_S = 30.0


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_recording_lasts_as_long_as_the_visit_and_plays(tmp_path: Path) -> None:
    """Issue 15: a visit's recording opens in PyAV with its duration right within 1 s a
    minute, with both parties' streams; the person drops out for 5 s midway. Half a minute,
    held to half a second: the rule is a rate, and the issue's 2-minute visit (which passed here
    within 2 s) and then a 1-minute one cost the suite the waiting."""
    pair = recorded_pair(tmp_path, "vis_long", (96, 72), (96, 72))
    _, person_sources, family, person, recording = pair
    loop = asyncio.get_running_loop()
    try:
        await start_recording(pair)
        started = loop.time()
        await asyncio.sleep(VISIT_S / 2)
        await person.close()
        await asyncio.sleep(5.0)
        person = Party(person_sources, (96, 72))
        await person.connect()
        await asyncio.sleep(max(0.0, started + VISIT_S - loop.time()))
        path = await recording.close()
        expected_s = loop.time() - started
    finally:
        await family.close()
        await person.close()
    assert path is not None
    with av.open(str(path)) as container:
        duration_s = container.duration / 1_000_000
        video = [0, 0]
        for packet in container.demux(video=(0, 1)):
            video[packet.stream.index] += len(packet.decode())
    print(f"recording {duration_s:.3f} s for a visit of {expected_s:.3f} s")
    assert abs(duration_s - expected_s) <= expected_s / 60, (duration_s, expected_s)  # 1 s a min
    assert video[0] >= FPS * (expected_s - 3), video
    assert video[1] >= FPS * (expected_s - 5 - 5), video
