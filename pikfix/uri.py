"""Read and write whole files named by a local path or an ``s3://bucket/key`` URI.

Checkpoints and backbone weights are user-supplied files that may live in object storage; this
is the one place that knows how to fetch them. S3 access goes through boto3 with the endpoint and
credentials from the settings (so MinIO works the same as AWS).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def _s3_client():
    import boto3

    from pikfix.settings import get_settings

    s = get_settings()
    return boto3.client(
        "s3",
        endpoint_url=s.s3_endpoint_url,
        region_name=s.s3_region,
        aws_access_key_id=s.s3_access_key_id,
        aws_secret_access_key=s.s3_secret_access_key,
    )


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
