"""`kinwire blobs migrate` as an operator runs it: a real process copying real folders (a photo
uploaded through the app, recordings, one large enough for a multipart upload) into a private
SeaweedFS, then an app on S3 serving the migrated photo.

Adversaries: a corrupted copy already in the bucket (an earlier run, or a disk, gone wrong),
which must be reported and not hidden; a run interrupted and started again (resumable, nothing
copied twice); leftovers of interrupted writes in the folders (never copied).
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.session import get_session

from tests.conftest import app_client
from tests.integration.test_object_storage import s3_settings
from tests.integration.test_photos import fetch, jpeg_with_gps, upload
from tests.support.helpers import Api
from tests.support.processes import cli_env
from tests.support.seaweed import BUCKET, Seaweed

pytestmark = pytest.mark.timeout(240)


def run_migrate(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "blobs", "migrate"], env=env,
                          capture_output=True, text=True, timeout=180)


def client(s3: Seaweed):
    return get_session().create_client(
        "s3", endpoint_url=s3.endpoint, region_name="us-east-1",
        aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key)


async def test_migrate_copies_verifies_reports_a_corrupt_copy_and_resumes(
        db_url: str, tmp_path: Path, seaweed: Seaweed) -> None:
    data_dir = tmp_path / "data"
    async with app_client(db_url, data_dir) as a:  # folders: the store being left
        api = Api(a)
        family = await api.family()
        photo_id = (await upload(api, family, jpeg_with_gps())).body["photo_id"]
        photo = (await fetch(api, family, photo_id))[1]
    recordings = data_dir / "recordings" / "fac_1"
    recordings.mkdir(parents=True)
    files = {"fac_1/rec_1.webm": secrets.token_bytes(300_000),
             "fac_1/rec_2.webm": secrets.token_bytes(200_000),
             "fac_1/rec_3.webm": secrets.token_bytes(9 * 1024 * 1024)}  # 2 parts of 8 MiB
    for key, data in files.items():
        (data_dir / "recordings" / key).write_bytes(data)
    (data_dir / "recordings" / ".partial").mkdir()
    (data_dir / "recordings" / ".partial" / "vis_1.webm").write_bytes(b"being written")
    (data_dir / "blobs" / "pho_half.part").write_bytes(b"interrupted")
    (data_dir / "blobs" / "notes for me.txt").write_bytes(b"an operator's stray file")

    prefix = f"m-{secrets.token_hex(4)}"
    s3 = client(seaweed)
    corrupt = files["fac_1/rec_2.webm"][:-1] + b"\x00"  # same size, one byte off
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/recordings/fac_1/rec_2.webm", Body=corrupt)
    env = cli_env(tmp_path,  # its KINWIRE_DATA_DIR is data_dir
                  **{f"KINWIRE_{k.upper()}": v for k, v in s3_settings(seaweed, prefix).items()})

    first = run_migrate(env)
    assert first.returncode == 1, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    mismatch = [line for line in lines if "MISMATCH" in line]
    assert len(mismatch) == 1 and "fac_1/rec_2.webm" in mismatch[0], first.stdout
    assert hashlib.sha256(corrupt).hexdigest() in mismatch[0]
    assert sum("copied, SHA-256 verified" in line for line in lines) == 4, first.stdout
    assert "done: 4 copied" in lines[-1] and "1 mismatched" in lines[-1]
    assert "vis_1" not in first.stdout and "pho_half" not in first.stdout
    assert "'notes for me.txt': skipped, not a blob key" in first.stdout
    assert seaweed.secret_access_key not in first.stdout + first.stderr
    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/recordings/fac_1/rec_2.webm")["Body"]
    assert body.read() == corrupt, "a mismatched blob is reported, never replaced"

    # The operator removes the bad copy and runs it again: only that one is copied.
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/recordings/fac_1/rec_2.webm")
    second = run_migrate(env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "done: 1 copied" in second.stdout and "4 already there, 0 mismatched" in second.stdout
    for key, data in files.items():
        got = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/recordings/{key}")["Body"].read()
        assert got == data
        assert (data_dir / "recordings" / key).read_bytes() == data, "the folder is untouched"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(
        [f"{prefix}/photos/{photo_id}.jpg", f"{prefix}/photos/{photo_id}.thumb.jpg",
         *(f"{prefix}/recordings/{key}" for key in files)])

    settings = s3_settings(seaweed, prefix)
    async with app_client(db_url, data_dir, **settings) as b:  # the same data, now on S3
        assert await fetch(Api(b), family, photo_id) == (200, photo)


def test_migrate_without_an_s3_store_says_so(tmp_path: Path) -> None:
    done = run_migrate(cli_env(tmp_path))
    assert done.returncode == 1 and "KINWIRE_BLOB_URL is not set" in done.stderr
