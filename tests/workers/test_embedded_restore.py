"""``pikfix restore`` in embedded mode: the same tasks, database and storage code as the service, run
in-process on the shipped samples with a tiny checkpoint; checked through its files and its SQLite rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ALWAYS_RECORDED_METRICS,
    NOT_AN_IMAGE,
    REPO_ROOT,
    SAMPLES,
    TINY_MODEL_NAME,
    WORKING_SIZE,
    TinyCheckpoint,
    photo_bytes,
    tiny_checkpoint,
)
from PIL import Image

from db import repository as repo
from db.session import dispose_engine, session_scope
from pikfix.retrieval import ScoringConfig
from service.cli import main
from workers.runtime import set_runtime

PHOTOS = sorted(SAMPLES.glob("*.jpg"))
REFERENCES = sorted((SAMPLES / "references").glob("*.jpg"))


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
    set_runtime(None)  # the command installs its own process runtime


class Run:
    """One ``pikfix restore`` invocation and where it wrote things."""

    def __init__(self, tmp_path: Path, checkpoint: TinyCheckpoint) -> None:
        self.out = tmp_path / "out"
        self.data_dir = tmp_path / "data"
        self.checkpoint = checkpoint
        self.code: int | None = None

    @property
    def db_url(self) -> str:
        return f"sqlite:///{(self.data_dir / 'pikfix.db').resolve()}"

    def __call__(self, *args: str) -> int:
        argv = ["restore", *args, "--checkpoint", str(self.checkpoint.path)]
        argv += ["--data-dir", str(self.data_dir), "--out", str(self.out)]
        self.code = main(argv)
        dispose_engine(self.db_url)
        return self.code

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())

    def rows(self) -> list[dict]:
        """Every job of the run's single batch with its references, metrics and events, as plain values."""
        with session_scope(self.db_url, readonly=True) as s:
            tenant = repo.get_tenant_by_name_or_id(s, "local")
            (batch,) = repo.list_batches(s, tenant.id)
            jobs = []
            for job in repo.iter_batch_jobs(s, batch.id):
                jobs.append(
                    {
                        "job": job,
                        "batch": batch,
                        "references": repo.job_reference_rows(s, job.id),
                        "metrics": repo.job_metrics(s, job.id),
                        "events": [
                            (e.from_status, e.to_status, e.detail) for e in repo.job_events(s, job.id)
                        ],
                    }
                )
            s.expunge_all()
        dispose_engine(self.db_url)
        return jobs


@pytest.fixture
def run(tmp_path: Path, checkpoint: TinyCheckpoint) -> Run:
    return Run(tmp_path, checkpoint)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_restore_samples_with_reference_folder(run: Run, checkpoint: TinyCheckpoint) -> None:
    assert len(PHOTOS) == 4 and len(REFERENCES) == 5
    assert run(str(SAMPLES), "--references", str(SAMPLES / "references")) == 0

    # Restored photos at the input's size, one per input, named after it.
    for photo in PHOTOS:
        restored = run.out / f"{photo.stem}.restored.png"
        assert restored.is_file(), restored
        with Image.open(restored) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == _size(photo)

    report = run.report()
    assert report["summary"]["total"] == 4
    assert report["summary"]["counts"]["succeeded"] == 4 and report["summary"]["counts"]["failed"] == 0
    assert report["model"] == {"name": TINY_MODEL_NAME, "checkpoint_sha256": checkpoint.sha256}
    assert {j["output_file"] for j in report["jobs"]} == {f"{p.stem}.restored.png" for p in PHOTOS}
    html = (run.out / "report.html").read_text()
    assert all(p.name in html for p in PHOTOS)

    with session_scope(run.db_url, readonly=True) as s:
        tenant = repo.get_tenant_by_name_or_id(s, "local")
        refs = repo.list_references(s, tenant.id)
        assert sorted(r.name for r in refs) == [p.name for p in REFERENCES]
        assert all(r.status == "indexed" and r.descriptor for r in refs)
        ref_ids = {r.id for r in refs}
    dispose_engine(run.db_url)

    rows = run.rows()
    assert rows[0]["batch"].status == "finished" and rows[0]["batch"].total_jobs == 4
    sizes = {p.name: _size(p) for p in PHOTOS}
    weights = ScoringConfig()
    for row in rows:
        job, cands = row["job"], row["references"]
        assert job.status == "succeeded" and job.attempts == 1 and job.error_code is None
        assert (job.width, job.height) == sizes[job.input_name]
        assert job.model_name == TINY_MODEL_NAME and job.checkpoint_sha256 == checkpoint.sha256
        assert job.device == "cpu" and job.output_key.endswith(f"/results/{job.id}/restored.png")
        # Retrieval scored the whole corpus (top-k = 5), best first, and the best one was used.
        assert [c.rank for c in cands] == [1, 2, 3, 4, 5]
        assert {c.reference_id for c in cands} == ref_ids
        assert all(c.source == "retrieval" for c in cands)
        assert [c.used for c in cands] == [True, False, False, False, False]
        assert job.reference_id == cands[0].reference_id
        totals = [c.total for c in cands]
        assert totals == sorted(totals, reverse=True)
        for c in cands:
            assert c.total == pytest.approx(
                weights.texture_weight * c.texture + weights.structure_weight * c.structure
            )
        metrics = row["metrics"]
        assert set(metrics) >= ALWAYS_RECORDED_METRICS
        assert metrics["reference_score"] == pytest.approx(cands[0].total)
        assert all(np.isfinite(v) for v in metrics.values())
        assert [e[:2] for e in row["events"]] == [
            (None, "queued"),
            ("queued", "running"),
            ("running", "succeeded"),
        ]


