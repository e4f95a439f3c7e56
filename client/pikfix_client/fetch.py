"""``fetch``: a batch's results mirrored under ``OUT/data`` by the input's relative paths, every digest
checked, then ``OUT`` made a BagIt bag (RFC 8493) with the batch report and PREMIS as tag files.

Resumable: a result is written to a hidden temporary name and renamed into place once its digest
checked out, so a file under its real name is always complete; a second run skips those (checking
their digest when the service recorded one) and fetches the rest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import bagit

from pikfix_client import __version__
from pikfix_client.errors import ApiError, ClientError, DigestMismatch
from pikfix_client.http import Http, download
from pikfix_client.names import decode_name
from pikfix_client.results import FetchResult
from pikfix_client.status import pages
from pikfix_client.upload import Progress

log = logging.getLogger("pikfix_client")

RESULT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "tiff16": ".tif"}
PART_SUFFIX = ".pikfix-part"
BAG_FILES = frozenset({"bagit.txt", "bag-info.txt", "manifest-sha256.txt", "tagmanifest-sha256.txt"})
TAG_REPORT = "pikfix-report.html"
TAG_PREMIS = "pikfix-premis.xml"
TAG_JOBS = "pikfix-jobs.tsv"
TERMINAL = ("finished", "cancelled")


# --------------------------------------------------------------------------- paths


def _safe_rel(rel: str) -> str | None:
    """``rel`` if it is a harmless relative path (no root, no ``..``, no empty part), else None."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts)


def plan_paths(jobs: list[dict[str, Any]]) -> dict[str, str]:
    """job id -> path under ``data/``: the input's relative path with the result's extension; an input
    whose result path another already took keeps its own extension too (``a.jpg.png``)."""
    taken: set[str] = set()
    plan: dict[str, str] = {}
    for job in jobs:
        ext = RESULT_EXTENSIONS.get(job["output_format"], ".bin")
        rel = _safe_rel(decode_name(job.get("input_name") or "")) or f"job-{job['id']}"
        pure = PurePosixPath(rel)
        for option in (str(pure.with_suffix(ext)) if pure.suffix else rel + ext, rel + ext,
                       f"{rel}.{job['id']}{ext}"):
            if option.lower() not in taken:
                break
        taken.add(option.lower())
        plan[job["id"]] = option
    return plan


def content_digest_sha256(headers: Any) -> str | None:
    """The SHA-256 (hex) a ``Content-Digest: sha-256=:<base64>:`` header carries, if any."""
    for item in (headers.get("content-digest") or "").split(","):
        algo, _, value = item.strip().partition("=")
        if algo.strip().lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            with contextlib.suppress(binascii.Error, ValueError):
                return base64.b64decode(value[1:-1], validate=True).hex()
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- fetching


