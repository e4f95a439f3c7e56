"""Errors a caller can act on: bad input, each with a stable machine-readable code.

The job system stores ``code`` on a failed job and the HTTP API returns it, so codes are part of the
public contract: never rename one, only add. Bad input is never retried (it would fail again), which is
why it has its own exception type, distinct from transient storage or device errors.
"""

from __future__ import annotations

ERROR_CODES: dict[str, str] = {
    "empty_file": "the upload has zero bytes",
    "not_an_image": "the bytes are not an image (text, HTML, PDF, an archive, ...)",
    "unsupported_format": "an image format this service does not decode (PSD, HEIF, ...)",
    "unsupported_mode": "an image format we decode but a pixel layout we do not",
    "truncated_image": "the file ends before the image data does",
    "too_many_pixels": "the image is larger than the configured pixel limit (decompression-bomb guard)",
    "corrupt_image": "the image header or data is damaged",
    "bad_reference": "the colour reference photo could not be used",
    "image_too_small": "the image is too small to restore (under 8 pixels on a side)",
}


class PikFixInputError(ValueError):
    """The input cannot be processed; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown input error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self):  # keep code and message across pickling (multiprocessing, Celery)
        return (type(self), (self.code, self.message))

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
