"""Per-process resources of a worker: settings, object store, the model and the retrieval extractor.

Loaded once per worker process (in ``worker_process_init``, never in the prefork parent, so CUDA is only
ever initialised in the child that uses it) and reused for every job that process runs.

``PIKFIX_CHECKPOINT=null`` builds ``pikfix.null_model.NullRestorer`` instead of loading a checkpoint:
a model that does no work, for benchmarking the service's own overhead and for smoke tests of a
deployment. Jobs it runs record ``model_name="null"`` and an all-zero checkpoint hash.
"""

from __future__ import annotations

import logging
import socket
import threading
from functools import cached_property

from pikfix.uri import configure_s3
from service.settings import Settings, get_settings
from storage import ObjectStore, open_store

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings | None = None, hostname: str | None = None) -> None:
        self.settings = settings or get_settings()
        configure_s3(**self.settings.s3_client_options)  # checkpoints and weights may be s3:// URIs
        self.hostname = hostname or socket.gethostname()
        self._lock = threading.Lock()

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.settings.resolved_storage_url, settings=self.settings)

    @cached_property
    def database_url(self) -> str:
        return self.settings.resolved_database_url

    @cached_property
    def restorer(self):
        from pikfix.null_model import NullRestorer, is_null_checkpoint

        if is_null_checkpoint(self.settings.checkpoint):
            log.warning("PIKFIX_CHECKPOINT=null: the null model returns photos unrestored (benchmarks, smoke tests)")
            return NullRestorer(working_size=self.settings.working_size, max_pixels=self.settings.max_image_pixels)

        from pikfix.inference import Restorer

        with self._lock:
            restorer = Restorer.from_checkpoint(
                self.settings.checkpoint, device=self.settings.device, working_size=self.settings.working_size,
                max_pixels=self.settings.max_image_pixels)
        log.info("model %s (%s) loaded on %s", restorer.model_name, restorer.checkpoint_sha256[:12], restorer.device)
        return restorer

    @cached_property
    def extractor(self):
        from pikfix.retrieval import DescriptorExtractor

        return DescriptorExtractor(weights=self.settings.retrieval_weights, device="cpu")


_runtime: WorkerRuntime | None = None


def get_runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime()
    return _runtime


def set_runtime(runtime: WorkerRuntime | None) -> None:
    """Replace the process runtime (the embedded runner uses its own settings)."""
    global _runtime
    _runtime = runtime
