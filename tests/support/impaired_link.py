"""An impaired network link for tests (issue 21): a family's client in its own network namespace,
reaching the rest of the test (server, coturn, kiosk, all in the test's namespace) through a
userspace link emulator that applies delay, random loss, a rate cap and total outages.

    with ImpairedLink(seed=7) as link:          # needs root (CAP_NET_ADMIN)
        link.set(delay_ms=150, loss=0.02)      # each way
        link.set(rate_kbit=1000)               # each way; a queue of RATE_QUEUE_S, then drops
        link.down(); link.up()                 # a total outage: every packet dropped
        link.down(only="udp")                  # UDP alone (the media), TCP still through
        link.run(["python", "-c", ...])        # a process on the family's side
        link.far                               # the family's address, link.near the test's

Why userspace: this machine's kernel has no netem (nor tbf), so `tc` cannot impair a veth. The
kernel does allow TUN devices and network namespaces, so the link is two TUN devices: `far` is
moved into a new namespace (the family's), `near` stays in the test's namespace, and a thread
reads IP packets from each and writes them to the other after the impairments. A TUN device opened
here stays attached to this process's file descriptor when moved into a namespace, so the thread
needs no namespace switching. The family's side gets one address (10.77.n.2) and a route to
`near`; the test's side is the host's own IPv4 address (the one its default route leaves from),
with a route to the family's address through the link: the server, coturn and the kiosk listen
on it, and the test's own requests to it stay local (they never cross the link).

Nothing is added to the host's addresses, and the devices' names start with "tun": every other
Chromium on the host (the parallel browser tests) watches the host's addresses and links, and
an address added or removed there made each of them, two seconds later, fail whatever requests
were waiting for a connection with ERR_NETWORK_CHANGED (a page loading its scripts then never
started: the suite's most frequent load failure). Chromium ignores links named "tun*" (its
address tracker counts them as VPN tunnels), and a route is not an address.
tests/integration/test_impaired_link.py checks this with a Chromium beside a link being made.

Clean-up: `close()` (the context manager's exit, also when the test fails) stops the thread,
closes both TUN descriptors (the kernel removes non-persistent TUN devices with their last
descriptor, so a killed test leaves no device behind either) and deletes the namespace.
Namespaces are named `kwl<pid>x<n>`: a later link removes those whose process is gone.

Loss is drawn from one `random.Random` per direction, seeded from `seed`: one draw per TCP or UDP
packet in arrival order, so a scenario is repeatable up to the order packets arrive in (the timing
of the two sides is not). A packet going the other way, or one of the kernel's own (IGMP reports
and IPv6 chatter come at random moments after a device goes up), draws nothing and is never lost,
so it cannot shift the losses of the traffic under test: one such packet in mid-test did, in CI.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import os
import random
import re
import select
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
PREFIX = "kwl"
TCP, UDP = 6, 17  # the IPv4 header's protocol numbers
RATE_QUEUE_S = 0.5  # a rate-capped direction queues at most this much, then drops (a router's)
_numbers = itertools.count(1)
_lock = threading.Lock()


@dataclass
class Impairment:
    """One direction's impairments; the link applies the same to both unless told otherwise."""

    delay_s: float = 0.0
    loss: float = 0.0  # probability that a packet is dropped
    rate_bps: float | None = None  # None: no cap


@dataclass
class Counters:
    passed: int = 0
    lost: int = 0  # random loss
    cut: int = 0  # dropped by an outage
    overflow: int = 0  # dropped by the rate cap's full queue


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=10)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _free_subnet(start: int) -> int:
    """A k whose 10.77.k.2 the host has no route to yet, so parallel tests' links do not clash."""
    used = subprocess.run(["ip", "-o", "-4", "route"], capture_output=True, text=True).stdout
    for i in range(250):
        k = (start + i) % 250 + 1
        if f"10.77.{k}.2 " not in used:
            return k
    raise RuntimeError("no free 10.77.k.0 subnet for an impaired link")


def host_address() -> str | None:
    """The host's own IPv4 address: the source of its default route (asked of the kernel with
    a documentation address; nothing is sent)."""
    found = subprocess.run(["ip", "-o", "-4", "route", "get", "198.51.100.1"],
                           capture_output=True, text=True).stdout
    match = re.search(r" src (\S+)", found)
    return match.group(1) if match else None


def sweep_stale() -> None:
    """Remove namespaces left by links whose test process was killed (its TUN devices went with
    its descriptors; a namespace outlives its creator)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^({PREFIX}(\d+)x\d+)", listed, re.M):
        ns, pid = name
        if not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def available() -> str | None:
    """Why the harness cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the impaired link needs root (network namespaces, TUN devices)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    if host_address() is None:
        return "no IPv4 address with a default route on the host (the link's near end)"
    return None


