"""``submit``: folder -> one batch, resumable after any kill.

The order makes every step safe to repeat: the idempotency token is stored before the batch is
created (a repeated create answers the same batch), a file is marked uploaded only after the store
accepted it, and a repeated submit of a batch that is no longer open counts as done (the API creates
a batch's jobs and closes it in one transaction, so jobs are never registered twice).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pikfix_client.errors import ApiError, ClientError, StateError
from pikfix_client.http import Http
from pikfix_client.results import Rejection, Skipped, SubmitResult
from pikfix_client.scan import Candidate, scan_folder
from pikfix_client.state import DEFAULT_NAME, SubmitState
from pikfix_client.upload import (
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_PART_SIZE,
    Progress,
    Uploader,
    total_bytes,
)

log = logging.getLogger("pikfix_client")

SUBMIT_TIMEOUT_S = 1800.0  # the API reads and checks every uploaded file before it answers
MAX_SUBMIT_NAMES = 100_000  # the most names a submit lists; beyond, the API registers every upload
MAX_ROUNDS = 3  # upload -> submit rounds when the API reports files missing or altered


@dataclass(frozen=True)
class SubmitOptions:
    batch_name: str | None = None
    output_format: str = "png"
    reference_mode: str = "auto"
    reference_id: str | None = None
    working_size: int | None = None
    concurrency: int = 8
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    part_size: int = DEFAULT_PART_SIZE
    state: Path | None = None
    references: Path | None = None
    progress: bool = False

    def create_body(self, folder: Path) -> dict[str, Any]:
        options: dict[str, Any] = {"reference_mode": self.reference_mode, "output_format": self.output_format}
        if self.reference_id:
            options["reference_id"] = self.reference_id
        if self.working_size:
            options["working_size"] = self.working_size
        return {"name": self.batch_name or folder.name or "batch", "options": options}


def content_digest(sha256_hex: str) -> str:
    """RFC 9530 form: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


def _names_in(details: Any) -> list[str]:
    """File names an error's ``details`` carries: ``{"name": ...}`` (``digest_mismatch``), a list of names
    (``upload_missing``) or of ``{"name": ...}``."""
    if isinstance(details, dict):
        return [str(details["name"])] if "name" in details else []
    if isinstance(details, list):
        return [str(d.get("name")) if isinstance(d, dict) else str(d) for d in details]
    return []


