"""Every output says, in its own XMP and readable by ExifTool, what made it and from which file."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pikfix import __version__, labels
from pikfix.imageio import build_xmp, decode_image, encode_image, read_provenance

CHECKPOINT = "ab" * 32
SOURCE = "cd" * 32
ENHANCED = "http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicallyEnhanced"
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
# An original whose XMP already describes how it was made (a scan) and carries a caption in two languages.
ORIGINAL_XMP = b"""<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:iptcx="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
 iptcx:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture">
<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Grandma &amp; the dog, 1952</rdf:li>
<rdf:li xml:lang="de">Oma mit Hund</rdf:li></rdf:Alt></dc:description>
<dc:creator><rdf:Seq><rdf:li>Studio Weiss</rdf:li></rdf:Seq></dc:creator>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""


def provenance(colourized: bool) -> dict:
    return {
        "software": f"pikfix {__version__}",
        "model": "pikfix-tiny",
        "checkpoint_sha256": CHECKPOINT,
        "reference_id": "album-7/ref-3" if colourized else None,
        "reference_used": colourized,
        "colourized": colourized,
        "parameters": {"colourize": colourized},
        "source_sha256": SOURCE,
        "source_name": "scan-0042.tif",
    }


def photo(height: int = 48, width: int = 64, grey: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width, yy / height, 0.5 + 0 * xx], axis=-1)
    return np.repeat(rgb[..., :1], 3, axis=2) if grey else rgb


