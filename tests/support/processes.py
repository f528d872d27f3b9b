"""Kinwire as a user runs it, for the tests: free loopback ports, a clean environment for the
command line, `python -m server` run to completion, and waiting for a started server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, never one this process handed out before: the
    kernel gives a closed port 0 bind the same number again soon after, so a test that chose
    nginx's port and then started two servers once had one of them on nginx's port (nginx
    could not bind, and the test talked TLS to a plain Kinwire)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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
