"""Restore-only jobs: no colourization, an exactly grey result (a* = b* = 0), 16-bit kept where it was."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from pikfix.imageio import decode_image, encode_image, read_provenance
from pikfix.inference import Restorer, working_shape
from pikfix.labels import ALGORITHMICALLY_ENHANCED
from pikfix.null_model import NullRestorer

WORKING = 64


def colour_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([120 + 80 * np.sin(xx / 6.0), 100 + 60 * np.cos(yy / 5.0), 90 + 0 * xx], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def grey16_png(height: int, width: int) -> bytes:
    """A 16-bit grey scan with more distinct levels than 8 bits hold."""
    ramp = np.linspace(0, 65535, height * width).reshape(height, width).astype(np.uint16)
    buf = io.BytesIO()
    Image.frombytes("I;16", (width, height), ramp.tobytes()).save(buf, "PNG")
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def assert_exactly_grey(pixels: np.ndarray) -> None:
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])


def lab_chroma(rgb8: np.ndarray) -> np.ndarray:
    """a* and b* of 8-bit sRGB pixels from LittleCMS (signed bytes in Pillow's LAB mode)."""
    transform = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    lab = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb8, "RGB"), transform))
    return lab[..., 1:].view(np.int8)


@pytest.fixture(scope="module")
def restorer(tiny_checkpoint: Path) -> Restorer:
    return Restorer.from_checkpoint(tiny_checkpoint, device="cpu", working_size=WORKING)


def _refuse_colorize(*args, **kwargs):
    raise AssertionError("restore-only ran the colourization net")


def test_restore_only_is_exactly_grey_and_ignores_the_reference(restorer: Restorer, monkeypatch) -> None:
    monkeypatch.setattr(restorer.model, "colorize", _refuse_colorize)
    photo = colour_photo(45, 70)
    result = restorer.restore(png(photo), reference=png(colour_photo(64, 64, seed=3)), reference_id="r1",
                              colourize=False)
    assert result.rgb.shape == (45, 70, 3) and result.rgb.dtype == np.float32
    assert_exactly_grey(result.rgb)
    assert not result.reference_used and result.reference_confidence is None
    assert result.ab_working.shape == (*working_shape(45, 70, WORKING), 2) and not result.ab_working.any()
    assert result.provenance["colourized"] is False and result.provenance["reference_id"] is None
    assert result.provenance["parameters"]["colourize"] is False
    # Restoration still ran: the output's luminance is the restored one, not the input's.
    np.testing.assert_allclose(NullRestorer().restore(result.rgb).restored_luminance, result.restored_luminance,
                               atol=1e-4)


def test_colourized_run_says_so(restorer: Restorer) -> None:
    result = restorer.restore(png(colour_photo(30, 40)), png(colour_photo(64, 64, seed=3)), reference_id="r1")
    assert result.provenance["colourized"] is True and result.provenance["parameters"]["colourize"] is True


def test_restore_only_keeps_16_bit_precision(restorer: Restorer) -> None:
    source = grey16_png(64, 80)
    assert decode_image(source).bit_depth == 16
    result = restorer.restore(source, colourize=False)
    assert_exactly_grey(result.rgb)
    out = tifffile.imread(io.BytesIO(encode_image(result.rgb, "tiff16", provenance=result.provenance)))
    assert out.dtype == np.uint16
    assert_exactly_grey(out)
    assert len(np.unique(out[..., 0])) > 256  # more levels than an 8-bit output could hold


@pytest.mark.parametrize("source", ["8-bit colour", "16-bit grey"])
def test_null_restorer_restore_only_is_exactly_grey(source: str) -> None:
    data = png(colour_photo(33, 47)) if source == "8-bit colour" else grey16_png(33, 47)
    result = NullRestorer(working_size=16).restore(data, reference=png(colour_photo(20, 20)), colourize=False)
    assert_exactly_grey(result.rgb)
    assert result.provenance["colourized"] is False and result.provenance["parameters"]["colourize"] is False
    assert not result.ab_working.any()


@pytest.mark.parametrize("make", ["restorer", "null"])
def test_encoded_restore_only_rereads_grey_with_zero_chroma(restorer: Restorer, make: str) -> None:
    model = restorer if make == "restorer" else NullRestorer(working_size=WORKING)
    result = model.restore(png(colour_photo(40, 56, seed=1)), colourize=False)
    png8 = np.asarray(Image.open(io.BytesIO(encode_image(result.rgb, "png"))).convert("RGB"))
    assert_exactly_grey(png8)
    assert not lab_chroma(png8).any()  # a* = b* = 0 for every pixel
    tiff = tifffile.imread(io.BytesIO(encode_image(result.rgb, "tiff16")))
    assert_exactly_grey(tiff)
    assert not lab_chroma((tiff >> 8).astype(np.uint8)).any()
    assert_exactly_grey(decode_image(encode_image(result.rgb, "tiff16")).rgb)


def test_restore_file_restore_only_writes_a_labelled_16_bit_jp2(restorer: Restorer, tmp_path: Path) -> None:
    source = tmp_path / "scan-0042.png"
    source.write_bytes(grey16_png(48, 64))
    reference = tmp_path / "garden.png"
    reference.write_bytes(png(colour_photo(64, 64)))
    out = tmp_path / "scan-0042.jp2"
    result = restorer.restore_file(source, reference, out_path=out, fmt="jp2", colourize=False, mark=True)
    image = Image.open(out)
    assert image.mode == "I;16" and image.size == (64, 48)  # one 16-bit grey component
    record = read_provenance(decode_image(out).xmp)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["source_sha256"] == digest == result.provenance["source_sha256"]
    assert record["source_name"] == "scan-0042.png" and record["colourized"] == "false"
    fields = json.loads(subprocess.run(
        ["exiftool", "-j", "-XMP-iptcExt:all", "-XMP-dc:Description", str(out)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout)[0]
    assert fields["DigitalSourceType"] == ALGORITHMICALLY_ENHANCED
    assert digest in fields["Description"] and "kept in grey" in fields["Description"]
