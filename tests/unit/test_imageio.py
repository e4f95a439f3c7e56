"""Decoding hostile uploads, colour management, 16-bit precision and metadata round trips."""

from __future__ import annotations

import io
import logging
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from pikfix.errors import ERROR_CODES, PikFixInputError
from pikfix.imageio import (
    DecodedImage,
    build_xmp,
    content_type_for,
    decode_image,
    decode_pil_image,
    encode_image,
    extension_for,
    normalize_output_format,
    read_provenance,
    sniff_image_format,
)

RNG = np.random.default_rng(1234)

# --- builders ---------------------------------------------------------------------------------------

ADOBE_RGB_D50 = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
SRGB_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))
GAMMA_22 = 563 / 256  # the u8Fixed8 value closest to 2.2


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _icc_xyz(xyz) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _icc_curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _icc_desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">II", 0, 0) + bytes(3 + 67)


def icc_profile(name: str, colorants=None, gamma: float = GAMMA_22) -> bytes:
    """A minimal ICC v2 display profile: matrix/TRC RGB when colorants are given, else a grey curve."""
    tags = [(b"desc", _icc_desc(name)), (b"wtpt", _icc_xyz((0.9642, 1.0, 0.8249)))]
    if colorants is None:
        tags.append((b"kTRC", _icc_curve(gamma)))
    else:
        tags += [(sig, _icc_xyz(c)) for sig, c in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants, strict=True)]
        tags += [(sig, _icc_curve(gamma)) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    offset = 128 + 4 + 12 * len(tags)
    table, blob = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(blob), len(data))
        blob += data
    header = struct.pack(">I", offset + len(blob)) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntr"
    header += (b"GRAY" if colorants is None else b"RGB ") + b"XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    header += b"acsp" + bytes(28) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + blob


def expected_srgb_from_adobe(rgb01: np.ndarray) -> np.ndarray:
    """Independent colorimetry: Adobe-RGB-like (gamma 2.2) -> XYZ D50 -> sRGB (D50-adapted matrix)."""
    xyz = (np.asarray(rgb01, dtype=np.float64) ** GAMMA_22) @ np.array(ADOBE_RGB_D50)
    return expected_srgb_from_linear(xyz @ np.linalg.inv(np.array(SRGB_D50)))


def expected_srgb_from_linear(linear: np.ndarray) -> np.ndarray:
    """The sRGB encoding, written out independently of the package's."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(pixels: np.ndarray, icc: bytes | None = None) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA) using every PNG filter type across its rows."""
    h, w, c = pixels.shape
    bpp, stride = 2 * c, 2 * c * w
    raw = np.frombuffer(pixels.astype(">u2").tobytes(), np.uint8).reshape(h, stride).astype(np.int32)
    out, prev = bytearray(), np.zeros(stride, np.int32)
    for y in range(h):
        row, kind = raw[y], y % 5
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if kind == 4:
            p = left + prev - up_left
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        else:
            pred = [np.zeros_like(row), left, prev, (left + prev) // 2][kind]
        out += bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes()
        prev = row
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    chunks = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    if icc is not None:
        chunks += _chunk(b"iCCP", b"test\0\0" + zlib.compress(icc))
    chunks += _chunk(b"IDAT", zlib.compress(bytes(out))) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def noise_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def sample_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[271] = "Kodak"
    exif[272] = "Brownie No. 2"
    exif[306] = "1952:07:14 10:00:00"
    exif[274] = orientation
    exif[0x8769] = {0x9003: "1952:07:14 10:00:00"}
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    return exif


# --- sniffing and helpers ---------------------------------------------------------------------------


def test_sniff_recognises_formats_from_bytes():
    rgb = Image.fromarray(noise_rgb())
    for fmt, name in (("PNG", "png"), ("JPEG", "jpeg"), ("TIFF", "tiff"), ("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp")):
        assert sniff_image_format(save(rgb, fmt)) == name
    assert sniff_image_format(b"8BPS\x00\x01") == "psd"
    assert sniff_image_format(b"\x00\x00\x00\x18ftypheic\x00\x00") == "heif"
    assert sniff_image_format(b"hello") is None
    assert sniff_image_format(b"%PDF-1.7\n") is None


def test_output_format_helpers():
    assert normalize_output_format("JPG") == "jpeg"
    assert normalize_output_format("tif") == "tiff16"
    assert content_type_for("png") == "image/png"
    assert content_type_for("tiff16") == "image/tiff"
    assert extension_for("jpeg") == ".jpg"
    with pytest.raises(ValueError):
        normalize_output_format("gif")


def test_input_error_has_stable_code_and_survives_pickling():
    err = PikFixInputError("truncated_image", "ends early")
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, ValueError) and copy.code == "truncated_image" and copy.message == "ends early"
    assert copy.to_dict() == {"code": "truncated_image", "message": "ends early"}
    with pytest.raises(ValueError):
        PikFixInputError("no_such_code", "x")
    assert {"empty_file", "not_an_image", "unsupported_format", "truncated_image", "too_many_pixels",
            "corrupt_image", "bad_reference"} <= set(ERROR_CODES)


