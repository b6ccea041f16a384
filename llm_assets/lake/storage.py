"""Byte-level access to the lake: a local folder or an S3 bucket behind one small interface.

Every write is atomic (a reader sees the old object or the new one, never a torn one), and the
read-modify-write operations (`append_line`, `append_next_line`, `update_bytes`) are serialized per key
so that concurrent writers, in other processes or on other machines, never lose each other's changes.
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

# Basenames the lake keeps for itself: in-flight atomic writes and per-key lock files.
_TEMP_PREFIX = ".tmp-"
_LOCK_PREFIX = ".lock-"
_RESERVED_PREFIXES = (_TEMP_PREFIX, _LOCK_PREFIX)


class LakeError(Exception):
    """A lake operation failed; the message is one line naming the key or bucket and what to do."""


class LakeConfigError(LakeError):
    """The lake is configured in a way it must refuse (for example S3 without KMS encryption)."""


class LakeKeyNotFound(LakeError):
    """The key does not exist in the lake."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. `version` is opaque: it changes whenever the content changes."""

    key: str
    size: int
    version: str


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_key(key: str) -> None:
    """Reject keys that could escape the lake root or collide with the lake's own temp and lock files."""
    why = None
    if not isinstance(key, str) or not key:
        why = "it is empty"
    elif key.startswith("/"):
        why = "it is absolute"
    elif "\x00" in key or "\\" in key:
        why = "it contains a NUL or backslash"
    else:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            why = "it has an empty, '.' or '..' segment"
        elif parts[-1].startswith(_RESERVED_PREFIXES):
            why = f"names starting with {' or '.join(_RESERVED_PREFIXES)} are reserved for the lake"
    if why:
        raise LakeError(
            f"invalid lake key {key!r}: {why}; use a relative '/'-separated key like 'datasets/x/part.parquet'"
        )


def _check_prefix(prefix: str) -> None:
    if prefix:
        # A prefix is a key, possibly ending in '/', possibly naming only the start of a basename.
        _check_key(prefix.rstrip("/") or "/")


def _check_line(key: str, line: str) -> None:
    if "\n" in line or "\r" in line:
        raise LakeError(f"cannot append to lake key {key}: the line contains a line break; append one line")


def _is_internal(name: str) -> bool:
    return name.startswith(_RESERVED_PREFIXES)


def _last_line(content: bytes | None) -> str | None:
    if not content:
        return None
    return content.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")


