"""Reading uploaded zip archives: unsafe members are skipped with a reason, hostile archives refused
with a stable code, and nothing is inflated beyond the limits (workers/archive.py)."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from helpers import ZipEntry, photo_bytes, zip_bytes

from workers.archive import ArchiveError, Member, Skipped, iter_images

LIMITS = {"max_members": 50, "max_total_bytes": 10_000_000, "max_ratio": 200.0, "max_member_bytes": 2_000_000}
PHOTO = photo_bytes(48, 32, seed=1)


def read(data: bytes, **overrides: float) -> list[Member | Skipped]:
    return list(iter_images(io.BytesIO(data), **{**LIMITS, **overrides}))


def by_name(items: list[Member | Skipped]) -> dict[str, Member | Skipped]:
    return {item.name: item for item in items}


def refused(data: bytes, **overrides: float) -> ArchiveError:
    with pytest.raises(ArchiveError) as info:
        read(data, **overrides)
    return info.value


def test_image_members_come_back_byte_for_byte_and_folders_are_ignored() -> None:
    png = photo_bytes(20, 30, seed=2, fmt="PNG")
    data = zip_bytes(
        [
            ZipEntry("album/", b""),
            ZipEntry("album/one.jpg", PHOTO),
            ZipEntry("album/deeper/two.PNG", png, compress=zipfile.ZIP_STORED),
        ]
    )
    items = read(data)
    assert [type(i) for i in items] == [Member, Member]
    got = by_name(items)
    assert got["album/one.jpg"].data == PHOTO
    assert got["album/deeper/two.PNG"].data == png


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.jpg", "path traversal"),
        ("album/../../evil.jpg", "path traversal"),
        ("..\\evil.jpg", "path traversal"),
        ("/etc/evil.jpg", "absolute path"),
        ("\\evil.jpg", "absolute path"),
        ("C:/Windows/evil.jpg", "absolute path"),
    ],
)
def test_unsafe_member_names_are_skipped_and_the_rest_is_read(name: str, reason: str) -> None:
    items = read(zip_bytes([ZipEntry(name, PHOTO), ZipEntry("good.jpg", PHOTO)]))
    got = by_name(items)
    assert isinstance(got[name], Skipped)
    assert got[name].reason.startswith("refused name") and reason in got[name].reason
    assert isinstance(got["good.jpg"], Member) and got["good.jpg"].data == PHOTO


def test_symlink_members_are_skipped_never_followed() -> None:
    items = read(zip_bytes([ZipEntry("link.jpg", b"/etc/passwd", symlink=True), ZipEntry("ok.jpg", PHOTO)]))
    got = by_name(items)
    assert isinstance(got["link.jpg"], Skipped) and got["link.jpg"].reason == "symbolic link"
    assert isinstance(got["ok.jpg"], Member)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("notes.txt", "not an image file name"),
        ("scan", "not an image file name"),
        ("document.pdf", "not an image file name"),
        (".DS_Store", "hidden or metadata file"),
        ("__MACOSX/album/._one.jpg", "hidden or metadata file"),
        ("album/.hidden.jpg", "hidden or metadata file"),
    ],
)
def test_non_image_names_are_skipped_with_a_reason(name: str, reason: str) -> None:
    items = read(zip_bytes([ZipEntry(name, b"not a photo"), ZipEntry("one.jpg", PHOTO)]))
    got = by_name(items)
    assert isinstance(got[name], Skipped) and got[name].reason == reason
    assert isinstance(got["one.jpg"], Member)


def test_zip_bomb_by_compression_ratio_is_refused_before_inflating() -> None:
    bomb = zip_bytes([ZipEntry("bomb.jpg", b"\0" * 4_000_000), ZipEntry("one.jpg", PHOTO)])
    assert len(bomb) < 20_000  # the point of a bomb: tiny on the wire
    error = refused(bomb)
    assert error.code == "zip_bomb" and "compression ratio" in error.message
    # The same archive under a looser ratio limit is fine: the check is the ratio, not the content.
    assert {i.name for i in read(bomb, max_ratio=10_000.0)} == {"bomb.jpg", "one.jpg"}


def test_forged_declared_size_never_inflates_past_it() -> None:
    """A header that lies about the size passes the ratio check; streaming still stops at the lie."""
    payload = b"\0" * 300_000
    raw = bytearray(zip_bytes([ZipEntry("liar.jpg", payload), ZipEntry("one.jpg", PHOTO)]))
    central, local = raw.find(b"PK\x01\x02"), raw.find(b"PK\x03\x04")
    for offset in (central + 24, local + 22):  # uncompressed size in both headers
        struct.pack_into("<I", raw, offset, 100)
    got = by_name(read(bytes(raw)))
    liar = got["liar.jpg"]
    assert isinstance(liar, Skipped) and liar.reason.startswith("unreadable member")
    assert isinstance(got["one.jpg"], Member) and got["one.jpg"].data == PHOTO


def test_too_many_members_is_refused() -> None:
    data = zip_bytes([ZipEntry(f"p{i:02d}.jpg", PHOTO) for i in range(6)])
    error = refused(data, max_members=5)
    assert error.code == "archive_too_many_members" and "6 members" in error.message
    assert len(read(data, max_members=6)) == 6


def test_total_uncompressed_size_limit_is_refused() -> None:
    data = zip_bytes([ZipEntry(f"p{i}.jpg", PHOTO) for i in range(3)])
    error = refused(data, max_total_bytes=3 * len(PHOTO) - 1)
    assert error.code == "archive_too_large"
    assert len(read(data, max_total_bytes=3 * len(PHOTO))) == 3


def test_member_above_the_upload_limit_is_skipped() -> None:
    big = photo_bytes(300, 200, seed=3)
    got = by_name(
        read(zip_bytes([ZipEntry("big.jpg", big), ZipEntry("small.jpg", PHOTO)]), max_member_bytes=len(PHOTO))
    )
    assert isinstance(got["big.jpg"], Skipped) and got["big.jpg"].reason.startswith("member larger than")
    assert isinstance(got["small.jpg"], Member)


def test_member_with_a_bad_crc_is_skipped_and_the_rest_is_read() -> None:
    raw = bytearray(
        zip_bytes([ZipEntry("broken.jpg", PHOTO, compress=zipfile.ZIP_STORED), ZipEntry("ok.jpg", PHOTO)])
    )
    start = raw.find(b"PK\x03\x04") + 30 + len("broken.jpg")  # stored data follows the local header
    raw[start + 100] ^= 0xFF
    got = by_name(read(bytes(raw)))
    assert isinstance(got["broken.jpg"], Skipped) and "CRC" in got["broken.jpg"].reason
    assert isinstance(got["ok.jpg"], Member) and got["ok.jpg"].data == PHOTO


def test_member_with_a_damaged_deflate_stream_is_skipped() -> None:
    raw = bytearray(zip_bytes([ZipEntry("broken.jpg", PHOTO * 4), ZipEntry("ok.jpg", PHOTO)]))
    start = raw.find(b"PK\x03\x04") + 30 + len("broken.jpg")
    for i in range(8):  # garble the start of the deflate stream: invalid block header / code lengths
        raw[start + i] ^= 0xFF
    got = by_name(read(bytes(raw)))
    assert isinstance(got["broken.jpg"], Skipped) and got["broken.jpg"].reason.startswith("unreadable member")
    assert isinstance(got["ok.jpg"], Member)


@pytest.mark.parametrize(
    "data",
    [b"", b"this is a text file, not an archive\n" * 10, PHOTO, zip_bytes([ZipEntry("a.jpg", PHOTO)])[:-30]],
    ids=["empty", "text", "a-jpeg", "truncated-zip"],
)
def test_not_a_zip_is_refused_with_bad_archive(data: bytes) -> None:
    error = refused(data)
    assert error.code == "bad_archive" and error.message.startswith("not a readable zip archive")