# --- modes ------------------------------------------------------------------------------------------


def test_rgb_png_decodes_exactly():
    pixels = noise_rgb()
    decoded = decode_image(save(Image.fromarray(pixels), "PNG"))
    assert isinstance(decoded, DecodedImage)
    assert decoded.rgb.dtype == np.float32 and decoded.rgb.shape == (24, 32, 3)
    assert decoded.size == (32, 24) and decoded.format == "png" and decoded.bit_depth == 8
    assert not decoded.was_grey
    np.testing.assert_allclose(decoded.rgb * 255, pixels, atol=1e-3)


def test_decode_from_path(tmp_path):
    path = tmp_path / "photo.bin"  # the name says nothing: the content decides
    path.write_bytes(save(Image.fromarray(noise_rgb()), "JPEG", quality=90))
    decoded = decode_image(path)
    assert decoded.format == "jpeg" and decoded.size == (32, 24)


def test_bilevel_grey_and_grey_alpha():
    bits = (RNG.random((16, 20)) > 0.5).astype(np.uint8) * 255
    one = decode_image(save(Image.fromarray(bits).convert("1"), "PNG"))
    assert one.was_grey and set(np.unique(one.rgb)) <= {0.0, 1.0}
    np.testing.assert_array_equal(one.rgb[..., 0], bits / 255)

    grey = RNG.integers(0, 256, (16, 20), dtype=np.uint8)
    lum = decode_image(save(Image.fromarray(grey, "L"), "PNG"))
    assert lum.was_grey and lum.bit_depth == 8
    np.testing.assert_allclose(lum.rgb, np.repeat(grey[..., None], 3, 2) / 255, atol=1e-6)

    alpha = np.zeros((16, 20), np.uint8)
    alpha[:, 10:] = 255
    la = Image.merge("LA", (Image.fromarray(np.full((16, 20), 40, np.uint8)), Image.fromarray(alpha)))
    decoded = decode_image(save(la, "PNG"))
    assert decoded.was_grey
    np.testing.assert_allclose(decoded.rgb[:, :10], 1.0)  # transparent -> white paper
    np.testing.assert_allclose(decoded.rgb[:, 10:], 40 / 255, atol=1e-6)


def test_sixteen_bit_grey_keeps_precision():
    values = RNG.integers(0, 65536, (18, 22), dtype=np.uint16)
    for data in (png16(values[..., None]), save(Image.fromarray(values), "TIFF")):
        decoded = decode_image(data)
        assert decoded.bit_depth == 16 and decoded.was_grey
        np.testing.assert_allclose(decoded.rgb[..., 1], values / 65535, atol=1e-7)
        # 8-bit rounding would be off by up to 0.5/255; 16-bit data must be far closer than that.
        assert np.abs(decoded.rgb[..., 0] - values / 65535).max() < 1e-6


def test_int32_and_float_grey_modes():
    ints = Image.fromarray(np.full((8, 9), 30000, np.int32), "I")
    decoded = decode_image(save(ints, "TIFF"))
    np.testing.assert_allclose(decoded.rgb, 30000 / 65535, atol=1e-7)
    assert decoded.bit_depth == 16 and decoded.was_grey

    floats = Image.fromarray(np.linspace(0, 1, 72, dtype=np.float32).reshape(8, 9), "F")
    decoded = decode_image(save(floats, "TIFF"))
    np.testing.assert_allclose(decoded.rgb[..., 2], np.linspace(0, 1, 72).reshape(8, 9), atol=1e-6)


def test_palette_with_transparency_and_rgba_composite_on_white():
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.info["transparency"] = 2
    decoded = decode_image(save(pal, "PNG"))
    np.testing.assert_allclose(decoded.rgb[0, 0], (1, 0, 0))
    np.testing.assert_allclose(decoded.rgb[1, 0], (1, 1, 1))  # transparent index -> white

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    decoded = decode_image(save(Image.fromarray(rgba, "RGBA"), "PNG"))
    a = 128 / 255
    expected = np.array([200 / 255 * a + (1 - a), 1 - a, 1 - a])
    np.testing.assert_allclose(decoded.rgb[2, 2], expected, atol=1.5 / 255)