def test_bad_files_fail_with_their_code_and_the_rest_succeed(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    good = PHOTOS[:2]
    for photo in good:
        shutil.copy(photo, photos / photo.name)
    (photos / "letter.jpg").write_bytes(NOT_AN_IMAGE)
    whole = PHOTOS[2].read_bytes()
    (photos / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    reference = REFERENCES[0]

    assert run(str(photos), "--reference", str(reference)) == 1  # some photos failed

    restored = sorted(p.name for p in run.out.glob("*.restored.*"))
    assert restored == sorted(f"{p.stem}.restored.png" for p in good)
    for photo in good:
        assert _size(run.out / f"{photo.stem}.restored.png") == _size(photo)
    err = capsys.readouterr().err
    assert "failed: letter.jpg: not_an_image" in err and "failed: broken.jpg: truncated_image" in err

    summary = run.report()["summary"]
    assert summary["counts"]["succeeded"] == 2 and summary["counts"]["failed"] == 2
    assert summary["error_codes"] == {"not_an_image": 1, "truncated_image": 1}

    by_name = {row["job"].input_name: row for row in run.rows()}
    assert set(by_name) == {p.name for p in good} | {"letter.jpg", "broken.jpg"}
    for name, code in (("letter.jpg", "not_an_image"), ("broken.jpg", "truncated_image")):
        job = by_name[name]["job"]
        assert job.status == "failed" and job.error_code == code and job.error_message
        assert job.output_key is None and job.attempts == 1
        assert by_name[name]["metrics"] == {} and by_name[name]["references"] == []
        assert by_name[name]["events"][-1] == ("running", "failed", code)
    for photo in good:
        row = by_name[photo.name]
        job, (cand,) = row["job"], row["references"]
        assert job.status == "succeeded"
        # One manual reference for the whole batch, recorded as used, with no retrieval score.
        assert cand.source == "manual" and cand.used and cand.rank == 1 and cand.total is None
        assert job.reference_id == cand.reference_id and job.reference_mode == "manual"
        assert "reference_score" not in row["metrics"] and set(row["metrics"]) >= ALWAYS_RECORDED_METRICS


def test_tiff16_output_is_16_bit(run: Run) -> None:
    import tifffile

    photo = PHOTOS[1]
    assert run(str(photo), "--reference", str(REFERENCES[1]), "--format", "tiff16") == 0
    output = run.out / f"{photo.stem}.restored.tif"
    pixels = tifffile.imread(output)
    width, height = _size(photo)
    assert pixels.dtype == np.uint16 and pixels.shape == (height, width, 3)
    # True 16-bit data, not 8-bit values stretched by 257.
    assert np.count_nonzero(pixels % 257) > pixels.size // 2
    (row,) = run.rows()
    assert row["job"].output_format == "tiff16" and row["job"].output_key.endswith("/restored.tif")


def test_missing_input_and_empty_folder_exit_2(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(tmp_path / "no-such-folder")) == 2
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no photos here")
    assert run(str(empty)) == 2
    assert "no photos found" in capsys.readouterr().err


def test_embedded_run_ignores_a_broker_in_the_environment(
    fresh_redis_server, tmp_path: Path, checkpoint: TinyCheckpoint
) -> None:
    """``pikfix restore`` overrides the broker to none; nothing may reach a broker the shell points at."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"p{i}.jpg").write_bytes(photo_bytes(64, 48, seed=i))
    env = {
        **os.environ,
        "PIKFIX_BROKER_URL": fresh_redis_server.url,
        "PIKFIX_WORKING_SIZE": str(WORKING_SIZE),
    }
    cmd = [
        sys.executable,
        "-c",
        "import sys; from service.cli import main; sys.exit(main())",
        "restore",
        str(photos),
    ]
    cmd += [
        "--checkpoint",
        str(checkpoint.path),
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*.restored.png"))) == 2
    with fresh_redis_server.client() as broker:
        assert broker.llen("restore") == 0 and broker.keys("*") == []


def test_no_colour_keeps_the_photo_grey_and_labels_it_restored(run: Run) -> None:
    """`pikfix restore --no-colour`: restoration only, even with a reference at hand; the output is exactly
    grey, the job records no reference, and the file says it was enhanced, not colourized."""
    import subprocess as sp

    photo = PHOTOS[0]
    assert run(str(photo), "--reference", str(REFERENCES[0]), "--no-colour", "--format", "png") == 0
    output = run.out / f"{photo.stem}.restored.png"
    with Image.open(output) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    (row,) = run.rows()
    assert row["job"].colourize is False and row["job"].status == "succeeded"
    assert not any(r.used for r in row["references"])
    tags = sp.run(["exiftool", "-j", "-XMP-iptcExt:DigitalSourceType", str(output)], capture_output=True,
                  text=True, check=True).stdout
    assert "algorithmicallyEnhanced" in tags and "compositeWithTrainedAlgorithmicMedia" not in tags