class ImpairedLink:
    def __init__(self, seed: int = 0, subnet: int | None = None) -> None:
        n = next(_numbers)
        self.ns = f"{PREFIX}{os.getpid()}x{n}"
        k = subnet if subnet is not None else _free_subnet(os.getpid() * 7 + n)
        self.near, self.far = host_address() or "", f"10.77.{k}.2"
        tag = f"{os.getpid() % 100000}x{n}"  # device names are at most 15 characters
        self.near_dev, self.far_dev = f"tunn{tag}", f"tunf{tag}"
        self.random = {"out": random.Random(seed), "back": random.Random(seed + 1)}
        self.out = Impairment()  # far -> near: what the family sends
        self.back = Impairment()  # near -> far: what the family receives
        self.outage: bool | str = False
        self.counters = {"out": Counters(), "back": Counters()}
        self._fds: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1

    # --- the controls ---

    def set(self, *, delay_ms: float | None = None, loss: float | None = None,
            rate_kbit: float | None = None, uncapped: bool = False) -> None:
        """Change both directions at once (from any thread; the next packet sees it)."""
        for way in (self.out, self.back):
            if delay_ms is not None:
                way.delay_s = delay_ms / 1000
            if loss is not None:
                way.loss = loss
            if rate_kbit is not None:
                way.rate_bps = rate_kbit * 1000
            if uncapped:
                way.rate_bps = None

    def down(self, only: str | None = None) -> None:
        """An outage: every packet, both ways, dropped until `up`; `only="udp"` drops UDP
        alone (the media through TURN dies while the page's TCP socket lives: a network that
        blocks or loses UDP)."""
        if only not in (None, "udp"):
            raise ValueError(only)
        self.outage = True if only is None else only

    def up(self) -> None:
        self.outage = False

    # --- the family's side ---

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the family's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), **kwargs)

    def wrapper(self, program: str, folder: Path) -> Path:
        """An executable script that runs `program` in the family's namespace with its
        arguments: for launchers that take an executable path (Playwright's Chromium)."""
        path = folder / f"in-{self.ns}-{Path(program).name}"
        path.write_text(f"#!/bin/sh\nexec ip netns exec {self.ns} {program} \"$@\"\n")
        path.chmod(0o755)
        return path

    # --- set-up and clean-up ---

    def open(self) -> ImpairedLink:
        why = available()
        if why:
            raise RuntimeError(why)
        with _lock:
            sweep_stale()
        try:
            _ip("netns", "add", self.ns)
            near, far = _open_tun(self.near_dev), _open_tun(self.far_dev)
            self._fds += [near, far]
            _ip("link", "set", self.far_dev, "netns", self.ns)
            # IPv4 only: no IPv6 neighbour or router chatter on the link, so its counters count
            # the test's packets alone
            subprocess.run(self.command(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]),
                           check=True, capture_output=True)
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{self.near_dev}.disable_ipv6=1"],
                           check=True, capture_output=True)
            _ip("link", "set", "lo", "up", ns=self.ns)
            _ip("addr", "add", self.far, "dev", self.far_dev, ns=self.ns)
            _ip("link", "set", self.far_dev, "up", ns=self.ns)
            _ip("route", "add", self.near, "dev", self.far_dev, "src", self.far, ns=self.ns)
            _ip("link", "set", self.near_dev, "up")
            _ip("route", "add", self.far, "dev", self.near_dev, "src", self.near)
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._forward, args=(near, far),
                                            name=f"link {self.ns}", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (*self._fds, self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds, self._wake_r, self._wake_w = [], -1, -1
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def __enter__(self) -> ImpairedLink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self) -> bool:
        """Whether anything of this link is still on the host (for the clean-up test)."""
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        return self.ns in names.split() or self.near_dev in links

    # --- the emulator ---

    def _forward(self, near: int, far: int) -> None:
        """Read packets from both devices; each is dropped (outage, loss, a full rate queue) or
        scheduled for delivery at arrival + queueing behind the rate cap + delay."""
        queue: list[tuple[float, int, int, bytes]] = []  # (due, order, destination fd, packet)
        order = itertools.count()
        free_at = {near: 0.0, far: 0.0}  # when each destination's capped wire is free again
        ways = {far: ("out", near), near: ("back", far)}
        poll = select.poll()
        for fd in (near, far, self._wake_r):
            poll.register(fd, select.POLLIN)
        while not self._stop.is_set():
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, dst, packet = heapq.heappop(queue)
                with contextlib.suppress(OSError):
                    os.write(dst, packet)
            timeout = max(0.0, queue[0][0] - now) * 1000 if queue else 200
            for fd, _ in poll.poll(timeout):
                if fd == self._wake_r:
                    continue
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    continue
                name, dst = ways[fd]
                way = self.out if name == "out" else self.back
                counts = self.counters[name]
                if self.outage is True or (self.outage == "udp" and len(packet) > 9
                                           and packet[0] >> 4 == 4 and packet[9] == UDP):
                    counts.cut += 1
                    continue
                if (way.loss and len(packet) > 9 and packet[0] >> 4 == 4
                        and packet[9] in (TCP, UDP) and self.random[name].random() < way.loss):
                    counts.lost += 1
                    continue
                now = time.monotonic()
                leave = now
                if way.rate_bps:
                    start = max(now, free_at[dst])
                    if start - now > RATE_QUEUE_S:
                        counts.overflow += 1
                        continue
                    leave = start + len(packet) * 8 / way.rate_bps
                    free_at[dst] = leave
                counts.passed += 1
                heapq.heappush(queue, (leave + way.delay_s, next(order), dst, packet))
