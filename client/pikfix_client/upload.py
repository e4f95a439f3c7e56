"""Uploading files to presigned URLs, several in flight: one PUT per small file, multipart for large ones.

Each file is read once: its SHA-256 is computed from the very bytes sent, and recorded in the state
file only after the store accepted them, so a kill at any point leaves it marked "not uploaded"
(and it is simply sent again: the same name lands on the same object).
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from pikfix_client.errors import ClientError, TransferError
from pikfix_client.http import Http
from pikfix_client.results import Skipped
from pikfix_client.scan import Candidate
from pikfix_client.state import SubmitState

MiB = 1024 * 1024
PRESIGN_CHUNK = 200  # names per /uploads call (the API takes up to 1000)
DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
DEFAULT_PART_SIZE = 16 * MiB


class Progress:
    """Files, bytes, rate and ETA on stderr; silent when ``enabled`` is False or stderr is not a TTY.
    Without ``total_bytes`` the bar counts files (a download's sizes are not known beforehand)."""

    def __init__(self, total_files: int, total_bytes: int | None, enabled: bool, what: str) -> None:
        self._lock = threading.Lock()
        self._files = 0
        self._total_files = total_files
        self._by_files = total_bytes is None
        common = {"desc": what, "file": sys.stderr, "disable": None if enabled else True, "dynamic_ncols": True}
        if self._by_files:
            self._bar = tqdm(total=total_files, unit="file", **common)
        else:
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, **common)

    def add(self, nbytes: int = 0, files: int = 0) -> None:
        with self._lock:
            self._files += files
            if self._by_files:
                self._bar.update(files)
                return
            self._bar.update(nbytes)
            if files:
                self._bar.set_postfix_str(f"{self._files}/{self._total_files} files", refresh=False)

    def close(self) -> None:
        self._bar.close()


@dataclass
class UploadTally:
    files: int = 0
    bytes: int = 0
    unreadable: list[Skipped] = field(default_factory=list)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Uploader:
    """Sends files into an open batch through the API's presigned URLs."""

    def __init__(self, http: Http, batch_id: str, state: SubmitState, *, concurrency: int = 8,
                 multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD, part_size: int = DEFAULT_PART_SIZE,
                 progress: Progress | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.http = http
        self.batch_id = batch_id
        self.state = state
        self.concurrency = concurrency
        self.threshold = multipart_threshold
        self.part_size = part_size
        self.progress = progress
        self.tally = UploadTally()
        self._lock = threading.Lock()

    # -- the run
    def run(self, todo: list[Candidate]) -> UploadTally:
        """Upload every file of ``todo``; large files start first, they are the long pole."""
        large = [c for c in todo if c.size >= self.threshold]
        small = [c for c in todo if c.size < self.threshold]
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="upload") as pool, \
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="part") as parts:
            try:
                pending = {pool.submit(self._guarded, self.put_large, c, parts) for c in large}
                for chunk in chunks(small, PRESIGN_CHUNK):
                    urls = self.presign([c.name for c in chunk])
                    pending |= {pool.submit(self._guarded, self.put_small, c, urls[c.name]) for c in chunk}
                    pending = self._drain(pending, keep=PRESIGN_CHUNK)  # at most two chunks' URLs waiting
                self._drain(pending, keep=0)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return self.tally

    @staticmethod
    def _drain(pending: set[Future], keep: int) -> set[Future]:
        while len(pending) > keep:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # the first failure stops the run
        return pending

    def _guarded(self, send: Callable[..., None], c: Candidate, *args: Any) -> None:
        """A file that vanished or became unreadable since the scan is skipped, not fatal."""
        try:
            send(c, *args)
        except OSError as exc:
            with self._lock:
                self.tally.unreadable.append(Skipped(c.rel, f"unreadable: {exc.strerror or exc}"))

    def _done(self, c: Candidate, size: int, sha256: str) -> None:
        self.state.mark_uploaded(c, size, sha256)
        with self._lock:
            self.tally.files += 1
            self.tally.bytes += size
        if self.progress:
            self.progress.add(files=1)

    # -- one PUT
    def presign(self, names: list[str]) -> dict[str, str]:
        answer = self.http.json("POST", f"/v1/batches/{self.batch_id}/uploads", "presigning uploads",
                                json={"files": names})
        urls = {}
        for item in answer["uploads"]:
            if item["stored_name"] != item["name"]:
                raise ClientError(f"the API stores {item['name']!r} as {item['stored_name']!r}; this client's "
                                  "names would not map back to the folder's paths")
            urls[item["name"]] = item["url"]
        return urls

    def put_small(self, c: Candidate, url: str) -> None:
        data = c.path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        response = self.http.put(url, data, f"uploading {c.rel}")
        if response.status_code == 403:  # the URL expired while queued: one fresh URL
            response = self.http.put(self.presign([c.name])[c.name], data, f"uploading {c.rel}")
        _check_store_answer(response, c.rel)
        if self.progress:
            self.progress.add(nbytes=len(data))
        self._done(c, len(data), sha)

    # -- multipart
    def put_large(self, c: Candidate, parts_pool: ThreadPoolExecutor) -> None:
        """Parts read in order (hashing the whole file on the way) and PUT in parallel, then joined."""
        started = self.http.json("POST", f"/v1/batches/{self.batch_id}/multipart", f"starting upload of {c.rel}",
                                 json={"name": c.name, "size": c.size, "part_size": self.part_size})
        part_size = int(started["part_size"])
        urls = {p["part_number"]: p["url"] for p in started["parts"]}
        sha = hashlib.sha256()
        slots = threading.Semaphore(self.concurrency)  # bounds the parts held in memory
        futures: list[Future] = []
        size = 0
        with open(c.path, "rb") as f:
            for number in sorted(urls):
                slots.acquire()
                block = f.read(part_size)
                sha.update(block)
                size += len(block)
                futures.append(parts_pool.submit(self._put_part, c, number, urls[number], block, slots))
        if size != c.size:
            raise OSError(f"{c.rel} changed size while being uploaded ({c.size} -> {size} bytes)")
        etags = [future.result() for future in futures]
        self.http.json("POST", f"/v1/batches/{self.batch_id}/multipart/complete", f"completing upload of {c.rel}",
                       json={"name": c.name, "upload_id": started["upload_id"],
                             "parts": [{"part_number": n, "etag": e} for n, e in etags]})
        self._done(c, size, sha.hexdigest())

    def _put_part(self, c: Candidate, number: int, url: str, block: bytes, slots: threading.Semaphore) -> tuple[int, str]:
        try:
            response = self.http.put(url, block, f"uploading part {number} of {c.rel}")
            _check_store_answer(response, f"part {number} of {c.rel}")
            etag = response.headers.get("etag")
            if not etag:
                raise TransferError(f"the object store sent no ETag for part {number} of {c.rel}")
            if self.progress:
                self.progress.add(nbytes=len(block))
            return number, etag
        finally:
            slots.release()


def _check_store_answer(response: Any, what: str) -> None:
    if response.status_code not in (200, 201, 204):
        text = response.text.strip().replace("\n", " ")[:300]
        raise TransferError(f"the object store refused {what}: HTTP {response.status_code} {text}")


def total_bytes(items: Iterable[Candidate]) -> int:
    return sum(c.size for c in items)
