"""Reinhard colour transfer and ``pikfix eval``: statistics matched, JSON report, fp16 shipping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pikfix.checkpoint import load_checkpoint, save_checkpoint
from pikfix.color import rgb_to_lab_np
from pikfix.colortransfer import lab_statistics, reinhard_colorize, reinhard_transfer, transfer_lab
from pikfix.config import PikFixConfig
from pikfix.evaluate import METHODS, _scores, photo_seed
from pikfix.metrics import ciede2000
from pikfix.model import PikFix
from service.cli import main


def scene(seed: int, tint: tuple[float, float, float], size: tuple[int, int] = (72, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.5 + 0.3 * np.sin(x / (7.0 + seed)) * np.cos(y / 11.0)
    img = base[..., None] * np.asarray(tint, np.float32) + rng.normal(0, 0.03, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 1)


def save(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(path)
    return path


def test_reinhard_matching_gives_the_reference_channel_means_and_stds() -> None:
    source = rgb_to_lab_np(scene(1, (0.9, 0.6, 0.3)))
    reference = rgb_to_lab_np(scene(2, (0.3, 0.6, 0.9), size=(60, 80)))
    out = transfer_lab(source, reference)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), reference.reshape(-1, 3).mean(0), atol=1e-3)
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), reference.reshape(-1, 3).std(0), rtol=1e-4)
    # and it really moved: the source's statistics were far from the reference's
    assert np.abs(source.reshape(-1, 3).mean(0)[1:] - reference.reshape(-1, 3).mean(0)[1:]).max() > 10


def test_reinhard_transfer_on_rgb_matches_within_the_gamut() -> None:
    source = scene(1, (0.7, 0.55, 0.45))  # moderate colours: the result stays in the sRGB gamut
    reference = scene(2, (0.45, 0.55, 0.65), size=(60, 80))
    out = reinhard_transfer(source, reference)
    assert out.shape == source.shape and out.dtype == np.float32
    mean_out, std_out = lab_statistics(out)
    mean_ref, std_ref = lab_statistics(reference)
    np.testing.assert_allclose(mean_out, mean_ref, atol=0.5)  # Lab units (L in 0..100)
    np.testing.assert_allclose(std_out, std_ref, rtol=0.05, atol=0.3)


def test_reinhard_colorize_keeps_the_luminance_and_takes_the_mean_chroma() -> None:
    lum = np.linspace(0.2, 0.8, 48 * 64, dtype=np.float32).reshape(48, 64)
    reference = scene(3, (0.9, 0.5, 0.2))
    out = reinhard_colorize(lum, reference)
    lab = rgb_to_lab_np(out)
    np.testing.assert_allclose(lab[..., 0] / 100.0, lum, atol=2e-3)
    mean_ref, _ = lab_statistics(reference)
    assert np.abs(lab[..., 1].mean() - mean_ref[1]) < 1.0 and np.abs(lab[..., 2].mean() - mean_ref[2]) < 1.0
    assert lab[..., 1:].std(axis=(0, 1)).max() < 1.0  # a grey input gets one tint, as Reinhard can only do
    with pytest.raises(ValueError):
        reinhard_colorize(np.zeros((4, 4, 3), np.float32), reference)


def test_photo_seed_depends_only_on_seed_and_name() -> None:
    assert photo_seed(0, "a.jpg") == photo_seed(0, "a.jpg")
    assert photo_seed(0, "a.jpg") != photo_seed(1, "a.jpg") != photo_seed(0, "b.jpg")


def test_eval_writes_a_report_with_all_methods_and_ships_an_fp16_copy(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    photos, refs = tmp_path / "photos", tmp_path / "refs"
    photos.mkdir()
    refs.mkdir()
    first = save(photos / "one.png", scene(10, (0.8, 0.5, 0.3)))
    save(photos / "two.png", scene(11, (0.3, 0.7, 0.4)))
    (refs / "copy_of_one.png").write_bytes(first.read_bytes())  # must never be its own reference
    save(refs / "warm.png", scene(12, (0.9, 0.4, 0.2)))
    save(refs / "green.png", scene(13, (0.2, 0.8, 0.3)))
    report_path, shipped = tmp_path / "report.json", tmp_path / "weights" / "shipped.pt"

    code = main([
        "eval", "--photos", str(photos), "--references", str(refs), "--checkpoint", str(tiny_checkpoint),
        "--out", str(report_path), "--seed", "0", "--threads", "1", "--ship-to", str(shipped),
        "--ship-tolerance", "0.5",
    ])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["count"] == 2 and [r["name"] for r in report["images"]] == ["one.png", "two.png"]
    for row in report["images"]:
        for method in METHODS:
            assert 0 < row[method]["psnr"] < 100 and -1 <= row[method]["ssim"] <= 1
        lum = row["luminance"]
        assert lum["gain_db"] == pytest.approx(lum["restored_psnr"] - lum["input_psnr"])
        assert row["reference"] in {"warm.png", "green.png"}  # the identical file was excluded
    for method in (*METHODS, "luminance"):
        assert set(report["mean"][method]) == set(report["images"][0][method])
        key = "psnr" if method != "luminance" else "gain_db"
        assert report["mean"][method][key] == pytest.approx(np.mean([r[method][key] for r in report["images"]]))
    assert set(report["goal"]) == {"beats_grey", "beats_reinhard", "luminance_gain_at_least_3db", "cast_within_3"}
    assert report["checkpoint"]["sha256"] == load_checkpoint(tiny_checkpoint).sha256

    # shipped copy: fp16 tensors, its own report beside it, quality within the tolerance
    payload = torch.load(shipped, weights_only=True)
    floats = [v for v in payload["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    half_report = json.loads(shipped.with_suffix(".eval.json").read_text())
    assert half_report["fp16_check"]["fp32_sha256"] == report["checkpoint"]["sha256"]
    assert abs(half_report["fp16_check"]["psnr_loss_db"]) <= 0.5
    # the same degraded inputs and references were used for both evaluations
    assert [r["reference"] for r in half_report["images"]] == [r["reference"] for r in report["images"]]
    assert half_report["images"][0]["grey"] == report["images"][0]["grey"]


def test_ciede2000_matches_scikit_image_and_sharmas_reference_pairs() -> None:
    from skimage.color import deltaE_ciede2000

    rng = np.random.default_rng(3)
    a = np.stack([rng.uniform(0, 100, 5000), rng.uniform(-90, 90, 5000), rng.uniform(-90, 90, 5000)], -1)
    b = a + rng.normal(0, 8, a.shape)
    b[:50, 1:] = 0.0  # achromatic colours: the hue conventions matter here
    a[25:75, 1:] = 0.0
    np.testing.assert_allclose(ciede2000(a, b), deltaE_ciede2000(a, b), atol=1e-9)
    # Sharma, Wu and Dalal (2005), table 1, pairs 1 and 7.
    assert ciede2000(np.array([50, 2.6772, -79.7751]), np.array([50, 0, -82.7485])) == pytest.approx(2.0425, abs=1e-4)
    assert ciede2000(np.array([50, 0, 0]), np.array([50, -1, 2])) == pytest.approx(2.3669, abs=1e-4)


def test_eval_colour_scores_agree_with_scikit_image() -> None:
    from skimage.color import deltaE_ciede2000, rgb2lab

    truth = scene(1, (0.3, 0.7, 0.4))
    output = np.clip(truth * np.array([1.1, 0.9, 1.0], np.float32), 0, 1)  # a magenta-ish cast
    truth_lab = rgb_to_lab_np(truth)
    scores = _scores(output, truth, truth_lab)
    lab_out, lab_truth = rgb2lab(output.astype(np.float64)), rgb2lab(truth.astype(np.float64))
    assert scores["ciede2000"] == pytest.approx(deltaE_ciede2000(lab_out, lab_truth).mean(), rel=1e-3)
    assert scores["cast_a"] == pytest.approx((lab_out[..., 1] - lab_truth[..., 1]).mean(), abs=0.05)
    assert scores["cast_b"] == pytest.approx((lab_out[..., 2] - lab_truth[..., 2]).mean(), abs=0.05)
    assert scores["cast_a"] > 1.0  # more red, less green: a* rises


def test_eval_upscale_and_against_compare_two_checkpoints_on_the_same_photos(
    tmp_path: Path, capsys, tiny_checkpoint: Path
) -> None:
    photos, refs = tmp_path / "photos", tmp_path / "refs"
    photos.mkdir()
    refs.mkdir()
    save(photos / "one.png", scene(10, (0.8, 0.5, 0.3)))
    save(refs / "green.png", scene(13, (0.2, 0.8, 0.3)))
    first, second = str(tiny_checkpoint), tmp_path / "b.pt"
    torch.manual_seed(1)  # other weights than the shared tiny checkpoint's
    save_checkpoint(second, PikFix(PikFixConfig.tiny()).eval(), {"training_steps": 0})
    out = tmp_path / "report.json"
    code = main(["eval", "--photos", str(photos), "--references", str(refs), "--checkpoint", first,
                 "--against", str(second), "--upscale", "3", "--out", str(out), "--threads", "1"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["upscale"] == 3
    against = report["against"]
    assert against["incumbent"]["sha256"] == load_checkpoint(second).sha256
    assert isinstance(against["candidate_wins"], bool)
    assert ("wins" if against["candidate_wins"] else "does not win") in capsys.readouterr().out
    assert main(["eval", "--photos", str(photos), "--references", str(refs), "--upscale", "0"]) == 2


def test_eval_names_pick_photos_and_the_contact_sheet_has_a_row_each(tmp_path: Path, tiny_checkpoint: Path) -> None:
    photos, refs = tmp_path / "photos", tmp_path / "refs"
    photos.mkdir()
    refs.mkdir()
    for i, tint in enumerate([(0.8, 0.5, 0.3), (0.3, 0.7, 0.4), (0.5, 0.5, 0.8)]):
        save(photos / f"p{i}.png", scene(20 + i, tint))
    save(refs / "green.png", scene(13, (0.2, 0.8, 0.3)))
    sheet, out = tmp_path / "sheet.jpg", tmp_path / "report.json"
    args = ["eval", "--photos", str(photos), "--references", str(refs), "--checkpoint", str(tiny_checkpoint),
            "--threads", "1", "--out", str(out)]
    assert main([*args, "--names", "p0.png,p2.png", "--contact-sheet", str(sheet)]) == 0
    assert [r["name"] for r in json.loads(out.read_text())["images"]] == ["p0.png", "p2.png"]
    with Image.open(sheet) as image:
        # two rows of four tiles, 180 px high with a 4 px gap; every tile is as wide as the photo's aspect says
        assert image.height == 2 * 180 + 4
        grid = np.asarray(image.convert("L"), np.float32)
    assert grid[:180].std() > 5 and grid[184:].std() > 5  # both rows hold pictures, not blank canvas
    assert main([*args, "--names", "nope.png"]) == 2  # a name not in the split is an error, not an empty run
