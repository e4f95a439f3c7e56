"""Benchmark reference choice through the worker path with a large corpus (issue goal: <= 20 ms per job
beyond describing the photo at 100,000 references; a new reference usable within seconds).

A fresh PostgreSQL database and moto S3 hold a tenant with N indexed references (random descriptors of
the real layout, all pointing at one stored colour photo, so the chosen one loads like a real one).
``workers.references.choose_reference`` runs as a worker runs it, in this process:
- cold: the first job of the process, which reads the corpus once;
- warm: later jobs, timed whole and split into the index refresh + query and the load of the chosen
  reference (S3 GET, decode, colour check); the photo's own description is timed apart and subtracted;
- before: the previous code path in the same run (every job read every descriptor, then exact scoring);
- freshness: a reference indexed while jobs run, seconds until a job chooses it;
- recall: how often the shortlist's best is the exact best, on the random corpus and on descriptors of
  real photos (samples/ and, where present, the shared photo corpus) at the same shortlist fraction.

    python bench/reference_choice.py [--references 100000] [--jobs 30]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import LoadSampler, machine_info, service_stack, write_results  # noqa: E402
from bench.retrieval import PHOTO_DIRS, random_descriptors  # noqa: E402

INSERT_CHUNK = 5000
REAL_PHOTOS = 120  # photos described for the real-descriptor recall (five views each)


def populate(database_url: str, tenant_id: str, key: str, descriptors: np.ndarray) -> None:
    """N indexed reference rows, inserted in chunks with SQLAlchemy Core."""
    from sqlalchemy import insert

    from db.models import REF_INDEXED, Reference, new_id, utcnow
    from db.session import session_scope
    from workers.references import encode_descriptor

    now = utcnow() - timedelta(minutes=5)
    for start in range(0, len(descriptors), INSERT_CHUNK):
        rows = [
            {
                "id": new_id(), "tenant_id": tenant_id, "name": f"ref{i}.jpg", "object_key": key,
                "sha256": hashlib.sha256(str(i).encode()).hexdigest(), "status": REF_INDEXED,
                "descriptor": encode_descriptor(descriptors[i]), "created_at": now, "indexed_at": now,
            }
            for i in range(start, min(len(descriptors), start + INSERT_CHUNK))
        ]
        with session_scope(database_url) as s:
            s.execute(insert(Reference), rows)


def add_reference(database_url: str, tenant_id: str, key: str, descriptor: np.ndarray) -> str:
    from db.models import REF_INDEXED, Reference, utcnow
    from db.session import session_scope
    from workers.references import encode_descriptor

    with session_scope(database_url) as s:
        ref = Reference(tenant_id=tenant_id, name="new.jpg", object_key=key, sha256="f" * 64,
                        status=REF_INDEXED, descriptor=encode_descriptor(descriptor), indexed_at=utcnow())
        s.add(ref)
        s.flush()
        return ref.id


def old_path(runtime, tenant_id: str, query: np.ndarray) -> float:
    """The previous per-job cost: read every descriptor, build the index, score it exactly."""
    from db import repository as repo
    from db.session import session_scope
    from workers.references import decode_descriptor

    started = time.perf_counter()
    with session_scope(runtime.database_url) as s:
        rows = repo.indexed_descriptors(s, tenant_id)
    index = runtime.extractor.new_index()
    index.add([r for r, _ in rows], np.stack([decode_descriptor(b) for _, b in rows]))
    index.score_all(query)
    return time.perf_counter() - started


def recall(index, queries: np.ndarray) -> float:
    """Share of queries whose returned best is the exact best."""
    hits = 0
    for q in queries:
        scores = index.score_all(q)
        hits += index.query(q, k=1)[0].id == scores.ids[int(np.argmax(scores.total))]
    return hits / len(queries)


def real_photo_recall(extractor, fraction: float, count: int) -> dict:
    """Recall on descriptors of real photos (four crops and a mirror of each), the shortlist cut to the
    same fraction of the corpus as at 100,000 references."""
    from PIL import Image

    from pikfix import retrieval

    paths = [p for folder in PHOTO_DIRS if folder.is_dir() for p in sorted(folder.glob("*.jpg"))][:count]
    images = []
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            for box in ((0, 0, w * 3 // 4, h * 3 // 4), (w // 4, h // 4, w, h), (0, h // 4, w * 3 // 4, h),
                        (w // 4, 0, w, h * 3 // 4)):
                images.append(np.asarray(im.crop(box).resize((224, 224))))
            images.append(np.asarray(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((224, 224))))
    descriptors = extractor.describe_batch(images)
    index = extractor.new_index()
    index.add([f"p{i}" for i in range(len(descriptors))], descriptors)
    saved = retrieval.EXACT_MAX, retrieval.SHORTLIST
    retrieval.EXACT_MAX, retrieval.SHORTLIST = 0, max(5, round(fraction * len(descriptors)))
    try:
        rng = np.random.default_rng(1)
        picked = rng.choice(len(descriptors), size=min(200, len(descriptors)), replace=False)
        # leave-one-out: each query's own descriptor is removed, so the answer is another photo
        hits = 0
        for j in picked:
            index.remove(f"p{j}")
            hits += recall(index, descriptors[j][None])
            index.add([f"p{j}"], descriptors[j][None])
        return {"photos": len(paths), "descriptors": len(descriptors), "shortlist": retrieval.SHORTLIST,
                "queries": len(picked), "recall_at_1": hits / len(picked)}
    finally:
        retrieval.EXACT_MAX, retrieval.SHORTLIST = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--real-photos", type=int, default=REAL_PHOTOS,
                        help="photos described for the real-descriptor recall (0: skip it)")
    args = parser.parse_args()

    from db import repository as repo
    from db.session import session_scope
    from pikfix import imageio, retrieval
    from service.settings import Settings
    from workers import references
    from workers.runtime import WorkerRuntime

    sample = sorted((ROOT / "samples" / "references").glob("*.jpg"))[0].read_bytes()
    with service_stack() as stack, LoadSampler() as load:
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith(("PIKFIX_", "AWS_"))})
        runtime = WorkerRuntime(Settings())
        with session_scope(stack.database_url) as s:
            tenant_id = repo.create_tenant(s, "bench").id
        key = f"references/{tenant_id}/bench.jpg"
        runtime.store.put_bytes(key, sample, content_type="image/jpeg")
        rng = np.random.default_rng(0)
        corpus = random_descriptors(runtime.extractor.layout, args.references, rng)
        t0 = time.perf_counter()
        populate(stack.database_url, tenant_id, key, corpus)
        print(f"{args.references} references inserted in {time.perf_counter() - t0:.0f} s")

        photo = imageio.decode_image(sample)
        query = runtime.extractor.describe(photo.rgb)
        describe_s = statistics.median(
            _timed(lambda: runtime.extractor.describe(photo.rgb)) for _ in range(5))

        def job() -> tuple[float, object]:
            started = time.perf_counter()
            chosen = references.choose_reference(runtime, tenant_id, photo, "auto", None)
            return time.perf_counter() - started, chosen

        cold_s, chosen = job()
        print(f"cold job {cold_s:.2f} s", flush=True)
        assert chosen.source == "retrieval", chosen
        warm, lookup, load_ref = [], [], []
        for _ in range(args.jobs):
            total, _ = job()
            warm.append(total)
            lookup.append(_timed(lambda: references.INDEX_CACHE.get(runtime, tenant_id).query(query, k=5)))
            load_ref.append(_timed(lambda: references._usable_reference(runtime, tenant_id, chosen.reference_id)))
        print(f"warm jobs {statistics.median(warm) * 1e3:.1f} ms", flush=True)
        before = [old_path(runtime, tenant_id, query) for _ in range(3)]
        print(f"before {statistics.median(before):.2f} s", flush=True)

        new_id = add_reference(stack.database_url, tenant_id, key, query)
        added = time.perf_counter()
        while job()[1].reference_id != new_id:
            if time.perf_counter() - added > 60:
                raise SystemExit("a new reference was not chosen within 60 s")
            time.sleep(0.1)
        fresh_s = time.perf_counter() - added
        print(f"new reference chosen after {fresh_s:.1f} s", flush=True)

        index = references.INDEX_CACHE.get(runtime, tenant_id)
        random_recall = recall(index, random_descriptors(runtime.extractor.layout, 100, np.random.default_rng(7)))
    real = (real_photo_recall(runtime.extractor, retrieval.SHORTLIST / args.references, args.real_photos)
            if args.real_photos else {"recall_at_1": float("nan"), "skipped": True})

    warm_s = statistics.median(warm)
    result = {
        "references": args.references,
        "describe_s": describe_s,
        "cold_job_s": cold_s,
        "warm_job_s": warm_s,
        "warm_job_beyond_describe_s": warm_s - describe_s,
        "index_refresh_and_query_s": statistics.median(lookup),
        "load_chosen_reference_s": statistics.median(load_ref),
        "before_per_job_s": statistics.median(before),
        "new_reference_usable_after_s": fresh_s,
        "shortlist": retrieval.SHORTLIST,
        "exact_max": retrieval.EXACT_MAX,
        "recall_at_1_random_corpus": random_recall,
        "recall_at_1_real_photos": real,
        "load": load.summary(),
        "machine": machine_info(),
    }
    path = write_results("reference_choice", result)
    print(f"describe {describe_s * 1e3:.0f} ms; cold job {cold_s:.2f} s; warm job {warm_s * 1e3:.1f} ms "
          f"({(warm_s - describe_s) * 1e3:.1f} ms beyond describing: index {result['index_refresh_and_query_s'] * 1e3:.1f} ms, "
          f"loading the chosen reference {result['load_chosen_reference_s'] * 1e3:.1f} ms); "
          f"before {result['before_per_job_s']:.2f} s per job; new reference usable after {fresh_s:.1f} s; "
          f"recall@1 random {random_recall:.2f}, real photos {real['recall_at_1']:.2f} -> {path}")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