def test_cmyk_tiff_and_jpeg():
    cmyk = Image.new("CMYK", (6, 5), (0, 255, 255, 0))  # pure red ink-wise
    decoded = decode_image(save(cmyk, "TIFF"))
    np.testing.assert_allclose(decoded.rgb[0, 0], (1, 0, 0), atol=1 / 255)
    decoded = decode_image(save(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", quality=95))
    assert decoded.rgb.min() > 0.95  # no ink: white paper


def test_sixteen_bit_rgb_and_rgba_keep_precision():
    values = RNG.integers(0, 65536, (21, 27, 3), dtype=np.uint16)
    decoded = decode_image(png16(values))
    assert decoded.bit_depth == 16 and not decoded.was_grey
    assert np.abs(decoded.rgb - values / 65535).max() < 1e-6

    rgba = RNG.integers(0, 65536, (9, 11, 4), dtype=np.uint16)
    decoded = decode_image(png16(rgba))
    alpha = rgba[..., 3:] / 65535
    np.testing.assert_allclose(decoded.rgb, rgba[..., :3] / 65535 * alpha + 1 - alpha, atol=1e-6)


@pytest.mark.parametrize(("byteorder", "compression"), [("<", None), (">", None), ("<", "zlib"), (">", "zlib")])
def test_sixteen_bit_rgb_tiff_from_another_writer(byteorder, compression):
    tifffile = pytest.importorskip("tifffile")
    values = RNG.integers(0, 65536, (13, 19, 3), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, values.astype(byteorder + "u2"), photometric="rgb", compression=compression, rowsperstrip=4)
    decoded = decode_image(buf.getvalue())
    assert decoded.bit_depth == 16
    assert np.abs(decoded.rgb - values / 65535).max() < 1e-6


def test_other_containers_gif_first_frame_bmp_webp():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(data)
    np.testing.assert_allclose(decoded.rgb[0, 0], (1, 0, 0), atol=1 / 255)
    pixels = noise_rgb(8, 8)
    np.testing.assert_allclose(decode_image(save(Image.fromarray(pixels), "BMP")).rgb * 255, pixels, atol=1e-3)
    webp = decode_image(save(Image.fromarray(pixels), "WEBP", lossless=True))
    np.testing.assert_allclose(webp.rgb * 255, pixels, atol=1e-3)


def test_decode_pil_image_wraps_an_open_image():
    decoded = decode_pil_image(Image.new("L", (5, 3), 128))
    assert decoded.size == (5, 3) and decoded.was_grey
    np.testing.assert_allclose(decoded.rgb, 128 / 255, atol=1e-6)


# --- orientation, colour management -----------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    pixels = noise_rgb(6, 10)
    data = save(Image.fromarray(pixels), "PNG", exif=sample_exif(orientation))
    decoded = decode_image(data)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert decoded.size == reference.size
    np.testing.assert_allclose(decoded.rgb * 255, np.asarray(reference), atol=1e-3)
    exif = Image.Exif()
    exif.load(decoded.exif)
    assert exif[274] == 1 and exif[271] == "Kodak"  # upright now, camera kept
    assert exif.get_ifd(0x8769)[0x9003] == "1952:07:14 10:00:00"


def test_jpeg_exif_rotation_swaps_the_size():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    decoded = decode_image(save(Image.fromarray(pixels), "JPEG", quality=95, exif=sample_exif(6)))
    assert decoded.size == (20, 40)  # rotated 90 degrees clockwise: the white half is now on top
    assert decoded.rgb[:15].mean() > 0.9 and decoded.rgb[25:].mean() < 0.1


def test_icc_profile_is_converted_to_srgb_and_kept():
    profile = icc_profile("Adobe RGB like", ADOBE_RGB_D50)
    pixels = np.array([[[100, 160, 100], [200, 40, 90]], [[128, 128, 128], [10, 220, 250]]], np.uint8)
    decoded = decode_image(save(Image.fromarray(pixels), "PNG", icc_profile=profile))
    assert decoded.icc == profile
    expected = expected_srgb_from_adobe(pixels / 255)
    np.testing.assert_allclose(decoded.rgb, expected, atol=2.5 / 255)
    assert np.abs(decoded.rgb - pixels / 255).max() > 20 / 255  # a real conversion happened


def test_icc_conversion_on_sixteen_bit_rgb_and_grey():
    profile = icc_profile("Adobe RGB like", ADOBE_RGB_D50)
    values = RNG.integers(0, 65536, (12, 14, 3), dtype=np.uint16)
    decoded = decode_image(png16(values, icc=profile))
    assert decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.rgb, expected_srgb_from_adobe(values / 65535), atol=3 / 255)
    # A smooth 16-bit ramp stays smooth: far more distinct levels than 8 bits could hold.
    ramp = np.repeat(np.linspace(20000, 24000, 1000).astype(np.uint16)[None, :, None], 3, axis=2)
    out = decode_image(png16(ramp, icc=profile)).rgb[0, :, 1]
    assert len(np.unique(out)) > 600 and np.all(np.diff(out) >= -1e-6)

    linear_grey = icc_profile("Linear grey", None, gamma=1.0)
    shadows = np.linspace(0, 3000, 200).astype(np.uint16)[None, :, None]  # where linear -> sRGB is steep
    decoded = decode_image(png16(shadows, icc=linear_grey)).rgb[0, :, 0]
    np.testing.assert_allclose(decoded, expected_srgb_from_linear(shadows[0, :, 0] / 65535), atol=1 / 255)
    grey = Image.fromarray(np.full((4, 4), 100, np.uint8), "L")
    decoded = decode_image(save(grey, "PNG", icc_profile=linear_grey))
    srgb = 1.055 * (100 / 255) ** (1 / 2.4) - 0.055  # linear light encoded as sRGB
    np.testing.assert_allclose(decoded.rgb, srgb, atol=2 / 255)
    assert decoded.was_grey


def test_corrupt_icc_profile_is_ignored_with_a_warning(caplog):
    pixels = noise_rgb(4, 4)
    with caplog.at_level(logging.WARNING, logger="pikfix.imageio"):
        decoded = decode_image(save(Image.fromarray(pixels), "PNG", icc_profile=b"\x00\x01garbage" * 20))
    np.testing.assert_allclose(decoded.rgb * 255, pixels, atol=1e-3)
    assert "ICC" in caplog.text


# --- bad input ---------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: b"", "empty_file"),
        (lambda: b"Dear bureau, please restore my photos.\n", "not_an_image"),
        (lambda: b"<!DOCTYPE html><html><body>404</body></html>", "not_an_image"),
        (lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "not_an_image"),
        (lambda: save(Image.fromarray(noise_rgb(64, 64)), "JPEG")[:600], "truncated_image"),
        (lambda: save(Image.fromarray(noise_rgb(64, 64)), "PNG")[:3000], "truncated_image"),
        (lambda: save(Image.fromarray(noise_rgb(64, 64)), "PNG")[:20], "truncated_image"),
        (lambda: _png_header_only(100_000, 100_000), "too_many_pixels"),
        (lambda: b"8BPS\x00\x01" + bytes(64), "unsupported_format"),
        (lambda: b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", b"\x00" * 13) + _chunk(b"IEND", b""), "corrupt_image"),
    ],
    ids=["empty", "text", "html", "pdf", "trunc-jpeg", "trunc-png", "trunc-png-header", "bomb", "psd", "corrupt"],
)
def test_bad_input_gets_its_code(make, code):
    with pytest.raises(PikFixInputError) as info:
        decode_image(make(), max_pixels=50_000_000)
    assert info.value.code == code


