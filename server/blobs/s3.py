"""The blob store on S3 or an S3-compatible object store (the contract is in
server/blobs/__init__.py), through aiobotocore: botocore's request signing, retries and error
model on aiohttp, which the server already runs on.

- `put` uploads with `If-None-Match: *`, so the store itself refuses to replace a blob, even
  for two processes putting one key at once (412 or 409 become BlobExists, unless the object
  there carries this put's own id: botocore's retry of an upload whose answer was lost).
  Files of up to `part_bytes` go in one PUT; larger ones as a multipart upload of
  `part_bytes` parts, aborted if anything fails, so a failed `put` leaves no blob. The local
  file is removed once the store has acknowledged the upload.
- `read` is a ranged GET, streamed in chunks of at most CHUNK_BYTES.
- `size` is a HEAD.
- `delete` is a HEAD (to answer whether there was a blob) and a DELETE, which S3 makes
  idempotent; two processes deleting one blob at once may both be told True.

One S3Connection (one HTTP connection pool, opened on first use) serves every S3Blobs of a
process; each S3Blobs is a key prefix in the connection's bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from server.blobs import (
    CHUNK_BYTES,
    BlobExists,
    BlobMissing,
    BlobUnavailable,
    Listed,
    check_key,
)

PART_BYTES_MIN = 5 * 1024 * 1024  # S3's smallest part (all but the last)
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
PUT_ID = "kinwire-put"  # object metadata: which put wrote it (a retried write finds itself)


def put_id() -> str:
    return secrets.token_hex(12)


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at either end)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _read_part(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@contextlib.asynccontextmanager
async def _answered() -> AsyncIterator[None]:
    """botocore's network faults and timeouts, and the store's own 5xx (after the client's
    retries), as BlobUnavailable; its other answers pass as they are."""
    try:
        yield
    except BotoCoreError as exc:
        raise BlobUnavailable(type(exc).__name__) from exc
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500:
            raise BlobUnavailable(f"{_code(exc)} ({status})") from exc
        raise


class S3Connection:
    def __init__(self, url: str, *, endpoint_url: str = "", region: str = "",
                 access_key_id: str = "", secret_access_key: str = "",
                 part_bytes: int = 8 * 1024 * 1024, timeout_s: float = 10.0) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.part_bytes = max(part_bytes, PART_BYTES_MIN)
        # Credentials left empty fall to botocore's own chain (AWS_* variables, an instance
        # or pod role), so a deployment on AWS needs no key in Kinwire's settings at all.
        self._options: dict[str, Any] = {
            "endpoint_url": endpoint_url or None, "region_name": region or None,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
            "config": AioConfig(
                connect_timeout=timeout_s, read_timeout=timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                # Most S3-compatible servers (SeaweedFS, MinIO, Ceph) take path-style
                # addresses; AWS itself is left to choose.
                s3={"addressing_style": "path" if endpoint_url else "auto"})}
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:  # never the secret
        return f"S3Connection(s3://{self.bucket}/{self.prefix})"

    async def client(self) -> Any:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await self._stack.enter_async_context(
                        get_session().create_client("s3", **self._options))
        return self._client

    def store(self, sub: str = "") -> S3Blobs:
        prefix = "/".join(p for p in (self.prefix, sub.strip("/")) if p)
        return S3Blobs(self, prefix)

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


class S3Blobs:
    def __init__(self, connection: S3Connection, prefix: str) -> None:
        self.connection, self.prefix = connection, prefix

    def __repr__(self) -> str:
        return f"S3Blobs(s3://{self.connection.bucket}/{self.prefix})"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, path: Path) -> int:
        async with _answered():
            return await self._put(key, path)

    async def _put(self, key: str, path: Path) -> int:
        name, bucket = self._key(key), self.connection.bucket
        client = await self.connection.client()
        size = (await asyncio.to_thread(path.stat)).st_size
        part = self.connection.part_bytes
        mark = {PUT_ID: put_id()}
        try:
            if size <= part:
                body = await asyncio.to_thread(path.read_bytes)
                await client.put_object(Bucket=bucket, Key=name, Body=body, IfNoneMatch="*",
                                        Metadata=mark)
            else:
                await self._multipart(client, bucket, name, path, size, part, mark)
        except ClientError as exc:
            if _code(exc) not in _EXISTS:
                raise
            # botocore retries a request whose answer was lost; the retry of a write that did
            # land is refused as a conflict. The object carries this put's id: then it is ours.
            try:
                head = await client.head_object(Bucket=bucket, Key=name)
            except ClientError:  # 409: another put of the key is under way; it wins or fails
                raise BlobExists(key) from None
            if head.get("Metadata", {}).get(PUT_ID) != mark[PUT_ID]:
                raise BlobExists(key) from None
        await asyncio.to_thread(path.unlink)
        return size

    @staticmethod
    async def _multipart(client: Any, bucket: str, name: str, path: Path, size: int,
                         part: int, mark: dict[str, str]) -> None:
        upload = (await client.create_multipart_upload(Bucket=bucket, Key=name,
                                                       Metadata=mark))["UploadId"]
        try:
            parts = []
            for number, offset in enumerate(range(0, size, part), start=1):
                body = await asyncio.to_thread(_read_part, path, offset, part)
                done = await client.upload_part(Bucket=bucket, Key=name, UploadId=upload,
                                                PartNumber=number, Body=body)
                parts.append({"PartNumber": number, "ETag": done["ETag"]})
            await client.complete_multipart_upload(
                Bucket=bucket, Key=name, UploadId=upload, IfNoneMatch="*",
                MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                await client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload)
            raise

    async def size(self, key: str) -> int | None:
        async with _answered():
            return await self._size(key)

    async def _size(self, key: str) -> int | None:
        client = await self.connection.client()
        try:
            head = await client.head_object(Bucket=self.connection.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return int(head["ContentLength"])

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        async with _answered():
            async for chunk in self._read(key, start, end):
                yield chunk

    async def _read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        if not 0 <= start <= end:
            raise ValueError("read needs 0 <= start <= end")
        name, client = self._key(key), await self.connection.client()
        if start == end:  # no range to ask for; still BlobMissing for a missing blob
            if await self.size(key) is None:
                raise BlobMissing(key)
            return
        try:
            answer = await client.get_object(Bucket=self.connection.bucket, Key=name,
                                             Range=f"bytes={start}-{end - 1}")
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise BlobMissing(key) from None
            if _code(exc) == "InvalidRange":  # start at or past the end: nothing to yield
                if await self.size(key) is None:
                    raise BlobMissing(key) from None
                return
            raise
        async with answer["Body"] as body:
            while chunk := await body.read(CHUNK_BYTES):
                yield chunk

    async def delete(self, key: str) -> bool:
        async with _answered():
            return await self._delete(key)

    async def _delete(self, key: str) -> bool:
        if await self.size(key) is None:
            return False
        client = await self.connection.client()
        await client.delete_object(Bucket=self.connection.bucket, Key=self._key(key))
        return True

    async def listing(self) -> AsyncIterator[Listed]:
        async with _answered():
            client = await self.connection.client()
            start = f"{self.prefix}/" if self.prefix else ""
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.connection.bucket, Prefix=start)
            async for page in pages:
                for item in page.get("Contents", []):
                    try:
                        key = check_key(item["Key"][len(start):])
                    except ValueError:
                        continue  # not one of this store's blobs
                    yield Listed(key, int(item["Size"]), item["LastModified"])
