"""A private coturn for tests: on 127.0.0.1 only, on free ports, stopped when the test ends.

    async with private_coturn() as turn:
        servers = ice_servers(secret=turn.secret, turn_urls=[turn.url], ...)

The configuration file it writes is deploy/coturn/turnserver.conf with its values changed and,
for the loopback test variant, the block that allows loopback peers back (`deploy_config`):
the same text as `signalling.turn.coturn_config(..., loopback_test=True)`, which docs/turn.md is
checked against (tests/integration/test_deploy_nginx.py checks all three agree). It listens on
127.0.0.1
alone, relays from 127.0.0.1 alone and lets allocations reach peers on 127.0.0.1 alone, so no
test packet through it can leave the machine's loopback interface. Its log is kept in a
temporary folder and shown when it fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aioice import stun

from signalling.turn import coturn_config

HOST = "127.0.0.1"
DEPLOY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "coturn" / "turnserver.conf"
REALM = "kinwire.test"
RELAY_PORTS = 32
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TurnServer:
    host: str
    port: int
    secret: str
    realm: str
    min_port: int
    max_port: int
    config: str
    log_file: Path

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=udp"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def _free(port: int) -> bool:
    """True when nobody holds `port` on 127.0.0.1, for UDP and TCP (a plain bind, without
    SO_REUSEPORT, fails even against a coturn that holds the port with it)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def _port_space() -> range:
    """Ports above the kernel's ephemeral range, so that no client socket of this machine is
    handed one of them while coturn is starting."""
    try:
        _low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        high = 60999
    start = high + 1 if high < 65535 - 4 * RELAY_PORTS else 20000
    return range(start, 65536 if start > 20000 else 32768)


def _pick_ports() -> tuple[int, int]:
    """A free listening port and the first port of a free relay range of RELAY_PORTS."""
    space = _port_space()
    rng = random.Random(secrets.randbits(32))
    for _ in range(200):
        listen = rng.randrange(space.start, space.stop)
        first = rng.randrange(space.start, space.stop - RELAY_PORTS)
        relay = range(first, first + RELAY_PORTS)
        if listen in relay or not _free(listen):
            continue
        if all(_free(p) for p in relay):
            return listen, first
    raise RuntimeError("no free ports for a private coturn")


class _Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while coturn is still starting: try again


async def _answers_stun(port: int) -> bool:
    """One STUN Binding request to 127.0.0.1:port; True on a Binding success response."""
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(_Probe, remote_addr=(HOST, port))
    try:
        request = stun.Message(message_method=stun.Method.BINDING,
                               message_class=stun.Class.REQUEST)
        transport.sendto(bytes(request))
        try:
            data = await asyncio.wait_for(probe.answer, 0.2)
        except TimeoutError:
            return False
        reply = stun.parse_message(data)
        return (reply.transaction_id == request.transaction_id
                and reply.message_class == stun.Class.RESPONSE)
    finally:
        transport.close()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def private_coturn(secret: str | None = None, *, loopback_test: bool = True,
                         also_listen: str | None = None,
                         own_address: str | None = None) -> AsyncIterator[TurnServer]:
    """Start coturn on 127.0.0.1 (free ports), wait until it answers STUN, stop it on exit.
    `loopback_test=False` runs the production variant (every private peer denied, loopback
    too) on the same loopback listener: it allocates, but relays to nobody here.
    `also_listen`: a second address it takes requests on (an impaired link's near end,
    tests/support/impaired_link.py), and the server's `host` and URL; it still relays from, and to,
    127.0.0.1 alone. `own_address`: this machine's own (non-loopback) address, which Janus's
    candidates name (libnice gathers none on loopback): coturn relays from it and may reach it
    as a peer, besides 127.0.0.1 (a packet to the machine's own address never leaves it)."""
    binary = shutil.which("turnserver")
    if binary is None:
        raise RuntimeError("coturn's turnserver is missing: run scripts/system-deps.sh")
    secret = secret or secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="kinwire-coturn-") as folder:
        tmp = Path(folder)
        last_error = ""
        for _attempt in range(3):  # a port taken between the check and coturn's bind: retry
            port, first = _pick_ports()
            server = TurnServer(
                host=also_listen or HOST, port=port, secret=secret, realm=REALM, min_port=first,
                max_port=first + RELAY_PORTS - 1, log_file=tmp / f"turn-{port}.log",
                config=deploy_config(port=str(port), first=str(first),
                                     last=str(first + RELAY_PORTS - 1), secret=secret,
                                     folder=str(tmp), loopback_test=loopback_test,
                                     relay_ip=own_address or HOST))
            conf = tmp / "turnserver.conf"
            conf.write_text(server.config
                            + (f"listening-ip={also_listen}\n" if also_listen else "")
                            + (f"allowed-peer-ip={own_address}\n" if own_address else ""))
            proc = await asyncio.create_subprocess_exec(
                binary, "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                started = await _wait_started(proc, port)
                if started:
                    yield server
                    return
                last_error = server.log()[-2000:]
            finally:
                await _stop(proc)
        raise RuntimeError(f"coturn did not start; its log ends with:\n{last_error}")


def deploy_config(*, port: str, first: str, last: str, secret: str, folder: str,
                  loopback_test: bool = True, relay_ip: str = HOST) -> str:
    """deploy/coturn/turnserver.conf on 127.0.0.1 with these ports, secret and files: only the
    values of its settings change; the loopback test variant appends the block that denies
    every peer and allows loopback back (the production file relays to no loopback peer)."""
    values = {"listening-ip": HOST, "relay-ip": relay_ip, "listening-port": port, "min-port": first,
              "max-port": last, "static-auth-secret": secret, "realm": REALM,
              "log-file": f"{folder}/turn-{port}.log", "pidfile": f"{folder}/turn.pid",
              "userdb": f"{folder}/turndb"}
    lines = []
    for line in DEPLOY_FILE.read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    if values:
        raise RuntimeError(f"{DEPLOY_FILE} lacks {sorted(values)}")
    text = "\n".join(lines) + "\n"
    return text + _loopback_block() if loopback_test else text


def _loopback_block() -> str:
    """What `coturn_config(loopback_test=True)` adds at the end of the production config."""
    args = dict(secret="s", realm="r", listening_ip="i", listening_port=1, relay_ip="i",
                min_port=1, max_port=2, log_file="l", pid_file="p", userdb="u")
    production, test = coturn_config(**args), coturn_config(**args, loopback_test=True)
    assert test.startswith(production)
    return test[len(production):]


async def _wait_started(proc: asyncio.subprocess.Process, port: int) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        if proc.returncode is not None:
            return False
        if await _answers_stun(port):
            return True
        await asyncio.sleep(0.05)
    return False
