"""The client's pure parts, no servers: imports (never torch), names, folder scan, paths, retries."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from conftest import CLIENT_SRC, jpeg
from pikfix_client.fetch import content_digest_sha256, plan_paths
from pikfix_client.http import RetryPolicy, retry_after_s, with_retries
from pikfix_client.names import MAX_NAME, decode_name, encode_name
from pikfix_client.scan import scan_folder
from pikfix_client.submit import _names_in, content_digest

FORBIDDEN = ("torch", "numpy", "pikfix", "api", "db", "workers", "storage", "service", "PIL")


def test_importing_the_client_and_its_cli_never_imports_torch_or_the_service():
    probe = (
        "import json, sys\n"
        "import pikfix_client, pikfix_client.cli, pikfix_client.fetch\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps(bad))\n"
    )
    env = {"PYTHONPATH": str(CLIENT_SRC), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60,
                         cwd=CLIENT_SRC)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("rel", ["a/b.jpg", "box 1/scan-001.jpg", "_x/.y_", "Ünïcödé/写真.tif", "a--2f.png"])
def test_names_survive_the_apis_sanitising_and_map_back(rel):
    name = encode_name(rel)
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in name)
    assert name[0] not in "._" and name[-1] not in "._"
    assert decode_name(name) == rel
    assert encode_name(rel).rsplit(".", 1)[-1] == rel.rsplit(".", 1)[-1] or not rel.endswith(("jpg", "tif", "png"))


def test_folder_scan_says_why_each_file_is_skipped(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "ok.jpg").write_bytes(jpeg(16, 16, 1))
    (tmp_path / "cut.jpg").write_bytes(jpeg(16, 16, 2)[:100])
    (tmp_path / "text.png").write_bytes(b"hello")
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / ".pikfix-submit.sqlite").write_bytes(b"state")
    (tmp_path / ("x" * (MAX_NAME + 5) + ".jpg")).write_bytes(jpeg(16, 16, 3))
    found, skipped = scan_folder(tmp_path)
    assert [c.rel for c in found] == ["deep/er/ok.jpg"]
    reasons = {s.path: s.reason.split(" (")[0] for s in skipped}
    assert reasons == {
        ".DS_Store": "hidden file", "cut.jpg": "truncated JPEG", "empty.tif": "empty file",
        "notes.txt": "not a photo or .zip archive by its extension", "text.png": "not an image",
        "x" * (MAX_NAME + 5) + ".jpg": "path too long to name",
    }


def test_result_paths_mirror_inputs_and_never_collide():
    jobs = [
        {"id": "1", "input_name": encode_name("box/a.jpg"), "output_format": "png"},
        {"id": "2", "input_name": encode_name("box/a.tif"), "output_format": "png"},
        {"id": "3", "input_name": encode_name("../escape.jpg"), "output_format": "jpeg"},
        {"id": "4", "input_name": "album.zip-member/z/z1.png", "output_format": "tiff16"},
    ]
    assert plan_paths(jobs) == {"1": "box/a.png", "2": "box/a.tif.png", "3": "job-3.jpg",
                                "4": "album.zip-member/z/z1.tif"}


def test_digest_headers_round_trip():
    sha = "ab" * 32
    assert content_digest_sha256(httpx.Headers({"Content-Digest": f"md5=:x:, {content_digest(sha)}"})) == sha
    assert content_digest_sha256(httpx.Headers({})) is None


def test_retries_honour_retry_after_and_give_up_with_the_last_answer(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("pikfix_client.http.time.sleep", slept.append)
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(503), httpx.Response(200)])
    assert with_retries(lambda: next(answers), RetryPolicy(attempts=5, base_s=1, cap_s=2), "x").status_code == 200
    assert slept[0] == 7 and 0 <= slept[1] <= 2
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "9999"}), 300) == 300
    last = with_retries(lambda: httpx.Response(502), RetryPolicy(attempts=2, base_s=0), "x")
    assert last.status_code == 502


def test_names_to_send_again_come_from_either_error_shape():
    assert _names_in({"name": "a.jpg", "expected": "00", "received": "11"}) == ["a.jpg"]
    assert _names_in(["a.jpg", {"name": "b.jpg"}]) == ["a.jpg", "b.jpg"]
    assert _names_in(None) == []
