"""Reference retrieval: descriptors, the vectorised DISTS index and its persistence."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pikfix.errors import PikFixInputError
from pikfix.retrieval import (
    MIN_REFERENCE_COLOURFULNESS,
    Candidate,
    DescriptorExtractor,
    DescriptorLayout,
    DescriptorMismatchError,
    IndexFormatError,
    ReferenceIndex,
    ScoringConfig,
    check_reference_colour,
    check_reference_colour_file,
    dists_similarity,
    rank_references,
    to_gray01,
)

QUERY = "scene0"
OTHERS = [f"scene{i}" for i in range(1, 11)]


def synthetic_photo(seed: int, width: int = 256, height: int = 192) -> np.ndarray:
    """A colour scene as float RGB in [0, 1]: a tilted gradient, stripes of a seeded frequency and
    direction, a few flat-coloured discs and boxes, and grain. Different seeds differ in layout and
    texture the way different photos do, so retrieval has something to tell apart."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.03, 0.25)
    along = x * np.cos(angle) + y * np.sin(angle)
    rgb = np.empty((height, width, 3), np.float32)
    for ch in range(3):
        g0, g1 = rng.uniform(0.1, 0.9, 2)
        rgb[..., ch] = g0 + (g1 - g0) * along / along.max()
    stripes = (np.sin(along * freq + rng.uniform(0, 6)) > 0).astype(np.float32)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    rgb[top : top + height // 2, left : left + width // 2] += 0.25 * stripes[top : top + height // 2, left : left + width // 2, None]
    for _ in range(rng.integers(3, 7)):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.08, 0.3) * height
        if rng.random() < 0.5:
            mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        else:
            mask = (np.abs(x - cx) < r) & (np.abs(y - cy) < 0.6 * r)
        rgb[mask] = colour
    rgb += rng.normal(0, 0.02, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 1)


@pytest.fixture(scope="module")
def extractor() -> DescriptorExtractor:
    return DescriptorExtractor(size=128)  # random-init VGG19 (no weights), small input for speed


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: synthetic_photo(seed) for seed, name in enumerate([QUERY, *OTHERS])}


def random_descriptors(layout: DescriptorLayout, n: int, seed: int = 0) -> np.ndarray:
    """Descriptors with the statistics' signs: μ, σ >= 0, pooled parts of norm σ."""
    rng = np.random.default_rng(seed)
    c, g = layout.channels, layout.cells
    mu, sd = rng.random((n, c)), rng.random((n, c))
    unit = rng.standard_normal((n, g, c))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return np.concatenate([mu, sd, (unit * sd[:, None, :]).reshape(n, g * c)], axis=1).astype(np.float32)


SMALL = DescriptorLayout((1, 4, 3), grid=2)


def test_layout_dimensions_and_weights(extractor: DescriptorExtractor) -> None:
    layout = extractor.layout
    assert layout.layer_channels == (1, 32, 32, 32, 32, 32)
    assert layout.dim == 161 * (2 + 4)
    w = layout.channel_weights()
    assert w.shape == (161,) and w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(1 / 6)  # the grey image is one of six equally weighted layers
    assert DescriptorLayout.from_dict(layout.to_dict()) == layout


def test_descriptor_shape_and_determinism(
    extractor: DescriptorExtractor, photos: dict[str, np.ndarray]
) -> None:
    img = photos[QUERY]
    d = extractor.describe(img)
    assert d.shape == (extractor.layout.dim,) and d.dtype == np.float32
    assert np.isfinite(d).all()
    c = extractor.layout.channels
    assert (d[:c] >= 0).all() and (d[c : 2 * c] >= 0).all()  # post-ReLU means and standard deviations
    # a fresh extractor (another worker process) makes the same descriptor: the random init is seeded
    fresh = DescriptorExtractor(size=128)
    assert fresh.backbone_id == extractor.backbone_id
    np.testing.assert_allclose(fresh.describe(img), d, rtol=1e-5, atol=1e-6)
    # PIL input and uint8 input give the same descriptor as float input of the same pixels
    pil = Image.fromarray(np.round(img * 255).astype(np.uint8))
    np.testing.assert_allclose(
        extractor.describe(pil), extractor.describe(np.asarray(pil)), rtol=1e-5, atol=1e-6
    )


