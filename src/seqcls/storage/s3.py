"""The S3 backend: boto3's TransferManager for uploads, the server's checksums for verification, conditional writes
for latest.json, and one-line reasons for credential failures."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import StorageError
from ..uris import Target
from .base import FileEntry, Options, Store, b64, mismatch, part_digests, raced

S3_MULTIPART_THRESHOLD = 32 * 1024 * 1024
S3_PART_BYTES = 16 * 1024 * 1024
S3_CONCURRENCY = 8
S3_MAX_ATTEMPTS = 8  # total attempts per request, standard mode (capped exponential backoff); AWS_MAX_ATTEMPTS overrides
_CREDENTIAL_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                     "InvalidToken", "AllAccessDisabled"}


class S3Store(Store):
    def __init__(self, target: Target, options: Options) -> None:
        import boto3
        import botocore.session
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.target = target
        session = botocore.session.get_session()  # reads AWS_* env, profiles, AWS_ENDPOINT_URL_S3
        attempts = int(session.get_config_variable("max_attempts") or S3_MAX_ATTEMPTS)
        self.client = boto3.Session(botocore_session=session).client("s3", config=Config(
            retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=10, read_timeout=120))
        self.transfer = TransferConfig(multipart_threshold=S3_MULTIPART_THRESHOLD, multipart_chunksize=S3_PART_BYTES,
                                       max_concurrency=S3_CONCURRENCY, preferred_transfer_client="classic")
        self.owner = {"ExpectedBucketOwner": options.s3_expected_bucket_owner} if options.s3_expected_bucket_owner else {}
        self.sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": options.s3_sse_kms_id} if options.s3_sse_kms_id else {}
        self.put_args = {"ChecksumAlgorithm": "SHA256", **self.sse, **self.owner}

    def _key(self, name: str) -> str:
        return "/".join(p for p in (self.target.prefix, name) if p)

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def upload(self, items: list[tuple[str, FileEntry]]) -> None:
        """All files through one TransferManager: parts and files upload concurrently, retried per request."""
        from boto3.s3.transfer import create_transfer_manager

        with create_transfer_manager(self.client, self.transfer) as manager:
            futures = [manager.upload(str(entry.path), self.target.bucket, self._key(name), extra_args=dict(self.put_args))
                       for name, entry in items]
            for future in futures:
                future.result()

    def verify(self, name: str, entry: FileEntry) -> str:
        """Compare the server's size and checksum (SHA-256, composite for multipart; else the MD5 ETag)."""
        from s3transfer.utils import ChunksizeAdjuster

        head = self.client.head_object(Bucket=self.target.bucket, Key=self._key(name), ChecksumMode="ENABLED", **self.owner)
        if head["ContentLength"] != entry.size:
            raise StorageError(f"{self.target.join(name)} holds {head['ContentLength']} bytes, expected {entry.size}")
        part_bytes = ChunksizeAdjuster().adjust_chunksize(S3_PART_BYTES, entry.size)
        stored = head.get("ChecksumSHA256")
        etag = head.get("ETag", "").strip('"')
        if stored:
            kind, got = "sha256", stored
            if "-" in stored:
                parts = part_digests(entry.path, part_bytes, "sha256")
                expected = b64(hashlib.sha256(b"".join(parts)).digest()) + f"-{len(parts)}"
            else:
                expected = b64(bytes.fromhex(entry.sha256))
        elif re.fullmatch(r"[0-9a-f]{32}(-\d+)?", etag) and not self.sse:  # SSE-KMS ETags are not MD5s
            kind, got = "md5", etag
            if "-" in etag:
                parts = part_digests(entry.path, part_bytes, "md5")
                expected = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest() + f"-{len(parts)}"
            else:
                expected = entry.md5
        else:
            return "size"
        if got != expected:
            raise mismatch(self.target.join(name), kind, got, expected)
        return kind

    def put(self, name: str, data: bytes, new: bool) -> None:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if new else {}
        try:
            self.client.put_object(Bucket=self.target.bucket, Key=self._key(name), Body=data,
                                   ContentType="application/json", **self.put_args, **condition)
        except ClientError as err:
            if new and err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                if self.read(name) == data:
                    return  # a retry of our own write that landed but whose answer was lost
                raise raced(self.target.join(name)) from None
            raise

    def read(self, name: str, limit: int | None = None) -> bytes | None:
        from botocore.exceptions import ClientError

        ranged = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        try:
            return self.client.get_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner, **ranged)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def read_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None, None
            raise
        return got["Body"].read(), got["ETag"]

    def put_if(self, name: str, data: bytes, version: str | None) -> bool:
        """PutObject with If-Match on the ETag read, or If-None-Match: * (S3 conditional writes). SeaweedFS 4.48 re-checks
        them under a per-object write lock for single-part PUTs (withObjectWriteLock, weed/s3api); ours is one."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.target.bucket, Key=self._key(name), Body=data,
                                   ContentType="application/json", **self.put_args, **condition)
            return True
        except ClientError as err:
            # 412: the ETag moved (or the object appeared); 409: a concurrent conditional write is in flight;
            # 404: If-Match on an object deleted meanwhile (AWS; SeaweedFS answers 412).
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                                             "409", "NoSuchKey", "404"):
                return self.read(name) == data  # our own write whose answer was lost and was retried
            raise

    def download(self, name: str, dest: Path) -> None:
        self.client.download_file(self.target.bucket, self._key(name), str(dest), ExtraArgs=dict(self.owner),
                                  Config=self.transfer)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner)

    def reason(self, err: Exception) -> str:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(err, NoCredentialsError):
            return "no AWS credentials found (env AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or instance role)"
        if isinstance(err, ClientError):
            error = err.response.get("Error", {})
            code, message = str(error.get("Code", "")), error.get("Message", "") or str(err)
            text = f"{code}: {message}"
            if code in _CREDENTIAL_CODES:
                text += " (check the AWS credentials and the bucket policy; the bucket owner if s3_expected_bucket_owner is set)"
            return text
        return f"{type(err).__name__}: {err} (endpoint {self.client.meta.endpoint_url})"
