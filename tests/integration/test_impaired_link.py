"""The impaired-link harness itself (tests/support/impaired_link.py): what it claims to do to
packets, it
does, measured from a process in the family's namespace; and it leaves nothing behind, also when
the test using it fails. The adversary is the network: delay, random loss, a thin pipe, a total
outage. Every other link test trusts these figures, so each assertion here can fail: a delay not
applied, loss not drawn, a cap not enforced or an outage that lets packets through."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from tests.support.impaired_link import ImpairedLink, available

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

PROBE = r"""
import socket, sys, time
host, port, mode, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if mode == "rtt":  # n round trips of one byte over one TCP connection, in ms
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(n):
        t = time.monotonic(); s.sendall(b"x"); s.recv(1); print((time.monotonic() - t) * 1000)
elif mode == "udp":  # n datagrams, numbered, 2 ms apart
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        u.sendto(str(i).encode(), (host, port)); time.sleep(0.002)
elif mode == "pull":  # read n bytes, print the seconds it took from the first byte
    s = socket.create_connection((host, port), timeout=10)
    got, first = 0, None
    while got < n:
        chunk = s.recv(65536)
        if not chunk: break
        first = first or time.monotonic(); got += len(chunk)
    print(got, time.monotonic() - first)
"""


def _probe(link: ImpairedLink, port: int, mode: str, n: int) -> list[str]:
    done = link.run([sys.executable, "-c", PROBE, link.near, str(port), mode, str(n)],
                    capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _listen(link: ImpairedLink, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.bind((link.near, 0))
    if kind == socket.SOCK_STREAM:
        s.listen()
    return s


def _echo(server: socket.socket) -> None:
    conn, _ = server.accept()
    # The probe's FIN may be lost with the link torn down after it: recv then fails with
    # ENETUNREACH, which is the end of the echo, not an error (left unhandled, it surfaced as
    # a thread exception in whichever test the worker ran next).
    with conn, contextlib.suppress(OSError):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)


def test_delay_is_applied_each_way() -> None:
    with ImpairedLink(seed=1) as link:
        server = _listen(link)
        echo = threading.Thread(target=_echo, args=(server,), daemon=True)
        echo.start()
        link.set(delay_ms=100)
        rtts = [float(x) for x in _probe(link, server.getsockname()[1], "rtt", 10)]
        echo.join(5.0)
        server.close()
    median = statistics.median(rtts)
    assert 195 <= median <= 300, rtts  # 100 ms out and 100 ms back
    print(f"round trip with 100 ms each way: median {median:.0f} ms")


def test_random_loss_is_seeded_and_counted() -> None:
    received: list[list[int]] = []
    for _ in range(2):
        with ImpairedLink(seed=42) as link:
            u = _listen(link, socket.SOCK_DGRAM)
            u.settimeout(1.0)
            link.set(loss=0.2)
            got: list[int] = []

            def drain(u: socket.socket = u, got: list[int] = got) -> None:
                with contextlib.suppress(TimeoutError):
                    while True:
                        got.append(int(u.recv(64)))
            reader = threading.Thread(target=drain)
            reader.start()
            _probe(link, u.getsockname()[1], "udp", 400)
            reader.join()
            u.close()
            assert link.counters["out"].lost == 400 - len(got)  # the emulator dropped them
            received.append(got)
    assert 0.74 <= len(received[0]) / 400 <= 0.86, len(received[0])
    assert received[0] == received[1]  # same seed, same packets in the same order: same losses


def test_the_rate_cap_holds_a_bulk_transfer() -> None:
    size = 250_000
    with ImpairedLink(seed=3) as link:
        server = _listen(link)

        def send() -> None:
            conn, _ = server.accept()
            conn.sendall(b"\0" * size)
            conn.close()
        threading.Thread(target=send, daemon=True).start()
        link.set(rate_kbit=1000)
        got, seconds = _probe(link, server.getsockname()[1], "pull", size)
        server.close()
    kbit = int(got) * 8 / float(seconds) / 1000
    assert int(got) == size
    assert 600 <= kbit <= 1050, kbit  # IP and TCP headers make the payload rate a bit less
    print(f"1000 kbit/s cap: {kbit:.0f} kbit/s of payload")


def test_an_outage_drops_everything_until_the_link_is_up() -> None:
    with ImpairedLink(seed=4) as link:
        u = _listen(link, socket.SOCK_DGRAM)
        u.settimeout(0.5)
        port = u.getsockname()[1]
        link.down()
        _probe(link, port, "udp", 50)
        with pytest.raises(TimeoutError):
            u.recv(64)
        assert link.counters["out"].cut == 50 and link.counters["out"].passed == 0
        link.up()
        _probe(link, port, "udp", 5)
        assert u.recv(64) == b"0"
        u.close()


def test_a_udp_outage_lets_tcp_through() -> None:
    with ImpairedLink(seed=6) as link:
        server = _listen(link)
        echo = threading.Thread(target=_echo, args=(server,), daemon=True)
        echo.start()
        u = _listen(link, socket.SOCK_DGRAM)
        u.settimeout(0.5)
        link.down(only="udp")
        _probe(link, u.getsockname()[1], "udp", 20)
        with pytest.raises(TimeoutError):
            u.recv(64)
        assert len(_probe(link, server.getsockname()[1], "rtt", 3)) == 3
        assert link.counters["out"].cut == 20
        echo.join(5.0)
        u.close()
        server.close()


def test_nothing_is_left_behind_when_the_test_fails() -> None:
    link = ImpairedLink(seed=5)
    with pytest.raises(RuntimeError, match="the test failed"), link:
        assert link.exists()
        raise RuntimeError("the test failed")
    assert not link.exists()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert link.ns not in names


def test_a_killed_test_leaves_no_namespace_for_long() -> None:
    """A test process killed mid-link: its TUN devices go with its descriptors, and the next
    link removes its namespace (the pid in the name is gone)."""
    code = ("import sys, time; sys.path.insert(0, '.'); from tests.support.impaired_link import "
            "ImpairedLink; l = ImpairedLink().open(); print(l.ns, l.near_dev, flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        ns, dev = proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    time.sleep(0.2)
    assert dev not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    with ImpairedLink():
        pass
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout


async def test_a_browser_beside_the_link_sees_no_network_change() -> None:
    """The adversary is the test harness itself: a link made and removed while another test's
    Chromium on the host has requests waiting for a connection. With an address added on the
    host, Chromium failed those requests two seconds later with ERR_NETWORK_CHANGED (6 to 12 of 60
    in this test's pattern; pages that were loading their scripts never started)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from tests.support.browser import chromium

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text="x")

    app = web.Application()
    app.router.add_get("/{any:.*}", slow)
    failed: list[str] = []
    done = asyncio.Event()
    async with TestServer(app) as server, chromium() as browser:
        page = await browser.new_page()
        page.on("requestfailed", lambda r: failed.append(r.failure or "?"))
        await page.goto(str(server.make_url("/")))

        async def waves() -> int:
            # 20 requests at a time: more than Chromium's 6 connections to one host, so
            # some always wait for a connection (the ones a network change fails)
            n = 0
            while not done.is_set():
                await page.evaluate("""Promise.all([...Array(20).keys()].map(i =>
                    new Promise(r => setTimeout(r, i * 40)).then(() =>
                    fetch('/w?' + Math.random())))).catch(e => 'failed')""")
                n += 20
            return n

        def make_and_remove() -> None:
            with ImpairedLink():
                time.sleep(2.5)  # Chromium reports a change 2 s after the netlink event
            time.sleep(2.5)

        sent = asyncio.create_task(waves())
        await asyncio.to_thread(make_and_remove)
        done.set()
        n = await sent
    assert n >= 60
    assert failed == [], f"{len(failed)} of {n} requests failed: {sorted(set(failed))}"