def test_self_similarity_is_one(extractor: DescriptorExtractor, photos: dict[str, np.ndarray]) -> None:
    d = extractor.describe(photos[QUERY])
    stored = d.astype(np.float16).astype(np.float32)
    total, texture, structure = dists_similarity(stored, stored, extractor.layout)
    # exact up to float16 rounding of σ and of the σ-scaled pooled maps
    assert texture == pytest.approx(1.0, abs=1e-6) and structure == pytest.approx(1.0, abs=1e-4)
    assert total == pytest.approx(1.0, abs=1e-4)


def test_grey_conversion_matches_lab_lightness() -> None:
    from skimage import color

    rgb = np.random.default_rng(3).random((20, 30, 3)).astype(np.float32)
    np.testing.assert_allclose(to_gray01(rgb), color.rgb2lab(rgb)[..., 0] / 100, atol=1e-3)
    grey = np.random.default_rng(4).random((20, 30)).astype(np.float32)
    np.testing.assert_array_equal(to_gray01(grey), grey)  # grey input is already L/100
    assert to_gray01(Image.fromarray((grey * 65535).astype(np.uint16)), 16).shape == (16, 16)
    # big inputs are box-reduced before conversion: same picture as converting at full size
    y, x = np.mgrid[0:700, 0:900].astype(np.float32)
    smooth = np.stack([x / 900, y / 700, 0.5 + 0.4 * np.sin(x / 150)], axis=-1)
    small = to_gray01(smooth, 64)
    reference = np.asarray(Image.fromarray(to_gray01(smooth)).resize((64, 64), Image.Resampling.BILINEAR))
    assert small.shape == (64, 64) and np.abs(small - reference).max() < 0.01
    assert np.abs(to_gray01((smooth * 255).astype(np.uint8), 64) - small).max() < 0.01


def test_near_duplicate_ranks_first(extractor: DescriptorExtractor, photos: dict[str, np.ndarray]) -> None:
    """A grey, slightly cropped and brightened copy of a photo finds the original among ten others."""
    original = photos[QUERY]
    h, w = original.shape[:2]
    near_duplicate = np.clip(original[int(0.04 * h) : int(0.97 * h), int(0.03 * w) : int(0.95 * w)] * 1.1, 0, 1)
    query = to_gray01(near_duplicate)  # the pipeline queries with a grey image
    ranked = rank_references(query, photos, extractor, k=len(photos))
    assert [c.rank for c in ranked] == list(range(1, len(photos) + 1))
    assert ranked[0].id == QUERY
    assert ranked[0].total > ranked[1].total
    assert all(a.total >= b.total for a, b in zip(ranked, ranked[1:], strict=False))
    for c in ranked:
        assert c.total == pytest.approx(0.5 * c.texture + 0.5 * c.structure, abs=1e-6)


def test_vectorised_scores_equal_naive_loop() -> None:
    descriptors = random_descriptors(SMALL, 5000)  # several scoring blocks
    index = ReferenceIndex(SMALL)
    ids = [f"r{i}" for i in range(len(descriptors))]
    index.add(ids, descriptors)
    query = random_descriptors(SMALL, 1, seed=9)[0]
    scoring = ScoringConfig(texture_weight=0.3, structure_weight=0.7)
    scores = index.score_all(query, scoring)
    q16 = query.astype(np.float16).astype(np.float32)
    naive = np.array([dists_similarity(q16, index.descriptor(i), SMALL, scoring) for i in ids])
    np.testing.assert_allclose(scores.total, naive[:, 0], atol=2e-6)
    np.testing.assert_allclose(scores.texture, naive[:, 1], atol=2e-6)
    np.testing.assert_allclose(scores.structure, naive[:, 2], atol=2e-6)
    best = index.query(query, k=5, scoring=scoring)
    assert [c.id for c in best] == [ids[j] for j in np.argsort(-naive[:, 0], kind="stable")[:5]]
    batch = index.query_batch(np.stack([query, descriptors[17]]), k=3, scoring=scoring)
    assert batch[0] == best[:3]
    assert batch[1][0].id == "r17"


def test_remove_and_replace() -> None:
    descriptors = random_descriptors(SMALL, 6)
    index = ReferenceIndex(SMALL)
    index.add(list("abcdef"), descriptors)
    assert index.query(descriptors[2], k=1)[0].id == "c"
    index.remove("c")
    assert len(index) == 5 and "c" not in index
    assert "c" not in [c.id for c in index.query(descriptors[2], k=10)]
    for ref_id, row in zip("abdef", [0, 1, 3, 4, 5], strict=True):  # survivors keep their descriptors
        np.testing.assert_allclose(index.descriptor(ref_id), descriptors[row], rtol=1e-3, atol=1e-3)
    with pytest.raises(KeyError):
        index.remove("c")
    index.add(["a"], descriptors[2])  # re-adding an id replaces its descriptor
    assert len(index) == 5
    assert index.query(descriptors[2], k=1)[0].id == "a"


