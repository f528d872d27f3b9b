"""A private Janus for tests: Debian's `janus` (scripts/system-deps.sh) run from the deploy
templates in deploy/janus/, filled with free loopback ports, fresh secrets and its own config
folder, on 127.0.0.1 only; stopped (or killed -9, for failover tests) on demand.

    with private_janus(tmp, events_url="http://127.0.0.1:PORT/internal/janus/events") as janus:
        janus.api_url, janus.admin_url, janus.secrets ...

Synchronous (a subprocess and urllib), so that one Janus can be a module-scoped fixture shared
by tests that each run their own event loop. Start is bounded by START_TIMEOUT_S. Inside a test
whose event loop serves Kinwire's events endpoint, use `running_janus` (the same, off the loop):
a stopping Janus posts its shutdown event and waits for the answer (up to its HTTP client's
10 s), which a loop blocked in `private_janus`'s stop would never give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import free_port

HOST = "127.0.0.1"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "janus"
LIB_FOLDER = "/usr/lib/x86_64-linux-gnu/janus"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
RTP_PORTS = 200  # a range of its own per server, so that two servers never share a port
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


@dataclass(frozen=True)
class JanusSecrets:
    api_secret: str
    admin_secret: str
    token_secret: str
    room_admin_key: str
    events_password: str


def fresh_secrets() -> JanusSecrets:
    return JanusSecrets(*(secrets.token_hex(16) for _ in range(5)))


def render(template: str, values: dict[str, str]) -> str:
    """A deploy/janus template with each @NAME@ replaced; a name without a value is an error
    (a template that grew a placeholder the tests or the doc do not fill)."""
    def value(match: re.Match[str]) -> str:
        name = match.group(0).strip("@")
        if name not in values:
            raise KeyError(f"no value for {match.group(0)}")
        return values[name]
    return PLACEHOLDER.sub(value, template)


def write_config(folder: Path, values: dict[str, str]) -> Path:
    """Every template of deploy/janus/ filled into `folder` (janus.jcfg and the others)."""
    folder.mkdir(parents=True, exist_ok=True)
    for template in sorted(DEPLOY.glob("*.jcfg.in")):
        (folder / template.name.removesuffix(".in")).write_text(
            render(template.read_text(), values))
    return folder / "janus.jcfg"


@dataclass
class Janus:
    folder: Path
    http_port: int
    admin_port: int
    rtp_first: int
    secrets: JanusSecrets
    events_url: str
    recordings_dir: Path
    allow_origin: str = f"http://{HOST}"  # the pages' origin (Kinwire's), for CORS
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/janus"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}/admin"

    @property
    def log_file(self) -> Path:
        return self.folder / "janus.log"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def info(self, timeout_s: float = 2.0) -> dict:
        url = f"{self.api_url}/info"
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 (loopback)
            return json.loads(reply.read())

    def kill(self) -> None:
        """kill -9: the server dies at once, with its sessions and rooms (failover tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()


def _values(janus: Janus) -> dict[str, str]:
    s = janus.secrets
    return {"CONFIGS_FOLDER": str(janus.folder), "LIB_FOLDER": LIB_FOLDER, "DEBUG_LEVEL": "4",
            "SERVER_NAME": f"kinwire-test-{janus.http_port}", "API_SECRET": s.api_secret,
            "TOKEN_SECRET": s.token_secret, "ADMIN_SECRET": s.admin_secret,
            "ROOM_ADMIN_KEY": s.room_admin_key, "EVENTS_PASSWORD": s.events_password,
            "EVENTS_URL": janus.events_url,
            "RTP_PORTS": f"{janus.rtp_first}-{janus.rtp_first + RTP_PORTS - 1}",
            "ICE_ENFORCE_LIST": HOST, "HTTP_IP": HOST, "HTTP_PORT": str(janus.http_port),
            "ADMIN_IP": HOST, "ADMIN_PORT": str(janus.admin_port), "ADMIN_ACL": "127.",
            "ALLOW_ORIGIN": janus.allow_origin}


def _rtp_first() -> int:
    """The first of RTP_PORTS UDP ports for Janus's media: below the kernel's ephemeral range
    (so no client socket is handed one meanwhile, and apart from the private coturns' ports,
    which are above it) and picked at random, so two servers in one run, or two test
    processes, almost never overlap; Janus binds each port as it needs it, trying the next
    one of its range when one is taken."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    slots = max(1, (low - 10000) // RTP_PORTS)
    return 10000 + secrets.randbelow(slots) * RTP_PORTS


def _answers(janus: Janus) -> bool:
    try:
        return janus.info(timeout_s=0.5).get("janus") == "server_info"
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def private_janus(folder: Path, *, events_url: str, janus_secrets: JanusSecrets | None = None,
                  allow_origin: str | None = None) -> Iterator[Janus]:
    """Start janus from deploy/janus/ in `folder`, wait until GET /janus/info answers (at most
    START_TIMEOUT_S), stop it on exit. `events_url`: where its event handler posts (Kinwire's
    endpoint; the credential is `janus_secrets.events_password`); `allow_origin`: the origin
    of the pages that call its client API (browser tests)."""
    binary = shutil.which("janus")
    if binary is None:
        raise RuntimeError("janus is missing: run scripts/system-deps.sh")
    recordings = folder / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    janus = Janus(folder=folder, http_port=free_port(), admin_port=free_port(),
                  rtp_first=_rtp_first(), secrets=janus_secrets or fresh_secrets(),
                  events_url=events_url, recordings_dir=recordings)
    if allow_origin is not None:
        janus.allow_origin = allow_origin
    config = write_config(folder, _values(janus))
    with open(janus.log_file, "ab") as log:
        janus.proc = subprocess.Popen(
            [binary, f"--configs-folder={folder}", f"--config={config}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(janus):
            if janus.proc.poll() is not None:
                raise RuntimeError(f"janus exited ({janus.proc.returncode}):\n"
                                   f"{janus.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"janus did not answer in {START_TIMEOUT_S} s:\n"
                                   f"{janus.log()[-3000:]}")
            time.sleep(0.05)
        yield janus
    finally:
        janus.stop()


@contextlib.asynccontextmanager
async def running_janus(folder: Path, *, events_url: str,
                        janus_secrets: JanusSecrets | None = None,
                        allow_origin: str | None = None) -> AsyncIterator[Janus]:
    """`private_janus`, started and stopped on a worker thread so that the running event loop
    goes on answering (Kinwire's events endpoint in the same loop)."""
    manager = private_janus(folder, events_url=events_url, janus_secrets=janus_secrets,
                            allow_origin=allow_origin)
    janus = await asyncio.to_thread(manager.__enter__)
    try:
        yield janus
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)
