"""The process's blob stores, as the settings choose them: one for photos, one for recordings.

With KINWIRE_BLOB_URL=s3://bucket/prefix both live in that bucket (under `<prefix>/photos/`
and `<prefix>/recordings/`), through one S3 connection; otherwise in the folders
KINWIRE_BLOB_DIR and KINWIRE_RECORDINGS_DIR (FileBlobs). Files are written locally before
`put` takes them over: photos under `<blob dir>/.partial/`, recordings under
`<recordings dir>/.partial/` (so that FileBlobs can link them into place).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.blobs import BlobStore
from server.blobs.files import FileBlobs
from server.settings import Settings


@dataclass
class Blobs:
    photos: BlobStore
    recordings: BlobStore
    staging: Path  # where a photo is written before it is put
    recording_staging: Path  # where a recording is written before it is put
    location: str  # what an operator reads: the folder or the s3:// URL (never a secret)
    connection: Any = None  # server.blobs.s3.S3Connection when on S3

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


def open_blobs(settings: Settings) -> Blobs:
    staging = settings.resolved_blob_dir / ".partial"
    recording_staging = settings.resolved_recordings_dir / ".partial"
    if not settings.blob_url:
        return Blobs(FileBlobs(settings.resolved_blob_dir),
                     FileBlobs(settings.resolved_recordings_dir), staging, recording_staging,
                     f"{settings.resolved_blob_dir} and {settings.resolved_recordings_dir}")
    from server.blobs.s3 import S3Connection  # aiobotocore is loaded only when it is used

    connection = S3Connection(
        settings.blob_url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key, part_bytes=settings.s3_part_bytes,
        timeout_s=settings.s3_timeout_s)
    return Blobs(connection.store("photos"), connection.store("recordings"), staging,
                 recording_staging, settings.blob_url, connection)
