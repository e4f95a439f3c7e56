"""Poison inputs: a corpus of bad and awkward files run through a real worker as one batch.

Each kind is a file a photo bureau really receives (or an attacker sends): empty and truncated
images, documents with an image's name, headers that declare 100000 x 100000 pixels, unusual pixel
layouts (CMYK, 16-bit, palette, bilevel, alpha, animation), metadata built to hurt (an EXIF block
whose directory points at itself, an invalid orientation, ICC profiles that are garbage), formats we
do not decode, and archives with a zip bomb, ``../`` names, absolute names, symbolic links, a member
whose header lies about its size, and bytes that are no archive at all.

For every kind the test states the one acceptable outcome: ``succeeded`` with the right size, or
``failed`` with a specific error code. Figures asserted: every job reaches that outcome, the worker's
main process and its one pool process are the same at the end as at the start (nothing crashed),
the batch finishes, and no failed job left a result object or metric rows behind.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin
from rel_support import (
    batch_figures,
    child_pids,
    make_cluster,
    photo_bytes,
    record_figures,
    tiny_checkpoint,
    wait_for,
)

from db import repository as repo
from db.session import session_scope
from storage import report_key, upload_key

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

TIMEOUT_S = 240.0
SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class Poison:
    name: str
    data: bytes
    expect: str  # "succeeded" or the error code the job must fail with
    size: tuple[int, int] | None = None  # (width, height) of a correct result


# --------------------------------------------------------------------------- builders


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(width: int, height: int, depth: int, colour: int, rows: bytes, extra: list[bytes] | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(extra or [])
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _grey(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(photo_bytes(width, height, seed=seed, fmt="PNG"))).convert("L")


def huge_png_header() -> bytes:
    """IHDR says 100000 x 100000 (10 gigapixels); the data behind it is a few bytes."""
    return _png(100_000, 100_000, 8, 0, b"\x00" * 64)


def huge_jpeg_header() -> bytes:
    """A real JPEG whose SOF0 frame header is patched to 65500 x 65500."""
    data = bytearray(photo_bytes(32, 32, seed=3))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def huge_bmp_header() -> bytes:
    data = bytearray(_save(_grey(8, 8), "BMP"))
    data[18:26] = struct.pack("<ii", 100_000, 100_000)
    return bytes(data)


def zero_width_png() -> bytes:
    return _png(0, 16, 8, 0, b"")


def corrupt_idat_png() -> bytes:
    """End marker intact, compressed pixel data scrambled (CRCs recomputed, so only zlib notices)."""
    rows = b"".join(b"\x00" + bytes(range(i, i + 48)) for i in range(48))
    body = bytearray(zlib.compress(rows))
    for i in range(2, len(body) - 4):
        body[i] ^= 0xA5
    ihdr = struct.pack(">IIBBBBB", 48, 48, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bytes(body)) + _png_chunk(b"IEND", b"")
    )


def rgb16_png(width: int = 40, height: int = 30) -> bytes:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 65536, size=(height, width, 3), dtype=np.uint16).astype(">u2")
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    return _png(width, height, 16, 2, rows)


def grey16_png(width: int = 40, height: int = 30) -> bytes:
    ramp = (np.linspace(0, 65535, width * height).reshape(height, width)).astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")


def exif_loop_jpeg() -> bytes:
    """EXIF whose IFD0 claims 65535 entries and whose next-IFD pointer points back at itself."""
    tiff = bytearray(b"II*\x00" + struct.pack("<I", 8))
    tiff += struct.pack("<H", 65535)
    for tag in range(20):  # a few real entries, then the data simply stops
        tiff += struct.pack("<HHII", 0x010F + tag, 2, 0x7FFFFFFF, 8)
    tiff += struct.pack("<I", 8)  # next IFD = this IFD again
    segment = b"Exif\x00\x00" + bytes(tiff)
    jpeg = photo_bytes(48, 40, seed=5)
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    return jpeg[:2] + app1 + jpeg[2:]


def bad_orientation_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 9  # orientations run from 1 to 8
    return _save(_grey(48, 40, seed=6).convert("RGB"), "JPEG", exif=exif.tobytes())


def garbage_icc_jpeg() -> bytes:
    return _save(_grey(48, 40, seed=7).convert("RGB"), "JPEG", icc_profile=b"not an ICC profile " * 40)


def truncated_icc_png() -> bytes:
    """An iCCP chunk whose compressed profile is cut off: zlib cannot inflate it."""
    profile = zlib.compress(b"\x00" * 2000)[:20]
    rows = b"".join(b"\x00" + bytes([(x * 5) % 256 for x in range(40)]) for _ in range(30))
    return _png(40, 30, 8, 0, rows, extra=[_png_chunk(b"iCCP", b"broken\x00\x00" + profile)])


def animated_gif() -> bytes:
    frames = [_grey(40, 30, seed=s).convert("P") for s in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    pages = [_grey(40, 30, seed=s) for s in range(2)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def garbage_tiff() -> bytes:
    """A TIFF header and directory describing LZW data that is noise."""
    data = bytearray(_save(_grey(40, 30), "TIFF", compression="tiff_lzw"))
    offset = TiffImagePlugin.TiffImageFile(io.BytesIO(bytes(data))).tag_v2[273][0]
    for i in range(offset + 4, min(len(data), offset + 400)):
        data[i] ^= 0x5C
    return bytes(data)


def cut(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


def single_file_corpus() -> list[Poison]:
    photo_jpg = photo_bytes(48, 40, seed=1)
    photo_png = photo_bytes(48, 40, seed=2, fmt="PNG")
    rgb = _grey(48, 40, seed=8).convert("RGB")
    corpus = [
        # Nothing, or not all of it.
        Poison("empty.jpg", b"", "empty_file"),
        Poison("truncated.jpg", cut(photo_jpg), "truncated_image"),
        Poison("truncated.png", cut(photo_png, 0.6), "truncated_image"),
        Poison("truncated.gif", cut(animated_gif(), 0.4), "truncated_image"),
        Poison("header-only.png", photo_png[:33], "truncated_image"),
        # Not images at all, with an image's name.
        Poison("letter.jpg", b"Dear bureau,\nplease find the scans attached.\n" * 20, "not_an_image"),
        Poison("page.png", b"<!DOCTYPE html><html><body><img src=x></body></html>", "not_an_image"),
        Poison("scan.jpg", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "not_an_image"),
        Poison("album.jpg", _zip([("a.jpg", photo_jpg)]), "not_an_image"),
        # Formats that are images, but not ones we decode.
        Poison("layers.jpg", b"8BPS\x00\x01" + b"\x00" * 200, "unsupported_format"),
        Poison("drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "unsupported_format"),
        Poison("phone.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00" + b"\x00" * 200, "unsupported_format"),
        # Decompression bombs: refused from the header, before a pixel is decoded.
        Poison("huge.png", huge_png_header(), "too_many_pixels"),
        Poison("huge.jpg", huge_jpeg_header(), "too_many_pixels"),
        Poison("huge.bmp", huge_bmp_header(), "too_many_pixels"),
        # Damaged.
        Poison("zero-width.png", zero_width_png(), "corrupt_image"),
        Poison("scrambled.png", corrupt_idat_png(), "corrupt_image"),
        Poison("scrambled.tif", garbage_tiff(), "corrupt_image"),
        # Awkward but valid: each must come back restored at its own size.
        Poison("cmyk.jpg", _save(rgb.convert("CMYK"), "JPEG"), SUCCEEDED, (48, 40)),
        Poison("grey16.png", grey16_png(), SUCCEEDED, (40, 30)),
        Poison("rgb16.png", rgb16_png(), SUCCEEDED, (40, 30)),
        Poison("palette.png", _save(rgb.convert("P"), "PNG"), SUCCEEDED, (48, 40)),
        Poison(
            "palette-alpha.png", _save(rgb.convert("P"), "PNG", transparency=0), SUCCEEDED, (48, 40)
        ),
        Poison("bilevel.png", _save(rgb.convert("1"), "PNG"), SUCCEEDED, (48, 40)),
        Poison("grey-alpha.png", _save(rgb.convert("LA"), "PNG"), SUCCEEDED, (48, 40)),
        Poison("animated.gif", animated_gif(), SUCCEEDED, (40, 30)),
        Poison("pages.tif", multipage_tiff(), SUCCEEDED, (40, 30)),
        Poison("smallest.png", _save(_grey(8, 8), "PNG"), SUCCEEDED, (8, 8)),
        Poison("long-strip.png", _save(_grey(600, 8), "PNG"), SUCCEEDED, (600, 8)),
        # Too small to restore (under 8 px on a side): refused with a clear code, not a model crash.
        Poison("one-pixel.png", _save(Image.new("L", (1, 1), 120), "PNG"), "image_too_small"),
        Poison("sliver.png", _save(_grey(600, 2), "PNG"), "image_too_small"),
        # Metadata built to hurt: the photo is fine, the metadata is ignored or repaired.
        Poison("exif-loop.jpg", exif_loop_jpeg(), SUCCEEDED, (48, 40)),
        Poison("bad-orientation.jpg", bad_orientation_jpeg(), SUCCEEDED, (48, 40)),
        Poison("garbage-icc.jpg", garbage_icc_jpeg(), SUCCEEDED, (48, 40)),
        Poison("broken-icc.png", truncated_icc_png(), SUCCEEDED, (40, 30)),
    ]
    return corpus


# --------------------------------------------------------------------------- archives


def _zip(members: list[tuple[str, bytes]], symlinks: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = ((0o120777 if name in symlinks else 0o100644) << 16)
            archive.writestr(info, data)
    return out.getvalue()


def zip_bomb() -> bytes:
    """64 MiB of zeros in one member: about 64 KiB compressed, a ratio near 1000."""
    return _zip([("zeros.jpg", b"\x00" * (64 * 1024 * 1024))])


def lying_zip() -> bytes:
    """A member whose headers declare 16 bytes while its data inflates to 64 KiB."""
    data = bytearray(_zip([("liar.jpg", photo_bytes(256, 256, seed=9))]))
    real = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0].file_size
    fake, actual = struct.pack("<I", 16), struct.pack("<I", real)
    for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(header)
        assert data[at + offset : at + offset + 4] == actual
        data[at + offset : at + offset + 4] = fake
    return bytes(data)


@dataclass(frozen=True)
class PoisonArchive:
    name: str
    data: bytes
    expect: dict[str, str]  # member name (or the archive's name) -> outcome


def archive_corpus() -> list[PoisonArchive]:
    good = photo_bytes(40, 32, seed=10)
    return [
        PoisonArchive("bomb.zip", zip_bomb(), {"bomb.zip": "zip_bomb"}),
        PoisonArchive(
            "escape.zip",
            _zip([("../../etc/cron.d/evil.jpg", good), ("/abs/evil.jpg", good), ("album/ok.jpg", good)]),
            {"../../etc/cron.d/evil.jpg": "skipped_member", "/abs/evil.jpg": "skipped_member", "album/ok.jpg": SUCCEEDED},
        ),
        PoisonArchive(
            "links.zip",
            _zip([("album/link.jpg", b"/etc/passwd"), ("album/real.jpg", good)], symlinks=("album/link.jpg",)),
            {"album/link.jpg": "skipped_member", "album/real.jpg": SUCCEEDED},
        ),
        PoisonArchive("liar.zip", lying_zip(), {"liar.jpg": "skipped_member"}),
        PoisonArchive("notes.zip", b"PK\x03\x04 these bytes are no archive " * 10, {"notes.zip": "bad_archive"}),
    ]


# --------------------------------------------------------------------------- the test


@pytest.fixture
def cluster(tmp_path, tmp_path_factory, fresh_redis_server, postgres_url, moto_server):
    with make_cluster(
        root=tmp_path,
        redis=fresh_redis_server,
        database_url=postgres_url,
        moto_server=moto_server,
        checkpoint=tiny_checkpoint(tmp_path_factory),
        # A 100-megapixel limit: the headers above declare far more, real scans here are tiny.
        base_env={"PIKFIX_MAX_IMAGE_PIXELS": str(100_000_000)},
    ) as c:
        yield c


def test_poison_corpus_ends_in_clear_errors_or_correct_results(cluster) -> None:
    corpus = single_file_corpus()
    archives = archive_corpus()
    assert len(corpus) + len(archives) >= 25
    worker = cluster.start_worker(concurrency=1)
    main_pid, pool = worker.pid, child_pids(worker.pid)

    tenant = cluster.new_tenant()
    batch_id, ids = cluster.add_jobs(tenant, [(p.name, p.data) for p in corpus])
    expected = {job_id: p for job_id, p in zip(ids, corpus, strict=True)}
    archive_batches = {}
    for archive in archives:
        with session_scope(cluster.database_url) as s:
            archive_batch = repo.create_batch(s, tenant, archive.name, {"reference_mode": "none"}).id
        key = upload_key(tenant, archive_batch, archive.name)
        cluster.store.put_bytes(key, archive.data, content_type="application/zip")
        archive_batches[archive_batch] = archive
        with session_scope(cluster.database_url) as s:
            archive_id = repo.add_archive(s, tenant, archive_batch, archive.name, key, len(archive.data)).id
        cluster.send("pikfix.ingest_archive", archive_id)
    cluster.dispatch()

    total = len(corpus) + sum(len(a.expect) for a in archives)
    cluster.wait_finished(tenant, total, TIMEOUT_S)
    jobs = {j.id: j for j in cluster.jobs(tenant)}
    assert len(jobs) == total, "every archive member became exactly one job"

    outcomes: dict[str, str] = {}
    mismatches = []
    for job in jobs.values():
        if job.id in expected:
            poison = expected[job.id]
            label, want, size = poison.name, poison.expect, poison.size
        else:
            archive = archive_batches[job.batch_id]
            label, want, size = f"{archive.name}:{job.input_name}", archive.expect[job.input_name], None
        got = SUCCEEDED if job.status == SUCCEEDED else (job.error_code or job.status)
        outcomes[label] = got
        if got != want or (size is not None and (job.width, job.height) != size):
            mismatches.append((label, want, got, job.error_message, (job.width, job.height)))
        if job.status == "failed":
            assert job.error_message, f"{label}: a failure must say why"

    cluster.send("pikfix.maintenance.finish_batches")
    wait_for(lambda: cluster.store.exists(report_key(tenant, batch_id)), 60, "the batch report")
    figures = batch_figures(cluster, tenant)
    record_figures(
        "poison_inputs",
        kinds=len(corpus) + len(archives),
        jobs=total,
        succeeded=figures.succeeded,
        failed=figures.failed,
        error_codes=figures.error_codes,
        mismatches=mismatches,
        worker_restarts=int(child_pids(worker.pid) != pool),
    )
    assert not mismatches, "\n".join(map(str, mismatches))
    # Bad input is a verdict on the job, never a crash: the same processes served the whole corpus.
    assert worker.alive() and worker.pid == main_pid and child_pids(worker.pid) == pool
    assert "WorkerLostError" not in worker.log_text()
    assert figures.corrupt() == 0 and figures.unfinished == 0
    with session_scope(cluster.database_url, readonly=True) as s:
        assert repo.get_batch(s, tenant, batch_id).status == "finished"