def test_save_load_and_bytes_round_trip(tmp_path: Path) -> None:
    descriptors = random_descriptors(SMALL, 40)
    index = ReferenceIndex(SMALL, backbone="vgg19-test", scoring=ScoringConfig(0.4, 0.6))
    index.add([f"id-{i}" for i in range(40)], descriptors)
    index.remove("id-7")
    query = random_descriptors(SMALL, 1, seed=5)[0]
    expected = index.query(query, k=6)
    path = tmp_path / "refs" / "index.npz"
    index.save(path)
    assert path.is_file() and not list(path.parent.glob("*.part"))
    for restored in (ReferenceIndex.load(path), ReferenceIndex.from_bytes(index.to_bytes())):
        assert restored.ids == index.ids and restored.layout == SMALL
        assert restored.backbone == "vgg19-test" and restored.scoring == ScoringConfig(0.4, 0.6)
        assert restored.query(query, k=6) == expected
    empty = ReferenceIndex.from_bytes(ReferenceIndex(SMALL).to_bytes())
    assert len(empty) == 0 and empty.query(query) == []


def test_bad_input_is_refused() -> None:
    index = ReferenceIndex(SMALL)
    with pytest.raises(DescriptorMismatchError):
        index.add(["x"], np.zeros((1, SMALL.dim + 1), np.float32))
    with pytest.raises(DescriptorMismatchError):
        index.add(["x"], np.full((1, SMALL.dim), 1e6, np.float32))  # beyond float16
    with pytest.raises(ValueError):
        index.add(["x", "x"], random_descriptors(SMALL, 2))
    with pytest.raises(IndexFormatError):
        ReferenceIndex.from_bytes(b"not an index")
    assert index.query(random_descriptors(SMALL, 1)[0]) == []


def test_candidate_is_plain_data() -> None:
    c = Candidate("ref", 1, 0.9, 0.95, 0.85)
    assert (c.id, c.rank, c.total, c.texture, c.structure) == ("ref", 1, 0.9, 0.95, 0.85)


