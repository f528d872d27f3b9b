"""Kinwire as a user runs it, for the tests: free loopback ports, a clean environment for the
command line, `python -m server` run to completion, and waiting for a started server."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

_HANDED_OUT: set[int] = set()


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range (20000-32767 with Linux's default)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12768), low)


def free_port() -> int:
    """A loopback TCP port nothing listens on now, picked at random under the kernel's
    ephemeral range, and never one this process handed out before. Not a port 0 bind: the
    kernel hands the same numbers to every client socket of the machine (the suite opens
    thousands), and one of them took a port between its choice and the server's bind: a
    SeaweedFS S3 port ("bind: address already in use", seconds after the choice), and once a
    Kinwire on the port the test had chosen for nginx. Under the range only another test's
    choice can collide, at random, 1 in ~12,000."""
    space = _below_ephemeral()
    for _ in range(1000):
        port = space.start + secrets.randbelow(len(space))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {space}")


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KINWIRE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(KINWIRE_DATA_DIR=str(tmp_path / "data"), KINWIRE_ARGON2_MEMORY_KIB="1024",
               KINWIRE_ARGON2_TIME_COST="1", **extra)
    return env


def kinwire(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


async def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    # A deadline, not a count of 200 tries (~10 s): with the machine's two cores shared by
    # several test runs, importing the server alone took 9.5 s (load average 14). How long a
    # start takes is not what these tests check.
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stdout.read()}")
            try:
                async with http.get(base + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server never became ready")