class Submission:
    """One run of ``submit`` over a folder and its state file."""

    def __init__(self, http: Http, folder: Path, opts: SubmitOptions) -> None:
        self.http = http
        self.folder = folder
        self.opts = opts
        self.state = SubmitState(opts.state or folder / DEFAULT_NAME)
        self.skipped: list[Skipped] = []
        self.rejected: list[Rejection] = []

    def run(self) -> SubmitResult:
        started = time.monotonic()
        try:
            self._check_owner()
            candidates, self.skipped = scan_folder(self.folder, exclude=self._own_files())
            for s in self.skipped:
                log.warning("skipped %s: %s", s.path, s.reason)
            references = self._references() if self.opts.references else {}
            batch = self._batch()
            if batch["status"] == "cancelled":
                raise ClientError(f"batch {batch['id']} was cancelled; pass --state with a new file to send "
                                  "the folder as a new batch")
            if batch["status"] != "open":
                return self._result(batch, candidates, 0, 0, None, references, True, started)
            if not candidates:
                raise ClientError(f"nothing to upload in {self.folder}: {len(self.skipped)} file(s) skipped")
            try:
                uploaded, nbytes, registered, already = self._upload_and_submit(batch["id"], candidates)
            except ApiError as exc:
                if exc.code != "batch_not_open":
                    raise
                self._closed_by_earlier_run(batch["id"], exc)
                uploaded, nbytes, registered, already = 0, 0, None, True
            return self._result(batch, candidates, uploaded, nbytes, registered, references, already, started)
        finally:
            self.state.close()

    # -- the state file belongs to one API and one batch request
    def _own_files(self) -> frozenset[Path]:
        p = self.state.path.resolve()
        return frozenset({p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm"),
                          p.with_name(p.name + "-journal")})

    def _check_owner(self) -> None:
        body = self.opts.create_body(self.folder)
        recorded_api, recorded_body = self.state.get("api_url"), self.state.get("create_body")
        if recorded_api is None:
            self.state.set("api_url", self.http.url)
            self.state.set("create_body", body)
            return
        if recorded_api != self.http.url:
            raise StateError(f"{self.state.path} records a submit to {recorded_api}, not {self.http.url}; "
                             "pass --state with a new file to submit this folder there")
        if recorded_body != body:
            raise StateError(f"{self.state.path} records a batch made with other settings ({recorded_body}); "
                             "run with the same settings to resume it, or pass --state with a new file")

    # -- the batch
    def _batch(self) -> dict[str, Any]:
        """The batch of this folder: created once (idempotency token stored first), then only read."""
        batch_id = self.state.get("batch_id")
        if batch_id:
            return self.http.json("GET", f"/v1/batches/{batch_id}", "reading the batch")
        token = self.state.get("idempotency_key")
        if token is None:
            token = f"pikfix-client-{uuid.uuid4().hex}"
            self.state.set("idempotency_key", token)
        batch = self.http.json("POST", "/v1/batches", "creating the batch", json=self.state.get("create_body"),
                               headers={"Idempotency-Key": token})
        self.state.set("batch_id", batch["id"])
        log.info("batch %s (%s)", batch["id"], batch["name"])
        return batch

    # -- uploads, then submit; again for what the API found missing
    def _upload_and_submit(self, batch_id: str, candidates: list[Candidate]) -> tuple[int, int, int | None, bool]:
        uploaded = nbytes = 0
        for _ in range(MAX_ROUNDS):
            done = self.state.uploaded()
            todo = [c for c in candidates if not self.state.is_current(c, done)]
            if todo:
                log.info("uploading %d of %d files (%d already uploaded)", len(todo), len(candidates),
                         len(candidates) - len(todo))
            progress = Progress(len(todo), total_bytes(todo), self.opts.progress, "upload")
            try:
                tally = Uploader(self.http, batch_id, self.state, concurrency=self.opts.concurrency,
                                 multipart_threshold=self.opts.multipart_threshold, part_size=self.opts.part_size,
                                 progress=progress).run(todo)
            finally:
                progress.close()
            uploaded, nbytes = uploaded + tally.files, nbytes + tally.bytes
            self.skipped += tally.unreadable
            for s in tally.unreadable:
                log.warning("skipped %s: %s", s.path, s.reason)
            gone = {s.path for s in tally.unreadable}
            candidates = [c for c in candidates if c.rel not in gone]
            outcome = self._submit(batch_id, candidates)
            if isinstance(outcome, list):  # names the API wants again
                self.state.forget_uploads(outcome)
                log.warning("the API found %d upload(s) missing or altered; sending them again", len(outcome))
                continue
            registered, already = outcome
            return uploaded, nbytes, registered, already
        raise ClientError(f"the API kept reporting uploads missing after {MAX_ROUNDS} rounds; run again later")

    def _submit(self, batch_id: str, candidates: list[Candidate]) -> tuple[int | None, bool] | list[str]:
        """``(registered, already_submitted)``, or the names to upload again."""
        done = self.state.uploaded()
        names = [c.name for c in candidates if c.name in done]
        body: dict[str, Any] = {"files": names} if len(names) <= MAX_SUBMIT_NAMES else {}
        if self._api_takes_digests():
            body["digests"] = {n: content_digest(done[n][2]) for n in names}
        try:
            answer = self.http.json("POST", f"/v1/batches/{batch_id}/submit", "submitting the batch", json=body,
                                    timeout=SUBMIT_TIMEOUT_S)
        except ApiError as exc:
            if exc.code in ("upload_missing", "digest_mismatch") and _names_in(exc.details):
                return _names_in(exc.details)
            if exc.code != "batch_not_open":
                raise
            self._closed_by_earlier_run(batch_id, exc)
            return None, True
        self.rejected += [Rejection(r["name"], r["code"], r["message"]) for r in answer.get("rejected", [])]
        for r in answer.get("rejected", []):
            log.warning("refused by the API: %s: %s (%s)", r["name"], r["message"], r["code"])
        return int(answer["registered"]) + int(answer.get("archives", 0)), False

    def _closed_by_earlier_run(self, batch_id: str, exc: ApiError) -> None:
        """A batch that stopped taking files was submitted by an earlier (killed or timed-out) run, unless
        someone cancelled it: then there is nothing this folder can still do with it."""
        batch = self.http.json("GET", f"/v1/batches/{batch_id}", "reading the batch")
        if batch["status"] == "cancelled":
            raise ClientError(f"batch {batch_id} was cancelled; nothing more can be submitted to it; pass "
                              "--state with a new file to send the folder as a new batch") from exc

    def _api_takes_digests(self) -> bool:
        """Whether this API's submit takes a ``digests`` map (read from its OpenAPI description)."""
        try:
            spec = self.http.json("GET", "/openapi.json", "reading the API description")
            return "digests" in spec["components"]["schemas"]["SubmitRequest"]["properties"]
        except (ClientError, KeyError, TypeError, ValueError):
            return False

    # -- references
    def _references(self) -> dict[str, str]:
        """Upload the colour references (one per request, so each refusal names its file); rel -> id."""
        folder = self.opts.references
        assert folder is not None
        candidates, skipped = scan_folder(folder)
        for s in skipped:
            log.warning("skipped reference %s: %s", s.path, s.reason)
        known = self.state.references()
        ids: dict[str, str] = {}
        for c in candidates:
            row = known.get(c.rel)
            if row is None or row[0] != c.size or row[1] != c.mtime_ns:
                row = self._send_reference(c)
            ref_id, refused = row[3], row[4]
            if ref_id:
                ids[c.rel] = ref_id
            elif refused:
                code, _, message = refused.partition(": ")
                self.rejected.append(Rejection(c.rel, code, message))
        log.info("%d reference(s) in the corpus", len(ids))
        return ids

    def _send_reference(self, c: Candidate) -> tuple[int, int, str, str | None, str | None]:
        if c.is_archive:
            refused: str | None = "not_an_image: a reference must be a photo, not an archive"
            ref_id = None
            sha = ""
        else:
            data = c.path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            ref_id, refused = None, None
            try:
                answer = self.http.json("POST", "/v1/references", f"uploading reference {c.rel}",
                                        files={"files": (c.path.name, data, "application/octet-stream")})
                if answer["references"]:
                    ref_id = answer["references"][0]["id"]
                else:
                    r = answer["rejected"][0]
                    refused = f"{r['code']}: {r['message']}"
            except ApiError as exc:
                if exc.status not in (413, 415, 422):
                    raise
                refused = f"{exc.code}: {exc.message}"
        if refused:
            log.warning("reference %s refused: %s", c.rel, refused)
        self.state.record_reference(c, sha, ref_id, refused)
        return c.size, c.mtime_ns, sha, ref_id, refused

    def _result(self, batch: dict[str, Any], candidates: list[Candidate], uploaded: int, nbytes: int,
                registered: int | None, references: dict[str, str], already: bool, started: float) -> SubmitResult:
        return SubmitResult(
            batch_id=batch["id"], batch_name=batch["name"], files=len(candidates), uploaded=uploaded,
            bytes_uploaded=nbytes, skipped=self.skipped, registered=registered, rejected=self.rejected,
            references=references, already_submitted=already, seconds=time.monotonic() - started,
        )