def test_pixel_limit_is_checked_before_decoding():
    data = save(Image.fromarray(noise_rgb(40, 50)), "PNG")
    with pytest.raises(PikFixInputError) as info:
        decode_image(data, max_pixels=1999)
    assert info.value.code == "too_many_pixels"
    assert decode_image(data, max_pixels=2000).size == (50, 40)


# --- encoding -----------------------------------------------------------------------------------------

PROVENANCE = {"model": "pikfix-lite", "checkpoint_sha256": "ab" * 32, "reference_id": "ref-42",
              "parameters": {"working_size": 256, "tile": 512}}


def test_png_round_trip_with_metadata():
    rgb = RNG.random((20, 30, 3), dtype=np.float32)
    original_xmp = build_xmp(None, None)
    assert original_xmp is None
    data = encode_image(rgb, "png", exif=sample_exif(6).tobytes(), dpi=(600, 600), provenance=PROVENANCE)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (30, 20)
    np.testing.assert_allclose(np.asarray(image) / 255, rgb, atol=0.5 / 255 + 1e-6)
    exif = image.getexif()
    assert exif[274] == 1 and exif[271] == "Kodak" and exif.get_ifd(0x8825)[1] == "N"
    assert image.info["dpi"] == pytest.approx((600, 600), abs=0.1)
    assert image.info.get("icc_profile")
    assert image.text["pikfix:checkpoint_sha256"] == "ab" * 32
    prov = read_provenance(image.info["xmp"])
    assert prov["model"] == "pikfix-lite" and prov["reference_id"] == "ref-42"
    assert prov["parameters"] == '{"tile": 512, "working_size": 256}'


