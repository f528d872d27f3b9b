"""A private nginx for the tests that run the deploy/nginx/ files: a self-signed certificate,
the file with only its ports, paths and certificate changed, nginx in the foreground on
loopback."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def self_signed(folder: Path, name: str = "kinwire.example") -> tuple[Path, Path]:
    """A certificate for `name` and 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    # The real clock on purpose: nginx and the TLS client check validity against it; a window
    # of minutes either side of now holds at any hour.
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(name),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def templated(text: str, changes: dict[str, str]) -> str:
    """`text` with each key replaced by its value; every key must occur exactly once."""
    for old, new in changes.items():
        assert text.count(old) == 1, f"{old!r} is not in the deploy file exactly once"
        text = text.replace(old, new)
    return text


@asynccontextmanager
async def private_nginx(folder: Path, https_port: int, site: str) -> AsyncIterator[None]:
    """nginx in the foreground with the (templated) `site`, until its `https_port` answers."""
    (folder / "site.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # workers read the tmp files
        + f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n{temp}\n    access_log off;\n    include {folder / 'site.conf'};\n}}\n")
    proc = subprocess.Popen([NGINX, "-p", str(folder), "-e", str(folder / "error.log"),
                             "-c", str(folder / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Ready when the port completes a TLS handshake, not when it merely accepts: another
    # server on the port (nginx then fails to bind) must fail here, not as a later request's
    # WRONG_VERSION_NUMBER. No certificate check: any TLS on the port is this nginx's.
    hello = ssl.create_default_context()
    hello.check_hostname, hello.verify_mode = False, ssl.CERT_NONE
    try:
        for _ in range(200):
            assert proc.poll() is None, (folder / "error.log").read_text()
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", https_port, ssl=hello), 2)
                writer.close()
                break
            except (OSError, TimeoutError):  # ssl.SSLError too; nginx exits if it cannot bind
                await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"nginx never answered TLS on {https_port}: "
                                 + (folder / "error.log").read_text())
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
