"""Scenario 8, relay mode: how many concurrent *recorded* relayed visits one core sustains at
640x480 with at least 25 frames/s both ways, the server's CPU per recorded visit, and the delay
a forwarded frame takes from its sender to its receiver.

Three relays in one run, each pinned to the server core, all media through a private coturn on
loopback (relay-only ICE, docs/turn.md) pinned to the load generator's core:
- baseline: the bare aiortc relay (bench/baselines/relay_bare.py), which decodes each party's
  video and encodes it again for the other (MediaRelay); no recording, no database.
- transcoding: Kinwire with KINWIRE_RELAY_TRANSCODE=1 (decode, encode per consumer, x264 for
  the recording), recorded visits.
- forwarding: Kinwire as it ships (signalling/forwarding.py: encoded frames forwarded, the
  recording remuxed), recorded visits.

Each visit is two aiortc clients (bench/clip.py: they send pre-encoded VP8 and Opus, so the
load generator encodes nothing). They do not decode either: each client taps its receivers
(`forwarding.tap`, as the server does) and counts whole encoded frames, so the load core is
spent on packets, not pixels. For the forwarding relay, which passes frames on byte for byte,
each received video frame is matched to the moment its partner sent it (the clip's frames are
told apart by their bytes): that end-to-end delay (sender's pacing, coturn twice, the server,
the receiver's reassembly) bounds the delay the relay adds.

Steps of visits at once: after a warm-up, each client's received video frames are counted over
a window; a step is sustained when every client gets >= 25 frames/s (they send 30). The ramp
stops at the first step that is not. CPU is measured as process CPU seconds per visit-second
(the machine is shared, so frame rates alone would mislead), with the whole machine's busy
share over the window beside it (% of one core, up to 100 x cores).

Each step also counts the UDP datagrams dropped for a full socket receive buffer over its
window, by the process holding the socket (server, the clients here, coturn, other), and the
notes name the side that gave out at the first step not sustained and what the load core
(clients + coturn) costs a visit: a run on 2 cores cannot show more visits than that core
drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import common
from bench.clip import ClipTrack, ToneClip, encode_clip, encode_tone
from signalling.forwarding import tap
from signalling.visit_client import VisitClient

FPS_MIN = 25
FPS_GIVE_UP = 10  # a step this starved says nothing more about the relay
# What the parties send: a webcam's usual 30 frames/s, so that ">= 25 received" has a margin;
# sent at exactly 25, one frame late or a window edge would read as 24.8 and fail the step.
SOURCE_FPS = 30
START_AT_ONCE = 8  # clients joining at once while a step starts


class TimedClip(ClipTrack):
    """The clip, noting when each of its frames was last handed to the sender."""

    def __init__(self, frames: list[bytes], fps: int) -> None:
        super().__init__(frames, fps)
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> Any:
        packet = await super().recv()
        self.sent_at[(self._n - 1) % len(self.frames)] = time.monotonic()
        return packet


class _Counter:
    """What a bench client's tapped receiver feeds (the part of `forwarding.Source` that
    `tap` calls)."""

    def __init__(self, kind: str, client: BenchClient) -> None:
        self.kind, self.client = kind, client

    def saw_packet(self, receiver: Any, ssrc: int, primary: bool) -> None:
        pass

    def receive(self, receiver: Any, data: bytes, timestamp: int) -> None:
        self.client.got(self.kind, data)


class BenchClient(VisitClient):
    """A visit client that counts received encoded frames without decoding them and, when its
    partner's clip is known (`partner`), the delay of each video frame since it was sent."""

    def __init__(self, *args: Any, clip_index: dict[bytes, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clip_index = clip_index
        self.clip: TimedClip | None = None
        self.partner: BenchClient | None = None
        self.delays: list[float] | None = None  # None: not measuring

    def _janus_track(self, track: Any, transceiver: Any) -> None:  # the same tap, with Janus
        tap(transceiver, _Counter(track.kind, self))  # type: ignore[arg-type]

    async def _new_pc(self) -> Any:
        pc = await super()._new_pc()

        @pc.on("track")
        def on_track(track: Any) -> None:  # before the receiver starts: it never decodes
            transceiver = next(t for t in pc.getTransceivers() if t.receiver.track is track)
            tap(transceiver, _Counter(track.kind, self))  # type: ignore[arg-type]

        return pc

    def _new_local_tracks(self) -> list[Any]:
        tracks = super()._new_local_tracks()
        self.clip = next((t for t in tracks if isinstance(t, TimedClip)), None)
        return tracks

    def got(self, kind: str, data: bytes) -> None:
        count = self.frames[kind] = self.frames.get(kind, 0) + 1
        if count % 10 == 1:
            self._spawn(self._notify())
        if kind != "video" or self.delays is None or self.partner is None \
                or self.partner.clip is None:
            return
        index = self.clip_index.get(data)
        sent = self.partner.clip.sent_at.get(index) if index is not None else None
        if sent is not None:
            self.delays.append(time.monotonic() - sent)


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _udp_sockets() -> dict[int, int]:
    """Every UDP socket's receive drops so far (the `drops` column of /proc/net/udp{,6}: a
    datagram the kernel discarded because the socket's receive buffer was full), by inode."""
    found: dict[int, int] = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                found[int(fields[9])] = int(fields[-1])
    return found


def _owners(pids: dict[str, int | None]) -> dict[int, str]:
    """Socket inode -> which process holds it ("server", "loadgen", "coturn")."""
    owners: dict[int, str] = {}
    for who, pid in pids.items():
        if not pid:
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owners[int(target[8:-1])] = who
    return owners


def _rcvbuf_errors() -> int:
    """The kernel's UDP RcvbufErrors so far, machine-wide (/proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def _drops_by_owner(before: dict[int, int], after: dict[int, int],
                    owners: dict[int, str]) -> dict[str, int]:
    """Receive drops over a window, by the process holding the socket ("other": a socket of
    none of them, e.g. another program on the shared machine)."""
    drops = {"server": 0, "loadgen": 0, "coturn": 0, "other": 0}
    for inode, count in after.items():
        drops[owners.get(inode, "other")] += count - before.get(inode, 0)
    return drops


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _pin_tree(pid: int, cpu: int) -> None:
    """Pin every thread of a running process (coturn starts its threads before we see it)."""
    if common.cpus() < 2:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})


def _coturn_pid(turn: Any) -> int | None:
    marker = str(turn.log_file.parent)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            if "turnserver" in cmd and marker in cmd:
                return int(entry)
    return None


async def _visit_rows(db: str, family_id: str, record: bool) -> str:
    """A relay-mode visit whose window is open now (the test suite's own helper)."""
    from tests.integration.test_visit_e2e import visit_now

    visit_id, _facility_id = await visit_now(db, family_id, media="relay", record=record)
    return visit_id


async def _pair(http: aiohttp.ClientSession, server: common.Server) -> tuple[str, str, str]:
    """A family and a person with an approved connection: (family token, person token,
    family account id)."""
    from tests.support.nodes import make_pair

    family, person = await make_pair(http, server, server, server.database_url)
    async with http.get(server.base + "/api/v1/me",
                        headers={"Authorization": f"Bearer {family}"}) as r:
        family_id = (await r.json())["account"]["id"]
    return family, person, family_id


async def _step(base: str, pid: int, visits: list[tuple[str, str, str]], clip: list[bytes],
                tone: list[bytes], *, system: str, label: str, warm_s: float, window_s: float,
                turn_pid: int | None, delays: bool = False, loopback_only: bool = True,
                control_pid: int | None = None) -> dict[str, Any]:
    """Run `visits` ((visit id, family token, person token) each) at once; measure a window.
    `pid`: the process carrying the media; `control_pid`: Kinwire's, when that is another
    (Janus), whose CPU is reported as the control plane's."""
    clients: list[BenchClient] = []
    clip_index = {frame: i for i, frame in enumerate(clip)}

    def tracks() -> list:
        return [TimedClip(clip, SOURCE_FPS), ToneClip(tone)]

    try:
        for visit_id, family, person in visits:
            pair = [BenchClient(base, token, visit_id, loopback_only=loopback_only, tracks=tracks,
                                clip_index=clip_index) for token in (family, person)]
            pair[0].partner, pair[1].partner = pair[1], pair[0]
            clients += pair
        for i in range(0, len(clients), START_AT_ONCE):
            await asyncio.gather(*(c.start() for c in clients[i:i + START_AT_ONCE]))
        # A client that has no picture within a minute (a starved machine) counts as 0 frames/s
        # rather than ending the run.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                for client in clients:
                    await client.wait_frames("video", 5)
        await asyncio.sleep(warm_s)
        before = [c.frames.get("video", 0) for c in clients]
        for client in clients:
            client.delays = [] if delays else None
        cpu0 = common.cpu_seconds(pid)
        control0 = common.cpu_seconds(control_pid) if control_pid else 0.0
        turn0 = common.cpu_seconds(turn_pid) if turn_pid else 0.0
        load0 = common.cpu_seconds(os.getpid())
        busy0, total0 = _machine_busy()
        sockets0, rcvbuf0 = _udp_sockets(), _rcvbuf_errors()
        await asyncio.sleep(window_s)
        drops = _drops_by_owner(sockets0, _udp_sockets(), _owners(
            {"server": pid, "loadgen": os.getpid(), "coturn": turn_pid}))
        rcvbuf = _rcvbuf_errors() - rcvbuf0
        fps = [(c.frames.get("video", 0) - b) / window_s
               for c, b in zip(clients, before, strict=True)]
        server_cpu = (common.cpu_seconds(pid) - cpu0) / window_s
        control_cpu = ((common.cpu_seconds(control_pid) - control0) / window_s
                       if control_pid else None)
        turn_cpu = ((common.cpu_seconds(turn_pid) - turn0) / window_s) if turn_pid else 0.0
        load_cpu = (common.cpu_seconds(os.getpid()) - load0) / window_s
        busy1, total1 = _machine_busy()
        samples = [d for c in clients for d in (c.delays or [])]
        for client in clients:
            client.delays = None
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.leave()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
    n = len(visits)
    row = {"case": label, "system": system, "visits": n, "fps_min": round(min(fps), 1),
           "fps_median": round(common.median(fps), 1),
           "server_cpu_pct": round(server_cpu * 100, 1),
           # CPU seconds per visit-second, as a percentage of one core
           "cpu_per_visit_pct": round(server_cpu * 100 / n, 2),
           "coturn_cpu_pct": round(turn_cpu * 100, 1),
           "loadgen_cpu_pct": round(load_cpu * 100, 1),
           "machine_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0)
                                     * common.cpus(), 1),
           "load_1min": _load(),
           # UDP datagrams dropped for a full receive buffer in the window, by socket holder
           **{f"udp_drops_{who}": n for who, n in drops.items()},
           "rcvbuf_errors": rcvbuf}
    if control_cpu is not None:
        row["control_cpu_per_visit_pct"] = round(control_cpu * 100 / n, 2)
    if samples:
        row.update({"delay_p50_ms": round(common.percentile(samples, 50) * 1000, 1),
                    "delay_p99_ms": round(common.percentile(samples, 99) * 1000, 1),
                    "delay_frames": len(samples)})
    return row


def _limit(row: dict[str, Any] | None) -> str:
    """Which side gave out at the first step not sustained: the one whose sockets dropped
    datagrams for a full receive buffer (a process that falls behind stops reading them)."""
    if row is None:
        return "every forwarding step sustained"
    server = row["udp_drops_server"]
    load = row["udp_drops_loadgen"] + row["udp_drops_coturn"]
    side = "the relay (server)" if server > load else \
        "the load generator (clients, coturn)" if load > server else "neither (no drops)"
    return (f"first step not sustained: {row['visits']} visits ({row['fps_min']} frames/s); "
            f"receive-buffer drops: server {server}, clients {row['udp_drops_loadgen']}, coturn "
            f"{row['udp_drops_coturn']}, other {row['udp_drops_other']}: limited by {side}; "
            f"server {row['server_cpu_pct']}% of its core, load core "
            f"{row['loadgen_cpu_pct'] + row['coturn_cpu_pct']:.1f}%, machine busy "
            f"{row['machine_busy_pct']}% of {common.cpus() * 100}%")


async def _ramp(step: Any, steps: list[int]) -> tuple[list[dict[str, Any]], int]:
    """Steps until one falls below FPS_GIVE_UP; returns the rows and the most visits sustained
    (every step up to it at >= FPS_MIN). Steps past the first unsustained one still measure
    CPU per visit, which is what a shared, busy machine lets us compare."""
    rows, sustained, failed = [], 0, False
    for n in steps:
        row = await step(n)
        rows.append(row)
        failed = failed or row["fps_min"] < FPS_MIN
        if not failed:
            sustained = n
        if row["fps_min"] < FPS_GIVE_UP:
            break
    return rows, sustained


@contextlib.asynccontextmanager
async def _bare(turn: Any) -> Any:
    port = common.free_port()
    proc = common.spawn([sys.executable, "-m", "bench.baselines.relay_bare", str(port),
                         turn.url, turn.secret], cwd=common.ROOT)
    try:
        await common.wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        common.stop(proc)


async def _kinwire_ramp(folder: Path, clip: list[bytes], tone: list[bytes], steps: list[int],
                        *, system: str, timing: dict[str, Any], settings: dict[str, Any],
                        media_pid: int | None = None, loopback_only: bool = True
                        ) -> tuple[list, int, dict]:
    """Recorded visits through a fresh Kinwire server with `settings`: the rows, the most
    visits sustained, and the relay's /metrics counters at the end. `media_pid`: the process
    carrying the media when it is not Kinwire (Janus); Kinwire's CPU is then the control
    plane's."""
    async with common.database("sqlite", folder) as db, \
            common.kinwire(db, folder, visit_minute_s=60, ws_commands_per_s=1000,
                           **settings) as server, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        pairs = [await _pair(http, server) for _ in range(max(steps))]

        async def step(n: int) -> Any:
            visits = [(await _visit_rows(db, family_id, True), family, person)
                      for family, person, family_id in pairs[:n]]
            return await _step(server.base, media_pid or server.proc.pid, visits, clip, tone,
                               system=system, label=f"{n} recorded",
                               delays=system != "transcoding", loopback_only=loopback_only,
                               control_pid=server.proc.pid if media_pid else None, **timing)
        rows, sustained = await _ramp(step, steps)
        counters = await common.scrape(server.base, ("kinwire_relay_",))
    return rows, sustained, counters


async def _relay_ramp(wd: Path, turn: Any, clip: list[bytes], tone: list[bytes],
                      steps: list[int], *, transcode: bool,
                      timing: dict[str, Any]) -> tuple[list, int, dict]:
    """Kinwire's own relay, forwarding or transcoding, all media through coturn."""
    system = "transcoding" if transcode else "forwarding"
    return await _kinwire_ramp(
        wd / system, clip, tone, steps, system=system, timing=timing,
        settings=dict(turn_secret=turn.secret, turn_urls=turn.url, relay_loopback_only="true",
                      relay_transcode=str(transcode).lower()))


async def _janus_ramp(wd: Path, clip: list[bytes], tone: list[bytes], steps: list[int], *,
                      timing: dict[str, Any]) -> tuple[list, int]:
    """Recorded visits through a private Janus (deploy/janus/) pinned to the server core, with
    a Kinwire beside it as the control plane (KINWIRE_MEDIA_ENGINE=janus: rooms, tokens, the
    events that bill): Janus's CPU is the media's, Kinwire's the control plane's. The clients
    reach Janus directly, not through coturn: Janus's candidates are on this machine's own
    address, which the private coturn (relaying from 127.0.0.1) does not reach."""
    from server.http.janus_events import PATH
    from tests.support.janus import running_janus

    folder = wd / "janus"
    port = common.free_port()
    async with running_janus(folder / "server", events_url=f"http://127.0.0.1:{port}{PATH}"
                             ) as janus:
        assert janus.proc is not None
        _pin_tree(janus.proc.pid, common.SERVER_CPU)
        s = janus.secrets
        rows, sustained, _ = await _kinwire_ramp(
            folder, clip, tone, steps, system="janus", timing={**timing, "turn_pid": None},
            media_pid=janus.proc.pid, loopback_only=False,
            settings=dict(port=port, media_engine="janus", janus_urls=janus.api_url,
                          janus_admin_urls=janus.admin_url, janus_api_secret=s.api_secret,
                          janus_admin_secret=s.admin_secret, janus_token_secret=s.token_secret,
                          janus_room_admin_key=s.room_admin_key,
                          janus_events_password=s.events_password,
                          janus_recordings_dir=str(janus.recordings_dir)))
    return rows, sustained


async def run(size: str) -> dict[str, Any]:
    from tests.support import turn_server

    tiny = size == "tiny"
    width, height = (320, 240) if tiny else (640, 480)
    bare_steps, transcode_steps = ([1], [1]) if tiny else ([1, 2, 3], [1, 2])
    forward_steps = [1] if tiny else [1, 2, 4, 8, 12, 16]
    warm_s, window_s = (0.5, 1.5) if tiny else (3.0, 5.0)
    turn_server.RELAY_PORTS = 4 * max(forward_steps) * 2 + 16  # four allocations a visit
    clip = await encode_clip(width, height, SOURCE_FPS, 4.0)
    tone = await encode_tone()
    load_before = _load()
    with common.workdir("relay") as wd:
        async with turn_server.private_coturn() as turn:
            turn_pid = _coturn_pid(turn)
            if turn_pid:
                _pin_tree(turn_pid, common.LOAD_CPU)
            timing = {"warm_s": warm_s, "window_s": window_s, "turn_pid": turn_pid}
            async with _bare(turn) as (base, pid):
                def bare_step(n: int) -> Any:
                    visits = [(f"bare{i}", f"v{i}:family", f"v{i}:person") for i in range(n)]
                    return _step(base, pid, visits, clip, tone, system="baseline",
                                 label=f"{n} not recorded", **timing)
                bare_rows, bare_sustained = await _ramp(bare_step, bare_steps)
            old_rows, old_sustained, _ = await _relay_ramp(
                wd, turn, clip, tone, transcode_steps, transcode=True, timing=timing)
            rows, sustained, counters = await _relay_ramp(
                wd, turn, clip, tone, forward_steps, transcode=False, timing=timing)
            janus_rows, janus_sustained = await _janus_ramp(wd, clip, tone, forward_steps,
                                                            timing=timing)
    one, old_one = rows[0], old_rows[0]
    ratio = one["cpu_per_visit_pct"] / max(old_one["cpu_per_visit_pct"], 0.01)
    best = next((r for r in rows if r["visits"] == sustained), one)
    # A starved step does less work, so its CPU per visit would flatter: take the largest
    # sustained step's.
    by_cpu = 100 / max(best["cpu_per_visit_pct"], 0.01)
    delay_p99 = max((r.get("delay_p99_ms", 0.0) for r in rows if r["fps_min"] >= FPS_MIN),
                    default=float("nan"))
    # The load core (the clients in this process, and coturn) does about as much packet work
    # per visit as the relay: what it can drive bounds what any run on 2 cores can show.
    load_per_visit = (best["loadgen_cpu_pct"] + best["coturn_cpu_pct"]) / best["visits"]
    load_by_cpu = 100 / max(load_per_visit, 0.01)
    failed = next((r for r in rows if r["fps_min"] < FPS_MIN), None)
    # Janus: its CPU per visit at its largest sustained step (or its first), against the
    # forwarding relay's at the same number of visits where both ran it.
    janus_best = next((r for r in janus_rows if r["visits"] == janus_sustained), janus_rows[0])
    janus_by_cpu = 100 / max(janus_best["cpu_per_visit_pct"], 0.01)
    same = next((r for r in rows if r["visits"] == janus_best["visits"]), one)
    janus_ratio = janus_best["cpu_per_visit_pct"] / max(same["cpu_per_visit_pct"], 0.01)
    control = janus_best.get("control_cpu_per_visit_pct", float("nan"))
    dropped = sum(v for k, v in counters.items()
                  if k.startswith("kinwire_relay_frames_total") and 'outcome="backlog"' in k)
    return {"scenario": "relay", "size": size,
            "rows": [*rows, *janus_rows, *old_rows, *bare_rows],
            "targets": [
                common.target(f"recorded visits one core sustains at {width}x{height}, "
                              f">= {FPS_MIN} frames/s both ways (goal >= 15)", sustained,
                              ">= 15", sustained >= 15),
                common.target("server CPU per recorded visit, forwarding / transcoding, "
                              "1 visit", ratio, "<= 0.067", ratio <= 1 / 15),
                common.target(f"server CPU per recorded visit, forwarding at {best['visits']} "
                              "visits (the most sustained) / transcoding at 1 (all it carries)",
                              best["cpu_per_visit_pct"] / max(old_one["cpu_per_visit_pct"],
                                                              0.01), "reported", True),
                common.target("end-to-end frame delay p99 through the forwarding relay, ms "
                              "(bounds the delay it adds)", delay_p99, "<= 20",
                              delay_p99 <= 20),
                common.target(f"recorded visits one core carries by CPU (100% / CPU per visit at "
                              f"{best['visits']} visits, the most sustained)", by_cpu, ">= 15",
                              by_cpu >= 15),
                common.target(f"visits the load core drives by CPU (100% / clients' and "
                              f"coturn's CPU per visit at {best['visits']} visits)",
                              load_by_cpu, "reported", True),
                common.target("recorded visits sustained, transcoding relay", old_sustained,
                              "reported", True),
                common.target("recorded visits sustained through Janus", janus_sustained,
                              "reported", True),
                common.target(f"Janus CPU per recorded visit / the forwarding relay's, at "
                              f"{janus_best['visits']} visits", janus_ratio, "reported", True),
                common.target(f"recorded visits one core carries through Janus by CPU (at "
                              f"{janus_best['visits']} visits)", janus_by_cpu, "reported",
                              True),
                common.target("Kinwire's control-plane CPU per Janus visit, % of a core",
                              control, "reported", True),
                common.target("visits sustained, bare aiortc relay (not recorded)",
                              bare_sustained, "reported", True)],
            "notes": [f"clients send pre-encoded VP8 {width}x{height} at {SOURCE_FPS} frames/s "
                      "and a pre-encoded 400 Hz Opus tone, and count encoded frames without "
                      "decoding; "
                      "coturn pinned to the load core with the clients, each relay to the "
                      "server core; baseline: bench/baselines/relay_bare.py",
                      "Janus: a private janus (deploy/janus/) pinned to the server core with a "
                      "Kinwire beside it as the control plane; its clients reach it without "
                      "coturn (Janus's candidates are on this machine's address, which the "
                      "loopback coturn does not relay to)",
                      f"steps: forwarding and Janus {forward_steps}, transcoding "
                      f"{transcode_steps}, "
                      f"baseline {bare_steps}; warm {warm_s} s, window {window_s} s",
                      f"forwarding at its best step ({best['visits']} visits): "
                      f"{best['cpu_per_visit_pct']}% of a core a visit",
                      f"load core at that step: clients {best['loadgen_cpu_pct']}% + coturn "
                      f"{best['coturn_cpu_pct']}% = {load_per_visit:.2f}% a visit "
                      f"(~{load_by_cpu:.0f} visits a core)",
                      _limit(failed),
                      f"frames the forwarding relay dropped for backlog: {dropped:.0f}",
                      f"load average: {load_before} before, {_load()} after"]}
