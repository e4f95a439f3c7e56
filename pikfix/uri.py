"""Read and write whole files named by a local path or an ``s3://bucket/key`` URI.

Checkpoints and backbone weights are user-supplied files that may live in object storage; this
is the one place that knows how to fetch them. S3 access goes through boto3 with the client options
given to :func:`configure_s3` (the service passes its endpoint and credentials, so MinIO works the same
as AWS); unset, boto3's own environment variables and config files apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_S3_OPTIONS: dict[str, Any] = {}


def configure_s3(**client_options: Any) -> None:
    """Set the ``boto3.client`` options (endpoint_url, region_name, credentials) for s3:// URIs.

    The library reads no configuration of its own: whoever runs it says where its objects live.
    """
    _S3_OPTIONS.clear()
    _S3_OPTIONS.update(client_options)


def _s3_client():
    import boto3

    return boto3.client("s3", **_S3_OPTIONS)


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def read_uri_bytes(uri: str | Path) -> bytes:
    text = str(uri)
    if text.startswith("s3://"):
        bucket, key = split_s3_uri(text)
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    path = Path(text.removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path.read_bytes()


def write_uri_bytes(uri: str | Path, data: bytes) -> None:
    text = str(uri)
    if text.startswith("s3://"):
        bucket, key = split_s3_uri(text)
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(text.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)