class LakeStorage(ABC):
    """Where assets keep their bytes. Keys are relative, '/'-separated paths below the lake root."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` at `key` atomically: readers see the previous object or this one, never part."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return the object's bytes; raises LakeKeyNotFound when it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively, sorted by key (temp files excluded)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone."""

    @abstractmethod
    def update_bytes(self, key: str, update: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Read-modify-write `key` as one step against every other update or append of the same key.

        `update` receives the current content (None when absent) and returns the new content, or None to
        leave the object as it is. It may be called more than once (S3 retries after a concurrent change),
        so it must not have side effects. Returns what was stored, or None when nothing was.
        """

    def append_line(self, key: str, line: str) -> None:
        """Append `line` plus a newline to the object at `key`, creating it if needed."""
        _check_line(key, line)
        encoded = line.encode("utf-8") + b"\n"
        self.update_bytes(key, lambda current: (current or b"") + encoded)

    def append_next_line(self, key: str, make_line: Callable[[str | None], str]) -> str:
        """Append the line `make_line(last_line)` computes, as one step against other appenders.

        This is what a hash chain needs: the last line (None when the object is absent or empty) and the
        new one are read and written with no other writer in between. `make_line` may be called more
        than once, so it must not have side effects. Returns the line that was appended.
        """
        appended: list[str] = []

        def update(current: bytes | None) -> bytes:
            line = make_line(_last_line(current))
            _check_line(key, line)
            appended[:] = [line]
            return (current or b"") + line.encode("utf-8") + b"\n"

        self.update_bytes(key, update)
        return appended[0]

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where `key` lives, as a `file://` or `s3://` URI for messages and metadata."""

    @abstractmethod
    def describe_location(self) -> dict[str, str]:
        """The backend and its settings, for run metadata and error reports."""


class LocalLakeStorage(LakeStorage):
    """The lake in a local folder: the embedded default, and what tests use.

    Atomic writes go to a `.tmp-*` file in the target folder, are fsynced, then renamed over the target.
    Read-modify-write operations hold an exclusive `flock` on a `.lock-<name>` file next to the object,
    so they are safe across processes on one machine (not across NFS clients).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(os.path.abspath(os.fspath(root)))

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self._root / key

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise LakeKeyNotFound(
                f"lake key not found: {self.uri(key)} (check the key, and that {self._root} is the lake root "
                "the writer used)"
            ) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        _check_prefix(prefix)
        start = self._root / prefix.rsplit("/", 1)[0] if "/" in prefix else self._root
        found = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if _is_internal(name):
                    continue
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self._root).replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(full)
                except FileNotFoundError:  # deleted while we listed
                    continue
                # mtime alone can miss two writes within one clock tick; inode and size catch those.
                found.append(ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"))
        return sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        with suppress(FileNotFoundError):
            self._path(key).unlink()

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(_LOCK_PREFIX + path.name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def update_bytes(self, key: str, update: Callable[[bytes | None], bytes | None]) -> bytes | None:
        path = self._path(key)
        with self._locked(path):
            try:
                current: bytes | None = path.read_bytes()
            except FileNotFoundError:
                current = None
            new = update(current)
            if new is not None:
                self.write_bytes(key, new)
            return new

    def append_line(self, key: str, line: str) -> None:
        """O_APPEND under the key's lock: constant time however long the object is."""
        _check_line(key, line)
        path = self._path(key)
        with self._locked(path), open(path, "ab") as f:
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def append_next_line(self, key: str, make_line: Callable[[str | None], str]) -> str:
        """Reads only the tail of the object, so appending stays cheap as the log grows."""
        path = self._path(key)
        with self._locked(path), open(path, "a+b") as f:
            line = make_line(_read_last_line(f))
            _check_line(key, line)
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return line

    def uri(self, key: str) -> str:
        return (self._root / key).as_uri()

    def describe_location(self) -> dict[str, str]:
        return {"backend": "local", "root": str(self._root)}


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: without this a power cut can forget it even after os.replace returned."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_last_line(f: Any, chunk: int = 65536) -> str | None:
    """The last line of an open binary file, reading backwards from the end in chunks."""
    end = f.seek(0, os.SEEK_END)
    tail = b""
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
        if b"\n" in tail.rstrip(b"\n"):
            break
    return _last_line(tail)


class S3LakeStorage(LakeStorage):
    """The lake in an S3 bucket (or an S3-compatible endpoint), always encrypted with SSE-KMS.

    Every put names `kms_key_id` and its response is checked: an object that does not come back as
    `aws:kms` with that key is deleted and the write refused. Read-modify-write operations are
    optimistic: get, compute, then put with `IfMatch` on the ETag (`IfNoneMatch='*'` for a new object),
    retrying on a concurrent change. When `kms_key_id` is an alias the key id in responses cannot be
    compared without a KMS call, so only `aws:kms` itself is checked.
    """

    max_conflict_retries = 10

    def __init__(
        self,
        bucket: str,
        *,
        kms_key_id: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any | None = None,
    ) -> None:
        if not bucket or not bucket.strip():
            raise LakeConfigError("S3 lake: the bucket name is empty; set the lake bucket to an existing bucket")
        if not kms_key_id or not kms_key_id.strip():
            raise LakeConfigError(
                f"S3 lake bucket {bucket}: kms_key_id is required; "
                "the lake never stores unencrypted objects. "
                "Set kms_key_id to the id, ARN or alias of a KMS key the writer may use"
            )
        self.bucket = bucket
        self.kms_key_id = kms_key_id.strip()
        self.prefix = prefix.strip("/")
        if self.prefix:
            _check_key(self.prefix)
        self.endpoint_url = endpoint_url
        if client is None:
            # boto3 on first use: a process that keeps its lake on local disk never pays its import (~0.1 s)
            import boto3
            from botocore.config import Config
        self._client = client or boto3.session.Session().client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}),
        )

    def _full(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _endpoint(self) -> str:
        return self.endpoint_url or f"the AWS endpoint for region {self._client.meta.region_name}"

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore failures into one-line LakeErrors that say what to check."""
        where = self.uri(key) if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            msg = _one_line(err.get("Message") or e)
            if code == "NoSuchBucket" or (key is None and code in ("404", "NotFound")):
                raise LakeError(
                    f"S3 lake bucket {self.bucket} does not exist at {self._endpoint()}; "
                    "create it or fix the bucket name, region and endpoint_url"
                ) from e
            if code in ("AccessDenied", "403", "Forbidden"):
                raise LakeError(
                    f"S3 lake: access denied to {action} {where}; check the credentials, the bucket "
                    f"policy and that they may use KMS key {self.kms_key_id}"
                ) from e
            if code.startswith("KMS") or "kms" in msg.lower():
                raise LakeConfigError(
                    f"S3 lake: {action} {where} failed on KMS key {self.kms_key_id} ({code}: {msg}); check "
                    "kms_key_id and the key policy"
                ) from e
            raise LakeError(f"S3 lake: {action} {where} failed ({code}: {msg})") from e
        except (BotoConnectionError, HTTPClientError) as e:
            raise LakeError(
                f"S3 lake: cannot reach {self._endpoint()} to {action} {where} ({_one_line(e)}); check "
                "endpoint_url, region and network access"
            ) from e
        except NoCredentialsError as e:
            raise LakeConfigError(
                f"S3 lake bucket {self.bucket}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, an AWS profile, or an instance/pod role"
            ) from e

    def _kms_key_matches(self, reported: str | None) -> bool:
        ours = self.kms_key_id
        if ours.startswith("alias/") or ":alias/" in ours:
            return True
        if not reported:
            return False
        return reported == ours or reported.endswith(f"/{ours}") or ours.endswith(f"/{reported}")

    def _check_encrypted(self, key: str, response: dict[str, Any]) -> None:
        sse = response.get("ServerSideEncryption")
        reported = response.get("SSEKMSKeyId")
        if sse == "aws:kms" and self._kms_key_matches(reported):
            return
        with suppress(LakeError), self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        raise LakeConfigError(
            f"S3 lake bucket {self.bucket}: {self.uri(key)} was stored with encryption {sse!r} key "
            f"{reported!r}, not aws:kms with {self.kms_key_id}; the object was deleted because this bucket "
            "configuration would store unencrypted data. Check the bucket's encryption settings and "
            "kms_key_id"
        )

    def _put(self, key: str, data: bytes, **conditions: str) -> bool:
        """Put with SSE-KMS; False when a conditional put lost to a concurrent change."""
        with self._errors("write", key):
            try:
                response = self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    Body=data,
                    ServerSideEncryption="aws:kms",
                    SSEKMSKeyId=self.kms_key_id,
                    **conditions,
                )
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                # 412: the ETag moved; 409: a concurrent conditional put; NoSuchKey: deleted meanwhile.
                if conditions and code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                    return False
                raise
        self._check_encrypted(key, response)
        return True

    def write_bytes(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def _get(self, key: str) -> tuple[bytes, str] | None:
        with self._errors("read", key):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            except ClientError as e:
                if str(e.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                    return None
                raise
            return response["Body"].read(), response["ETag"]

    def read_bytes(self, key: str) -> bytes:
        got = self._get(key)
        if got is None:
            raise LakeKeyNotFound(
                f"lake key not found: {self.uri(key)} (check the key, and that bucket {self.bucket} prefix "
                f"{self.prefix!r} is the lake the writer used)"
            )
        return got[0]

    def exists(self, key: str) -> bool:
        with self._errors("check", key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._full(key))
            except ClientError as e:
                if str(e.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        _check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        found = []
        with self._errors("list", prefix or None):
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            ):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(root) :]
                    if not _is_internal(key.rsplit("/", 1)[-1]):
                        found.append(ObjectInfo(key, int(obj["Size"]), obj["ETag"].strip('"')))
        return sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def update_bytes(self, key: str, update: Callable[[bytes | None], bytes | None]) -> bytes | None:
        for attempt in range(self.max_conflict_retries + 1):
            got = self._get(key)
            new = update(got[0] if got else None)
            if new is None:
                return None
            if self._put(key, new, **({"IfMatch": got[1]} if got else {"IfNoneMatch": "*"})):
                return new
            time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        raise LakeError(
            f"S3 lake: {self.uri(key)} kept changing under {self.max_conflict_retries + 1} "
            "conditional writes; too many concurrent writers to this key, retry later"
        )

    def check_encryption(self) -> None:
        """Fail fast, before any asset runs: the bucket is reachable and a probe object comes back SSE-KMS.

        The probe is written, read back and deleted under `<prefix>/_lake_probe/`.
        """
        with self._errors("check bucket"):
            self._client.head_bucket(Bucket=self.bucket)
        probe = f"_lake_probe/{uuid.uuid4().hex}.txt"
        payload = b"llm_assets lake encryption probe"
        try:
            self.write_bytes(probe, payload)
            with self._errors("check", probe):
                head = self._client.head_object(Bucket=self.bucket, Key=self._full(probe))
            self._check_encrypted(probe, head)
            if self.read_bytes(probe) != payload:
                raise LakeError(
                    f"S3 lake: {self.uri(probe)} read back different bytes than were written; check the "
                    "endpoint_url points at a real S3 service"
                )
        finally:
            self.delete(probe)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{key}" if self.prefix else f"s3://{self.bucket}/{key}"

    def describe_location(self) -> dict[str, str]:
        return {
            "backend": "s3",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self._client.meta.region_name or "",
            "kms_key_id": self.kms_key_id,
            "endpoint_url": self.endpoint_url or "",
        }
