"""``pikfix restore`` given a grey photo as its reference: the embedded path indexes references with the
same task as the service, so it must skip a grey one in ``--references`` and refuse it as ``--reference``
with ``bad_reference``, never fail a photo with ``internal_error``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import WORKING_SIZE, TinyCheckpoint, photo_bytes, tiny_checkpoint

from db import repository as repo
from db.session import dispose_engine, session_scope
from service.cli import main
from workers.runtime import set_runtime


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(autouse=True)
def _embedded_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing from the developer's shell may point the run at real servers; small working size."""
    for name in ("PIKFIX_BROKER_URL", "PIKFIX_DATABASE_URL", "PIKFIX_STORAGE_URL", "PIKFIX_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIKFIX_WORKING_SIZE", str(WORKING_SIZE))
    monkeypatch.setenv("PIKFIX_DEVICE", "cpu")
    yield
    set_runtime(None)


def _restore(tmp_path: Path, checkpoint: TinyCheckpoint, *args: str) -> tuple[int, list, list]:
    """Run the command on two grey photos; returns its exit code, the jobs and the references."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"scan{i}.jpg").write_bytes(photo_bytes(80, 64, seed=i))
    data_dir = tmp_path / "data"
    code = main(["restore", str(photos), *args, "--checkpoint", str(checkpoint.path),
                 "--data-dir", str(data_dir), "--out", str(tmp_path / "out")])
    url = f"sqlite:///{(data_dir / 'pikfix.db').resolve()}"
    with session_scope(url, readonly=True) as s:
        tenant = repo.get_tenant_by_name_or_id(s, "local")
        (batch,) = repo.list_batches(s, tenant.id)
        jobs = [(job, repo.job_reference_rows(s, job.id)) for job in repo.iter_batch_jobs(s, batch.id)]
        refs = repo.list_references(s, tenant.id)
        s.expunge_all()
    dispose_engine(url)
    return code, jobs, refs


def test_a_grey_photo_in_the_reference_folder_is_skipped(tmp_path: Path, checkpoint: TinyCheckpoint) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "grey.png").write_bytes(photo_bytes(80, 64, seed=9, fmt="PNG"))
    code, jobs, references = _restore(tmp_path, checkpoint, "--references", str(refs))
    assert code == 0
    assert len(jobs) == 2
    for job, cands in jobs:
        assert (job.status, job.error_code) == ("succeeded", None), job.error_message
        assert [(c.source, c.reference_id) for c in cands] == [("fallback", None)]
    (grey,) = references
    assert grey.status == "failed" and grey.error.startswith("reference_not_colour: ")


def test_a_grey_photo_as_the_reference_fails_with_bad_reference(tmp_path: Path, checkpoint: TinyCheckpoint) -> None:
    grey = tmp_path / "grey.jpg"
    grey.write_bytes(photo_bytes(80, 64, seed=9))
    code, jobs, _ = _restore(tmp_path, checkpoint, "--reference", str(grey))
    assert code == 1
    assert len(jobs) == 2
    for job, _ in jobs:
        assert (job.status, job.error_code) == ("failed", "bad_reference")
        assert "not a colour photo" in job.error_message