def exiftool(path: Path) -> dict:
    """The IPTC Extension and Dublin Core description fields as ExifTool reads them."""
    assert shutil.which("exiftool"), "exiftool (Debian libimage-exiftool-perl) is required by these tests"
    out = subprocess.run(
        ["exiftool", "-j", "-XMP-iptcExt:all", "-XMP-dc:Description", "-XMP-dc:Description-de", "-XMP-dc:Creator",
         str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return json.loads(out.stdout)[0]


# --- the label text ---------------------------------------------------------------------------------


def test_label_follows_whether_colour_was_added() -> None:
    assert labels.digital_source_type(provenance(True)) == COMPOSITE
    assert labels.digital_source_type(provenance(False)) == ENHANCED
    assert labels.mark_text(provenance(True)) == "AI-colourized · pikfix"
    assert labels.mark_text(provenance(False)) == "AI-restored · pikfix"
    # Values read back from a file are strings; records older than "colourized" fall back to the reference.
    assert labels.is_colourized({"colourized": "true"}) and not labels.is_colourized({"colourized": "false"})
    assert labels.is_colourized({"reference_used": True}) and not labels.is_colourized(None)


def test_description_names_the_work_the_model_and_the_source_by_digest() -> None:
    coloured = labels.describe(provenance(True))
    assert coloured.startswith("AI-colourized copy: restored and colourized by pikfix")
    assert f"checkpoint SHA-256 {CHECKPOINT}" in coloured and f"scan-0042.tif (SHA-256 {SOURCE})" in coloured
    assert "reference photo album-7/ref-3" in coloured and "estimate" in coloured
    grey = labels.describe(provenance(False))
    assert grey.startswith("AI-restored copy: restored by pikfix") and "kept in grey" in grey
    assert "colourized" not in grey and SOURCE in grey
    assert "unidentified source file" in labels.describe({"model": "m"})
    assert labels.ai_system_used(provenance(True)) == "pikfix Pik-Fix pikfix-tiny"
    assert labels.ai_system_version_used(provenance(True)) == f"pikfix {__version__}; checkpoint sha256:{CHECKPOINT}"


def test_description_reads_the_same_from_a_record_read_back_from_the_file() -> None:
    record = provenance(True)
    read_back = read_provenance(build_xmp(record))
    assert labels.describe(read_back) == labels.describe(record)
    assert labels.iptc_fields(read_back) == labels.iptc_fields(record)


# --- in the file, read by ExifTool -----------------------------------------------------------------


@pytest.mark.parametrize("colourized", [True, False], ids=["colourized", "restore-only"])
@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff16", "jp2"])
def test_exiftool_reads_the_labels_from_every_format(tmp_path: Path, fmt: str, colourized: bool) -> None:
    record = provenance(colourized)
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(encode_image(photo(grey=not colourized), fmt, xmp=ORIGINAL_XMP, provenance=record))
    fields = exiftool(path)
    assert fields["DigitalSourceType"] == (COMPOSITE if colourized else ENHANCED)
    assert fields["AISystemUsed"] == "pikfix Pik-Fix pikfix-tiny"
    assert fields["AISystemVersionUsed"] == f"pikfix {__version__}; checkpoint sha256:{CHECKPOINT}"
    sentence = labels.describe(record)
    # One description per language: our sentence, then the original's caption, which is carried over.
    assert fields["Description"] == f"{sentence} Original description: Grandma & the dog, 1952"
    assert fields["Description-de"] == f"{sentence} Original description: Oma mit Hund"
    assert fields["Creator"] == "Studio Weiss"  # the original's other metadata is kept


def test_labels_without_original_metadata(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(encode_image(photo(), "png", provenance=provenance(True)))
    fields = exiftool(path)
    assert fields["DigitalSourceType"] == COMPOSITE
    assert fields["Description"] == labels.describe(provenance(True))


def test_restoring_an_output_again_replaces_the_label_and_keeps_the_caption_once() -> None:
    first = build_xmp(provenance(True), ORIGINAL_XMP)
    again = provenance(False) | {"source_sha256": "ef" * 32}
    second = build_xmp(again, first).decode("utf-8")
    assert second.count("DigitalSourceType=") == 1 and ENHANCED in second and COMPOSITE not in second
    assert second.count("<dc:description>") == 1
    assert second.count("Grandma &amp; the dog, 1952") == 1 and "ef" * 32 in second
    assert "AI-colourized copy" not in second  # the first run's sentence is not taken for a caption
    assert read_provenance(second)["source_sha256"] == "ef" * 32


def test_original_label_in_element_form_is_replaced() -> None:
    original = ORIGINAL_XMP.replace(
        b' iptcx:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture">',
        b"><iptcx:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/negativeFilm"
        b"</iptcx:DigitalSourceType>",
    )
    merged = build_xmp(provenance(False), original).decode("utf-8")
    assert "negativeFilm" not in merged and merged.count(ENHANCED) == 1 and "Studio Weiss" in merged


# --- the visible mark -------------------------------------------------------------------------------


def _changed(fmt: str, rgb: np.ndarray, record: dict) -> np.ndarray:
    plain = decode_image(encode_image(rgb, fmt, provenance=record)).rgb
    marked = decode_image(encode_image(rgb, fmt, provenance=record, mark=True)).rgb
    return np.abs(marked - plain).max(axis=2) > 0


@pytest.mark.parametrize("fmt", ["png", "tiff16", "jp2"])
def test_mark_changes_the_bottom_right_corner_only(fmt: str) -> None:
    height, width = 300, 400
    changed = _changed(fmt, photo(height, width), provenance(True))
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 200  # a visible label, not a speck
    assert ys.min() > height * 0.85 and xs.min() > width * 0.5  # only in the corner
    assert ys.max() < height and xs.max() < width


def test_mark_keeps_a_restore_only_output_grey() -> None:
    out = encode_image(photo(200, 300, grey=True), "png", provenance=provenance(False), mark=True)
    pixels = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert _changed("png", photo(200, 300, grey=True), provenance(False))[-40:, -150:].any()


def test_mark_scales_with_the_image() -> None:
    small = _changed("png", photo(240, 320), provenance(True))
    large = _changed("png", photo(1200, 1600), provenance(True))
    small_height = np.ptp(np.nonzero(small)[0])
    large_height = np.ptp(np.nonzero(large)[0])
    assert large_height > 2 * small_height
    assert large.sum() < 0.05 * large.size  # small: a corner label, not a banner
