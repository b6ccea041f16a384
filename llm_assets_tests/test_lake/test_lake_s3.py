"""S3LakeStorage against a local moto server (moto honours SSE-KMS headers and IfMatch/IfNoneMatch)."""

import socket
import time
import uuid

import boto3
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from llm_assets.audit import AUDIT_LOG_KEY, AuditLog
from llm_assets.lake import (
    LakeConfigError,
    LakeError,
    LakeKeyNotFound,
    S3LakeStorage,
    read_dataset,
    read_manifest,
    write_table,
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """A moto server and a KMS key on it; credentials are fake and only valid for this module."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path_factory.mktemp("aws") / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path_factory.mktemp("aws") / "credentials"),
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        key_id = boto3.client("kms", endpoint_url=endpoint).create_key()["KeyMetadata"]["KeyId"]
        try:
            yield endpoint, key_id
        finally:
            server.stop()


@pytest.fixture
def s3(moto_endpoint):
    endpoint, _ = moto_endpoint
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture
def lake(moto_endpoint, s3):
    endpoint, key_id = moto_endpoint
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return S3LakeStorage(bucket, kms_key_id=key_id, prefix="lake", region="us-east-1", endpoint_url=endpoint)


def test_roundtrip_list_delete(lake):
    lake.write_bytes("a/1.txt", b"one")
    lake.write_bytes("a/2.txt", b"two")
    lake.write_bytes("b.txt", b"three")
    assert lake.read_bytes("a/1.txt") == b"one"
    assert lake.exists("a/1.txt")
    assert not lake.exists("a/3.txt")
    listed = lake.list_objects("a/")
    assert [(o.key, o.size) for o in listed] == [("a/1.txt", 3), ("a/2.txt", 3)]
    old_version = listed[0].version
    lake.write_bytes("a/1.txt", b"uno")
    assert lake.list_objects("a/1.txt")[0].version != old_version
    lake.delete("a/1.txt")
    lake.delete("a/1.txt")
    assert [o.key for o in lake.list_objects("")] == ["a/2.txt", "b.txt"]
    with pytest.raises(LakeKeyNotFound, match=rf"^lake key not found: s3://{lake.bucket}/lake/a/1\.txt \("):
        lake.read_bytes("a/1.txt")


def test_objects_are_stored_with_our_kms_key(lake, s3, moto_endpoint):
    _, key_id = moto_endpoint
    lake.write_bytes("x.bin", b"secret")
    head = s3.head_object(Bucket=lake.bucket, Key="lake/x.bin")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_id
    lake.check_encryption()
    assert lake.list_objects("_lake_probe/") == []


def test_location_and_uri(lake, moto_endpoint):
    endpoint, key_id = moto_endpoint
    assert lake.uri("a/b") == f"s3://{lake.bucket}/lake/a/b"
    assert lake.describe_location() == {
        "backend": "s3",
        "bucket": lake.bucket,
        "prefix": "lake",
        "region": "us-east-1",
        "kms_key_id": key_id,
        "endpoint_url": endpoint,
    }


@pytest.mark.parametrize("kms_key_id", ["", "  "])
def test_kms_key_is_required(kms_key_id):
    with pytest.raises(LakeConfigError, match="S3 lake bucket my-bucket: kms_key_id is required"):
        S3LakeStorage("my-bucket", kms_key_id=kms_key_id)


def test_missing_bucket_is_named(moto_endpoint):
    endpoint, key_id = moto_endpoint
    lake = S3LakeStorage("no-such-bucket-here", kms_key_id=key_id, endpoint_url=endpoint)
    for action in (lake.check_encryption, lambda: lake.write_bytes("k", b"x")):
        with pytest.raises(LakeError) as err:
            action()
        assert "S3 lake bucket no-such-bucket-here does not exist" in str(err.value)
        assert "\n" not in str(err.value)


def test_unreachable_endpoint_is_one_clear_line(moto_endpoint):
    _, key_id = moto_endpoint
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    lake = S3LakeStorage("some-bucket", kms_key_id=key_id, endpoint_url=endpoint)
    started = time.monotonic()
    with pytest.raises(LakeError) as err:
        lake.check_encryption()
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert f"cannot reach {endpoint}" in message
    assert "\n" not in message


class _StripsEncryption:
    """A client whose puts report no encryption, as a bucket that ignores SSE headers would."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def put_object(self, **kwargs):
        response = self._client.put_object(**kwargs)
        response.pop("ServerSideEncryption", None)
        return response


def test_unencrypted_put_is_deleted_and_refused(lake, s3, moto_endpoint):
    _, key_id = moto_endpoint
    bad = S3LakeStorage(lake.bucket, kms_key_id=key_id, prefix="lake", client=_StripsEncryption(s3))
    with pytest.raises(LakeConfigError, match="would store unencrypted data"):
        bad.write_bytes("plain.txt", b"x")
    assert not lake.exists("plain.txt")
    with pytest.raises(LakeConfigError):
        bad.check_encryption()


def test_moto_enforces_conditional_puts(lake, s3):
    """The optimistic concurrency below relies on IfMatch/IfNoneMatch; moto 5.2 implements both."""
    lake.write_bytes("c.txt", b"1")
    for condition in ({"IfMatch": '"not-the-etag"'}, {"IfNoneMatch": "*"}):
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=lake.bucket, Key="lake/c.txt", Body=b"2", **condition)
        assert err.value.response["Error"]["Code"] == "PreconditionFailed"


def test_update_bytes_retries_after_a_concurrent_change(lake):
    lake.write_bytes("log.txt", b"a\n")
    calls = []

    def update(current):
        calls.append(current)
        if len(calls) == 1:  # another writer sneaks in between our get and our put
            lake.write_bytes("log.txt", current + b"other\n")
        return current + b"mine\n"

    assert lake.update_bytes("log.txt", update) == b"a\nother\nmine\n"
    assert calls == [b"a\n", b"a\nother\n"]
    assert lake.read_bytes("log.txt") == b"a\nother\nmine\n"


def test_update_bytes_gives_up_with_a_clear_error(lake):
    lake.max_conflict_retries = 2
    lake.write_bytes("hot.txt", b"0")

    def always_conflicting(current):
        lake.write_bytes("hot.txt", current + b"+")
        return current + b"!"

    with pytest.raises(LakeError, match="kept changing under 3 conditional writes"):
        lake.update_bytes("hot.txt", always_conflicting)


def test_append_line(lake):
    lake.append_line("l.jsonl", "one")
    lake.append_line("l.jsonl", "two")
    assert lake.read_bytes("l.jsonl") == b"one\ntwo\n"
    assert lake.append_next_line("l.jsonl", lambda last: f"after {last}") == "after two"


def test_shard_dataset_on_s3(lake):
    table = pa.table({"id": range(25), "text": [f"t{i}" for i in range(25)]})
    manifest = write_table(lake, "docs", "p1", table, max_rows_per_shard=10)
    assert len(manifest.shards) == 3
    assert read_manifest(lake, "docs", "p1") == manifest
    assert read_dataset(lake, manifest).equals(table)


def test_audit_log_on_s3(lake):
    log = AuditLog(lake)
    for i in range(5):
        log.append({"action": "materialize", "i": i})
    assert log.verify().ok
    assert [r["seq"] for r in log.records()] == list(range(5))
    content = lake.read_bytes(AUDIT_LOG_KEY).replace(b'"i":2', b'"i":7')
    lake.write_bytes(AUDIT_LOG_KEY, content)
    result = log.verify()
    assert not result.ok
    assert result.first_bad_line == 3