ORIGINAL_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6">'
    b"<dc:title><rdf:Alt><rdf:li xml:lang=\"x-default\">Grandma, 1952</rdf:li></rdf:Alt></dc:title>"
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
)


def test_jpeg_round_trip_with_metadata_and_merged_xmp():
    rgb = np.full((32, 48, 3), (0.8, 0.4, 0.2), np.float32)
    data = encode_image(rgb, "jpeg", exif=sample_exif().tobytes(), xmp=ORIGINAL_XMP, provenance=PROVENANCE)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (48, 32)
    np.testing.assert_allclose(np.asarray(image).mean(axis=(0, 1)) / 255, (0.8, 0.4, 0.2), atol=3 / 255)
    assert image.getexif()[271] == "Kodak"
    xmp = image.info["xmp"]
    assert b"Grandma, 1952" in xmp and b'tiff:Orientation="1"' in xmp
    assert read_provenance(xmp)["checkpoint_sha256"] == "ab" * 32
    # Restoring an already restored photo replaces our record instead of stacking a second one.
    again = encode_image(rgb, "jpeg", xmp=xmp, provenance={**PROVENANCE, "reference_id": "ref-7"})
    xmp2 = Image.open(io.BytesIO(again)).info["xmp"]
    assert xmp2.count(b"xmlns:pikfix") == 1 and read_provenance(xmp2)["reference_id"] == "ref-7"
    assert b"Grandma, 1952" in xmp2


def test_tiff16_round_trip_keeps_sixteen_bits_and_metadata():
    rgb = RNG.random((17, 23, 3)).astype(np.float32)
    data = encode_image(rgb, "tiff16", exif=sample_exif(8).tobytes(), xmp=ORIGINAL_XMP, dpi=(1200, 1200),
                        provenance=PROVENANCE)
    image = Image.open(io.BytesIO(data))
    assert image.format == "TIFF" and image.size == (23, 17)
    assert image.tag_v2[258] == (16, 16, 16) and image.tag_v2[277] == 3 and image.info.get("icc_profile")
    exif = image.getexif()
    assert (exif[271], exif[272], exif[306], exif[274]) == ("Kodak", "Brownie No. 2", "1952:07:14 10:00:00", 1)
    assert exif[305].startswith("pikfix")
    assert exif.get_ifd(0x8769)[0x9003] == "1952:07:14 10:00:00"
    gps = exif.get_ifd(0x8825)
    assert gps[1] == "N" and tuple(map(float, gps[2])) == (48.0, 51.0, 24.0)
    assert b"Grandma, 1952" in image.tag_v2[700] and b'tiff:Orientation="1"' in image.tag_v2[700]
    assert read_provenance(image.tag_v2[700])["model"] == "pikfix-lite"
    decoded = decode_image(data)
    assert decoded.bit_depth == 16 and decoded.dpi == pytest.approx((1200, 1200))
    assert np.abs(decoded.rgb - rgb).max() < 1e-5  # 16-bit quantisation, not 8-bit
    assert read_provenance(decoded.xmp)["reference_id"] == "ref-42"


def test_tiff16_grey_and_resolution_from_the_original_exif():
    exif = sample_exif()
    exif[282], exif[283], exif[296] = 300.0, 300.0, 2
    data = encode_image(RNG.random((9, 7)).astype(np.float32), "tiff16", exif=exif.tobytes())
    image = Image.open(io.BytesIO(data))
    assert image.mode == "I;16" and image.tag_v2[262] == 1 and image.getexif()[271] == "Kodak"
    assert image.info["dpi"] == pytest.approx((300, 300))


def test_decode_then_encode_carries_metadata_through():
    source = save(Image.fromarray(noise_rgb(12, 16)), "JPEG", quality=95, exif=sample_exif(3), dpi=(300, 300))
    decoded = decode_image(source)
    data = encode_image(decoded.rgb, "png", exif=decoded.exif, xmp=decoded.xmp, dpi=decoded.dpi)
    image = Image.open(io.BytesIO(data))
    assert image.getexif()[306] == "1952:07:14 10:00:00" and image.getexif()[274] == 1
    assert image.info["dpi"] == pytest.approx((300, 300), abs=0.1)


def test_encode_rejects_bad_shapes_and_clips_values():
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4, 2), np.float32), "png")
    data = encode_image(np.array([[[-0.5, 0.5, 2.0]]], np.float32), "png")
    assert Image.open(io.BytesIO(data)).getpixel((0, 0)) == (0, 128, 255)
