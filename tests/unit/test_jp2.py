"""Lossless JPEG 2000 output: reversible wavelet, bit-identical round trips, metadata boxes."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from pikfix.imageio import (
    OUTPUT_FORMATS,
    content_type_for,
    decode_image,
    encode_image,
    extension_for,
    normalize_output_format,
    read_provenance,
    sniff_image_format,
)

RNG = np.random.default_rng(2000)
PROVENANCE = {"model": "pikfix-tiny", "checkpoint_sha256": "ab" * 32, "colourized": False}


def boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """Top-level JP2 boxes (type, payload), parsed independently of the code under test."""
    out, pos = [], 0
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, data[pos + 8 : pos + length]))
        pos += length
    return out


def coding_style(data: bytes) -> dict[str, int]:
    """Layers and wavelet of the codestream's COD marker segment (ISO/IEC 15444-1, A.6.1)."""
    codestream = dict(boxes(data))[b"jp2c"]
    cod = codestream.index(b"\xff\x52")
    layers = struct.unpack_from(">H", codestream, cod + 6)[0]
    return {"layers": layers, "transform": codestream[cod + 13]}  # transform 1: reversible 5/3


def test_jp2_is_an_output_format() -> None:
    assert "jp2" in OUTPUT_FORMATS
    assert normalize_output_format("JPEG2000") == "jp2" and normalize_output_format(".jp2") == "jp2"
    assert extension_for("jp2") == ".jp2" and content_type_for("jp2") == "image/jp2"


def test_8bit_rgb_round_trip_is_bit_identical() -> None:
    pixels = RNG.integers(0, 256, (61, 83, 3), dtype=np.uint8)  # noise: any lossy step would show
    data = encode_image(pixels.astype(np.float32) / 255.0, "jp2")
    assert sniff_image_format(data) == "jpeg2000"
    assert coding_style(data) == {"layers": 1, "transform": 1}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    decoded = decode_image(data)
    assert decoded.bit_depth == 8 and not decoded.was_grey
    assert np.array_equal(np.rint(decoded.rgb * 255).astype(np.uint8), pixels)


def test_16bit_grey_round_trip_is_bit_identical() -> None:
    levels = RNG.integers(0, 65536, (57, 44), dtype=np.uint16)
    grey = levels.astype(np.float32) / 65535.0
    data = encode_image(np.repeat(grey[..., None], 3, axis=2), "jp2")  # equal channels: one 16-bit component
    assert coding_style(data) == {"layers": 1, "transform": 1}
    image = Image.open(io.BytesIO(data))
    assert image.mode == "I;16"
    assert np.array_equal(np.asarray(image), levels)
    decoded = decode_image(data)
    assert decoded.bit_depth == 16 and decoded.was_grey
    assert np.array_equal(np.rint(decoded.rgb[..., 0].astype(np.float64) * 65535).astype(np.uint16), levels)


def test_metadata_is_carried_and_read_back(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[271] = "Agfa"
    rgb = RNG.random((40, 50, 3), dtype=np.float32)
    data = encode_image(rgb, "jp2", exif=exif.tobytes(), dpi=(600, 600), provenance=PROVENANCE)
    kinds = [kind for kind, _ in boxes(data)]
    assert kinds[:3] == [b"jP  ", b"ftyp", b"jp2h"] and kinds[-1] == b"jp2c" and kinds.count(b"uuid") == 2
    header = [kind for kind, _ in boxes(dict(boxes(data))[b"jp2h"])]
    assert header == [b"ihdr", b"colr", b"colr", b"res "]  # enumerated sRGB first, then the ICC profile
    decoded = decode_image(data)
    assert decoded.dpi == (600.0, 600.0)
    assert read_provenance(decoded.xmp)["model"] == "pikfix-tiny"
    assert decoded.exif is not None
    reread = Image.Exif()
    reread.load(decoded.exif)
    assert reread[271] == "Agfa"
    path = tmp_path / "out.jp2"
    path.write_bytes(data)
    assert shutil.which("exiftool"), "exiftool (Debian libimage-exiftool-perl) is required by these tests"
    out = subprocess.run(
        ["exiftool", "-j", "-ICC_Profile:ProfileDescription", "-Make", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    fields = json.loads(out.stdout)[0]
    assert fields["ProfileDescription"] == "sRGB built-in" and fields["Make"] == "Agfa"


def test_jp2_upload_is_decoded_with_its_metadata() -> None:
    """JPEG 2000 masters are accepted as input; the ICC profile of the first colour box is used."""
    grey = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    first = encode_image(grey, "jp2", provenance=PROVENANCE, dpi=(300, 300))
    decoded = decode_image(first)
    assert decoded.format == "jpeg2000" and decoded.icc is None and decoded.dpi == (300.0, 300.0)
    again = encode_image(decoded.rgb, "jp2", xmp=decoded.xmp, provenance=PROVENANCE | {"model": "second"})
    assert read_provenance(decode_image(again).xmp)["model"] == "second"