class Fetch:
    """One run of ``fetch`` of a batch into ``out``."""

    def __init__(self, http: Http, batch_id: str, out: Path, *, concurrency: int = 8, wait: bool = False,
                 poll_s: float = 10.0, progress: bool = False) -> None:
        self.http = http
        self.batch_id = batch_id
        self.out = out
        self.data = out / "data"
        self.concurrency = concurrency
        self.wait = wait
        self.poll_s = poll_s
        self.progress = progress

    def run(self) -> FetchResult:
        self._check_out()
        batch = self._batch()
        jobs = list(pages(self.http, self.batch_id))
        succeeded = [j for j in jobs if j["status"] == "succeeded"]
        plan = plan_paths(succeeded)
        self.data.mkdir(parents=True, exist_ok=True)
        self._sweep_parts()
        outcomes = self._download_all(succeeded, plan)
        downloaded = sum(1 for o in outcomes if o == "downloaded")
        present = len(outcomes) - downloaded
        failed = sum(1 for j in jobs if j["status"] == "failed")
        if batch["status"] not in TERMINAL:
            log.warning("batch %s is %s: %d result(s) fetched so far; run fetch again once it has finished",
                        self.batch_id, batch["status"], len(outcomes))
            return FetchResult(self.batch_id, self.out, downloaded, present, failed, False, [])
        tags = self._tag_files(jobs, plan)
        self._bag(batch, jobs, tags)
        return FetchResult(self.batch_id, self.out, downloaded, present, failed, True, sorted(tags))

    def _check_out(self) -> None:
        """``out`` must be empty, or a bag an earlier fetch wrote: anything else would end up in the bag."""
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise ClientError(f"{self.out} exists and is not a folder")
        ours = BAG_FILES | {"data", TAG_REPORT, TAG_PREMIS, TAG_JOBS}
        strangers = sorted(p.name for p in self.out.iterdir() if p.name not in ours
                           and not p.name.endswith(PART_SUFFIX))
        if strangers:
            raise ClientError(f"{self.out} holds files that are not part of a fetched batch ({strangers[:5]}); "
                              "fetch into an empty folder")

    def _batch(self) -> dict[str, Any]:
        while True:
            batch = self.http.json("GET", f"/v1/batches/{self.batch_id}", "reading the batch")
            if not self.wait or batch["status"] in TERMINAL:
                return batch
            p = batch["progress"]
            log.info("batch %s: %d/%d done; waiting", self.batch_id, p["done"], p["total"])
            time.sleep(self.poll_s)

    def _sweep_parts(self) -> None:
        """Half-written files a killed run left behind."""
        for part in [*self.data.rglob(f"*{PART_SUFFIX}"), *self.out.glob(f"*{PART_SUFFIX}")]:
            part.unlink(missing_ok=True)

    def _download_all(self, jobs: list[dict[str, Any]], plan: dict[str, str]) -> list[str]:
        progress = Progress(len(jobs), None, self.progress, "fetch")
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch") as pool:
                futures = [pool.submit(self._one, job, self.data / plan[job["id"]], progress) for job in jobs]
                return [f.result() for f in futures]
        finally:
            progress.close()

    def _one(self, job: dict[str, Any], target: Path, progress: Progress) -> str:
        recorded = job.get("output_sha256")
        if target.is_file() and (recorded is None or sha256_file(target) == recorded):
            progress.add(files=1)
            return "present"
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}{PART_SUFFIX}")
        try:
            for attempt in (1, 2):
                got = self._get_result(job, part)
                if got == (recorded or got):
                    break
                if attempt == 2:
                    raise DigestMismatch(f"the result of {job.get('input_name')} (job {job['id']}) has SHA-256 "
                                         f"{got}, the service recorded {recorded}: it was damaged on the way or "
                                         "in storage")
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        progress.add(nbytes=target.stat().st_size, files=1)
        return "downloaded"

    def _get_result(self, job: dict[str, Any], part: Path) -> str:
        """Download into ``part``; the SHA-256 of the bytes, checked against any ``Content-Digest``."""
        what = f"downloading the result of job {job['id']}"
        got = download(self.http.api, f"/v1/jobs/{job['id']}/result", part, what, self.http.policy)
        announced = content_digest_sha256(got.headers)
        if got.location:
            got = download(self.http.store, got.location, part, what, self.http.policy, store=True)
            announced = content_digest_sha256(got.headers) or announced
        assert got.sha256 is not None
        if announced and announced != got.sha256:
            raise DigestMismatch(f"{what}: the bytes have SHA-256 {got.sha256}, Content-Digest says {announced}")
        return got.sha256

    # -- the bag
    def _optional(self, path: str, what: str) -> bytes | None:
        try:
            return self.http.request("GET", path, what).content
        except ApiError as exc:
            if exc.status in (404, 405):
                log.info("%s: not available (%s)", what, exc.code)
                return None
            raise

    def _tag_files(self, jobs: list[dict[str, Any]], plan: dict[str, str]) -> dict[str, bytes]:
        tags = {TAG_JOBS: _jobs_tsv(jobs, plan)}
        report = self._optional(f"/v1/batches/{self.batch_id}/report", "the batch report")
        if report is not None:
            tags[TAG_REPORT] = report
        premis = self._optional(f"/v1/batches/{self.batch_id}/premis", "the PREMIS record")
        if premis is not None:
            tags[TAG_PREMIS] = premis
        return tags

    def _bag(self, batch: dict[str, Any], jobs: list[dict[str, Any]], tags: dict[str, bytes]) -> None:
        for name, body in tags.items():
            _write_atomic(self.out / name, body)
        _write_atomic(self.out / "bagit.txt", b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
        if not (self.out / "manifest-sha256.txt").exists():
            _write_atomic(self.out / "manifest-sha256.txt", b"")  # names the algorithm; save() fills it
        bag = bagit.Bag(str(self.out))
        bag.info = self._bag_info(batch, jobs)
        bag.save(manifests=True)
        bag.validate()

    def _bag_info(self, batch: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j["status"]] = counts.get(j["status"], 0) + 1
        checkpoints = sorted({j["checkpoint_sha256"] for j in jobs if j.get("checkpoint_sha256")})
        info: dict[str, Any] = {
            "Batch-Id": batch["id"],
            "Batch-Name": batch["name"],
            "External-Identifier": batch["id"],
            "Pikfix-Version": self._service_version(),
            "Checkpoint-Sha256": checkpoints or "unknown",
            "Jobs-Total": str(len(jobs)),
            **{f"Jobs-{s.capitalize()}": str(counts.get(s, 0)) for s in ("succeeded", "failed", "cancelled")},
            "Bagging-Date": time.strftime("%Y-%m-%d"),
            "Bag-Software-Agent": f"pikfix-client {__version__}",
        }
        return info

    def _service_version(self) -> str:
        try:
            return str(self.http.json("GET", "/openapi.json", "reading the API description")["info"]["version"])
        except (ClientError, KeyError, TypeError, ValueError):
            return "unknown"


def _jobs_tsv(jobs: list[dict[str, Any]], plan: dict[str, str]) -> bytes:
    """One line per job: what became of each input, and where its result is in the bag."""
    lines = ["job_id\tinput_path\tstatus\terror_code\tresult_path\tinput_sha256"]
    for j in jobs:
        error = (j.get("error") or {}).get("code") or ""
        result = f"data/{plan[j['id']]}" if j["id"] in plan else ""
        name = decode_name(j.get("input_name") or "")
        fields = [j["id"], name, j["status"], error, result, j.get("input_sha256") or ""]
        lines.append("\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _write_atomic(path: Path, body: bytes) -> None:
    tmp = path.with_name(f".{path.name}{PART_SUFFIX}")
    tmp.write_bytes(body)
    os.replace(tmp, path)
