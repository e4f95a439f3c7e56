"""``Client``: the library face of the bureau client; the ``pikfix-client`` command calls these methods."""

from __future__ import annotations

import os
from pathlib import Path

from pikfix_client.errors import ClientError
from pikfix_client.fetch import Fetch
from pikfix_client.http import Http, RetryPolicy
from pikfix_client.results import BatchStatus, FetchResult, SubmitResult
from pikfix_client.status import batch_status
from pikfix_client.submit import Submission, SubmitOptions
from pikfix_client.upload import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE

OUTPUT_FORMATS = ("png", "jpeg", "tiff16")
REFERENCE_MODES = ("auto", "manual", "none")


class Client:
    """A pikfix API at ``url`` used with one tenant's API ``key``.

    >>> with Client("https://pikfix.example.org", key) as c:
    ...     result = c.submit("scans/1931")
    ...     c.fetch(result.batch_id, "bags/1931")
    """

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, connections: int = 32) -> None:
        key = key or os.environ.get("PIKFIX_API_KEY", "")
        try:
            self.http = Http(url, key, timeout=timeout, policy=retry, connections=connections)
        except ValueError as exc:
            raise ClientError(str(exc)) from exc

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, folder: str | os.PathLike[str], *, references: str | os.PathLike[str] | None = None,
               batch_name: str | None = None, output_format: str = "png", reference_mode: str = "auto",
               reference_id: str | None = None, working_size: int | None = None, concurrency: int = 8,
               state: str | os.PathLike[str] | None = None, multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
               part_size: int = DEFAULT_PART_SIZE, progress: bool = False) -> SubmitResult:
        """Upload every photo (and ``.zip``) under ``folder`` into one batch and submit it.

        Safe to call again after any interruption with the same arguments: the state file (default
        ``folder/.pikfix-submit.sqlite``) makes it upload only what is missing, into the same batch.
        """
        root = _folder(folder, "the folder to submit")
        refs = _folder(references, "the references folder") if references is not None else None
        if output_format not in OUTPUT_FORMATS:
            raise ClientError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
        if reference_mode not in REFERENCE_MODES:
            raise ClientError(f"reference mode must be one of {', '.join(REFERENCE_MODES)}, not {reference_mode!r}")
        if not 1 <= concurrency <= 64:
            raise ClientError(f"concurrency must be between 1 and 64, not {concurrency}")
        if part_size < 5 * 1024 * 1024 or multipart_threshold < part_size:
            raise ClientError("the part size must be at least 5 MiB and at most the multipart threshold")
        opts = SubmitOptions(
            batch_name=batch_name, output_format=output_format, reference_mode=reference_mode,
            reference_id=reference_id, working_size=working_size, concurrency=concurrency,
            multipart_threshold=multipart_threshold, part_size=part_size,
            state=Path(state).resolve() if state is not None else None, references=refs, progress=progress,
        )
        return Submission(self.http, root, opts).run()

    def status(self, batch_id: str, *, failures: bool = True) -> BatchStatus:
        """Counts per status, progress, rate, ETA and (with ``failures``) every failed job's reason."""
        return batch_status(self.http, batch_id, failures)

    def fetch(self, batch_id: str, out: str | os.PathLike[str], *, concurrency: int = 8, wait: bool = False,
              poll_s: float = 10.0, progress: bool = False) -> FetchResult:
        """Download the batch's results into ``out/data`` (mirroring the submitted folder), verify them and,
        once the batch has finished, make ``out`` a BagIt bag. Resumes where an earlier call stopped."""
        return Fetch(self.http, batch_id, Path(out), concurrency=concurrency, wait=wait, poll_s=poll_s,
                     progress=progress).run()


def _folder(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ClientError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise ClientError(f"{what} {p} is not a folder")
    return p.resolve()
