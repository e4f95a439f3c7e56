"""The bureau client against the real service: a private redis-server, a fresh PostgreSQL database, a
moto S3 bucket, ``pikfix api`` (uvicorn) and, for the tests that need results, a ``pikfix worker``
running the tiny checkpoint. The client runs as its own process (``python -m pikfix_client``) where a
test kills it, and as a library otherwise."""

from __future__ import annotations

import io
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

_TESTS = Path(__file__).resolve().parents[1]
CLIENT_SRC = _TESTS.parent / "client"
for extra in (_TESTS / "reliability", CLIENT_SRC):  # the cluster helpers; the client, installed or not
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from rel_support import RelCluster, make_cluster, tiny_checkpoint  # noqa: E402


@dataclass
class Stack:
    """The running service and one tenant's key, as a bureau sees them."""

    cluster: RelCluster
    url: str
    key: str
    tenant_id: str

    def client(self, **options):
        from pikfix_client import Client

        return Client(self.url, self.key, **options)

    def client_env(self) -> dict[str, str]:
        """The environment of a client process: no service settings, the client importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIKFIX_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CLIENT_SRC), env.get("PYTHONPATH")) if p)
        env["PIKFIX_API_URL"] = self.url
        env["PIKFIX_API_KEY"] = self.key
        return env


@pytest.fixture
def stack(tmp_path, tmp_path_factory, fresh_redis_server, postgres_url, moto_server) -> Iterator[Stack]:
    with make_cluster(root=tmp_path, redis=fresh_redis_server, database_url=postgres_url, moto_server=moto_server,
                      checkpoint=tiny_checkpoint(tmp_path_factory)) as cluster:
        url = cluster.start_api()
        tenant_id = cluster.new_tenant()
        key = cluster.api_key(tenant_id)["Authorization"].removeprefix("Bearer ")
        yield Stack(cluster, url, key, tenant_id)


def client_command() -> list[str]:
    return [sys.executable, "-m", "pikfix_client"]


# --------------------------------------------------------------------------- folders of scans


def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("L", (width, height), rng.randrange(40, 200))
    for _ in range(6):  # a few blocks so the photos differ
        x, y = rng.randrange(width), rng.randrange(height)
        image.paste(rng.randrange(256), (x, y, min(width, x + 12), min(height, y + 12)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


BAD_FILES = {
    "notes/readme.jpg": b"this is a text file with a photo's name\n",
    "empty.jpg": b"",
    "box3/cut.jpg": None,  # a JPEG cut in half: filled in by make_folder
    "box1/scan.txt": b"plain text",
}


def make_folder(root: Path, count: int, distinct: int = 40, side: int = 32, bad: bool = True) -> dict[str, bytes]:
    """``count`` photos in nested folders (a pool of ``distinct`` images), plus the bad files; returns the
    good ones by relative path."""
    pool = [jpeg(side, side - 8 * (i % 2), seed=i) for i in range(distinct)]
    good: dict[str, bytes] = {}
    for i in range(count):
        rel = f"box{i % 4}/folder {i % 7}/scan-{i:05d}.jpg" if i % 5 else f"scan {i:05d}.jpg"
        good[rel] = pool[i % distinct]
    files = dict(good)
    if bad:
        files.update({k: v for k, v in BAD_FILES.items() if v is not None})
        files["box3/cut.jpg"] = jpeg(64, 64, seed=999)[:300]
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return good