# ----------------------------------------------------------------------------- colour references


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _near_grey_and_colour_photos() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Photos a reference upload must refuse, and muted but real colour photos it must take."""
    scene = synthetic_photo(3)
    grey = _luminance(scene)
    grey_rgb = np.repeat(grey[..., None], 3, axis=2)
    noise = np.random.default_rng(0).normal(0, 1.5 / 255, grey_rgb.shape).astype(np.float32)
    sepia = np.stack([grey * 1.07 + 0.02, grey * 0.97, grey * 0.80], axis=-1)  # a print's warm tone
    refuse = {
        "grey": grey_rgb,
        "grey with scanner chroma noise": grey_rgb + noise,
        "grey under a light sepia cast": 0.75 * grey_rgb + 0.25 * sepia,  # mean Lab chroma about 3.5
    }
    accept = {
        # 15 % of the colour left: the look of a faded print or an overcast street
        "muted": grey_rgb + 0.15 * (scene - grey_rgb),
        "ordinary": scene,
    }
    return refuse, accept


def test_colour_check_refuses_grey_and_toned_photos_and_takes_muted_colour() -> None:
    refuse, accept = _near_grey_and_colour_photos()
    for name, rgb in refuse.items():
        check = check_reference_colour(np.clip(rgb, 0, 1))
        assert not check.is_colour, (name, check)
        # encoded as a JPEG (RGB) the same photo is refused too, from the file
        data = _encode(Image.fromarray(_uint8(rgb)), "JPEG", quality=90)
        from_file = check_reference_colour_file(io.BytesIO(data), "jpeg")
        assert not from_file.is_colour and from_file.threshold == MIN_REFERENCE_COLOURFULNESS, (name, from_file)
    for name, rgb in accept.items():
        check = check_reference_colour(np.clip(rgb, 0, 1))
        assert check.is_colour, (name, check)
    muted = check_reference_colour(np.clip(accept["muted"], 0, 1)).colourfulness
    assert MIN_REFERENCE_COLOURFULNESS < muted < 25  # muted indeed, yet a colour photo
    assert "colourfulness 0.0 is below 7" in check_reference_colour(refuse["grey"]).reason()
    # uint8, uint16 and float of the same pixels measure the same; a 2-D array is grey
    scene = synthetic_photo(4)
    as_float = check_reference_colour(_uint8(scene).astype(np.float32) / 255).colourfulness
    assert check_reference_colour(_uint8(scene)).colourfulness == pytest.approx(as_float, abs=0.01)
    assert check_reference_colour(_uint8(scene).astype(np.uint16) * 257).colourfulness == pytest.approx(as_float, abs=0.01)
    assert check_reference_colour(np.zeros((8, 8), np.float32)).colourfulness == 0.0


def test_colour_check_of_files_in_every_pixel_layout() -> None:
    scene = _uint8(synthetic_photo(5))
    grey = _uint8(_luminance(synthetic_photo(5)))
    files = {
        "grey PNG (mode L)": (_encode(Image.fromarray(grey), "PNG"), "png", False),
        "16-bit grey PNG": (_encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), "png", False),
        "grey saved as RGB JPEG": (_encode(Image.fromarray(grey).convert("RGB"), "JPEG"), "jpeg", False),
        "grey palette GIF": (_encode(Image.fromarray(grey).convert("P"), "GIF"), "gif", False),
        "colour JPEG": (_encode(Image.fromarray(scene), "JPEG"), "jpeg", True),
        "colour palette GIF": (_encode(Image.fromarray(scene).convert("P"), "GIF"), "gif", True),
        "CMYK JPEG": (_encode(Image.fromarray(scene).convert("CMYK"), "JPEG"), "jpeg", True),
        "RGBA PNG": (_encode(Image.fromarray(scene).convert("RGBA"), "PNG"), "png", True),
    }
    for name, (data, fmt, colour) in files.items():
        assert check_reference_colour_file(io.BytesIO(data), fmt).is_colour is colour, name

    # A large scan is measured on a reduced decode, and measures what its full decode does.
    big = np.asarray(Image.fromarray(scene).resize((3000, 2250), Image.Resampling.BICUBIC))
    data = _encode(Image.fromarray(big), "JPEG", quality=92)
    reduced = check_reference_colour_file(io.BytesIO(data), "jpeg").colourfulness
    with Image.open(io.BytesIO(data)) as image:
        full = check_reference_colour(np.asarray(image.convert("RGB"))).colourfulness
    assert reduced == pytest.approx(full, rel=0.03)

    # Pixel data damaged behind an intact header is bad input, never an unexpected exception.
    damaged = bytearray(_encode(Image.fromarray(scene), "PNG"))
    start = damaged.find(b"IDAT") + 20
    damaged[start : start + 40] = bytes(b ^ 0x5A for b in damaged[start : start + 40])
    with pytest.raises(PikFixInputError) as err:
        check_reference_colour_file(io.BytesIO(bytes(damaged)), "png")
    assert err.value.code == "corrupt_image"


def test_large_corpus_is_shortlisted_by_the_sketch_and_finds_the_exact_best() -> None:
    """Above EXACT_MAX a query scores only a sketch shortlist; near-duplicates are still found first,
    with their exact scores, and references added or removed after the sketch
    was fitted are found or gone at once."""
    from pikfix import retrieval

    n = retrieval.EXACT_MAX + 2000
    descriptors = random_descriptors(SMALL, n, seed=3)
    index = ReferenceIndex(SMALL)
    ids = [f"r{i}" for i in range(n)]
    index.add(ids, descriptors)
    rng = np.random.default_rng(4)
    for j in rng.choice(n, size=20, replace=False):
        query = (descriptors[j] * (1 + rng.normal(0, 0.02, descriptors[j].shape))).astype(np.float32)
        best = index.query(query, k=5)
        exact = index.score_all(query)
        assert best[0].id == ids[j] == exact.ids[int(np.argmax(exact.total))]
        for cand in best:  # shortlisted candidates carry their exact scores
            assert cand.total == pytest.approx(float(exact.total[ids.index(cand.id)]), abs=1e-5)
    assert index._sketch is not None  # the shortlist path ran
    late = random_descriptors(SMALL, 1, seed=99)
    index.add(["late"], late)
    assert index.query(late[0], k=1)[0].id == "late"
    index.remove("late")
    assert index.query(late[0], k=1)[0].id != "late"
