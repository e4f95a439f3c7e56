"""How a restored photo is labelled: the IPTC terms and the sentences people and machines read.

One place decides what an output says about itself, so the file's XMP, the visible corner mark, the
IIIF manifest and the batch report never disagree. Everything here is a pure function of the
provenance record (``Restorer.provenance`` plus the pipeline's ``source_sha256``/``source_name``);
values may be Python objects or the strings ``read_provenance`` returns from a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pikfix import __version__

IPTC_EXT_NAMESPACE = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
DC_NAMESPACE = "http://purl.org/dc/elements/1.1/"
_DIGITAL_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# A real photo improved by an algorithm: restoration only, the tones are the photo's own.
ALGORITHMICALLY_ENHANCED = _DIGITAL_SOURCE_TYPES + "algorithmicallyEnhanced"
# A real photo combined with what a trained model made up: the colours are the model's estimate.
COMPOSITE_WITH_TRAINED_MEDIA = _DIGITAL_SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"

Provenance = Mapping[str, Any] | None


def _flag(value: Any) -> bool:
    """A boolean as written by the restorer (True) or read back from XMP ("true")."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _text(provenance: Provenance, key: str) -> str | None:
    value = (provenance or {}).get(key)
    if value is None or value == "null":
        return None
    text = str(value).strip()
    return text or None


def is_colourized(provenance: Provenance) -> bool:
    """Whether the output carries colour the model added (records older than the ``colourized`` key
    were colourized exactly when a reference was used)."""
    record = provenance or {}
    return _flag(record["colourized"] if "colourized" in record else record.get("reference_used"))


def digital_source_type(provenance: Provenance) -> str:
    """The IPTC Digital Source Type term (a URI) of the output."""
    return COMPOSITE_WITH_TRAINED_MEDIA if is_colourized(provenance) else ALGORITHMICALLY_ENHANCED


def software_version(provenance: Provenance) -> str:
    """The pikfix version that made the output (``software`` is "pikfix X.Y.Z")."""
    software = _text(provenance, "software") or ""
    return software.removeprefix("pikfix").strip() or __version__


def ai_system_used(provenance: Provenance) -> str:
    """IPTC ``AISystemUsed``: the system and the model that made the output."""
    return f"pikfix Pik-Fix {_text(provenance, 'model') or 'unknown model'}"


def ai_system_version_used(provenance: Provenance) -> str:
    """IPTC ``AISystemVersionUsed``: the software version and the exact weights (checkpoint SHA-256)."""
    checkpoint = _text(provenance, "checkpoint_sha256") or "unknown"
    return f"pikfix {software_version(provenance)}; checkpoint sha256:{checkpoint}"


def iptc_fields(provenance: Provenance) -> dict[str, str]:
    """The IPTC Extension properties (local names) every output carries."""
    return {
        "DigitalSourceType": digital_source_type(provenance),
        "AISystemUsed": ai_system_used(provenance),
        "AISystemVersionUsed": ai_system_version_used(provenance),
    }


def _source_phrase(provenance: Provenance) -> str:
    name, digest = _text(provenance, "source_name"), _text(provenance, "source_sha256")
    if name and digest:
        return f"from the source file {name} (SHA-256 {digest})"
    if digest:
        return f"from the source file with SHA-256 {digest}"
    if name:
        return f"from the source file {name}"
    return "from an unidentified source file"


def describe(provenance: Provenance) -> str:
    """The sentence saying what was done and to which file, for ``dc:description`` and for people."""
    system = (
        f"pikfix {software_version(provenance)} (model {_text(provenance, 'model') or 'unknown'}, "
        f"checkpoint SHA-256 {_text(provenance, 'checkpoint_sha256') or 'unknown'})"
    )
    source = _source_phrase(provenance)
    if is_colourized(provenance):
        reference = _text(provenance, "reference_id")
        colours = f"reference photo {reference}" if reference else "a reference photo"
        return (
            f"AI-colourized copy: restored and colourized by {system} {source}, with colours transferred "
            f"from {colours}; the colours are the model's estimate, not a record of the original. "
            "The source file was not modified."
        )
    return f"AI-restored copy: restored by {system} {source}, kept in grey. The source file was not modified."


def mark_text(provenance: Provenance) -> str:
    """The short text of the visible corner mark; it names the same kind as ``digital_source_type``."""
    return "AI-colourized · pikfix" if is_colourized(provenance) else "AI-restored · pikfix"


__all__ = [
    "ALGORITHMICALLY_ENHANCED",
    "COMPOSITE_WITH_TRAINED_MEDIA",
    "DC_NAMESPACE",
    "IPTC_EXT_NAMESPACE",
    "ai_system_used",
    "ai_system_version_used",
    "describe",
    "digital_source_type",
    "iptc_fields",
    "is_colourized",
    "mark_text",
    "software_version",
]
