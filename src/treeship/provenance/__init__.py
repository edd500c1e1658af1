"""Provenance manifests (schema ``treeship.provenance/v1``): load, validate, render."""

from .manifest import (
    METADATA_KEY,
    SCHEMA_ID,
    Manifest,
    dumps_json,
    dumps_yaml,
    load_file,
    parse_stored,
    render_text,
    validate,
)

__all__ = [
    "METADATA_KEY",
    "SCHEMA_ID",
    "Manifest",
    "dumps_json",
    "dumps_yaml",
    "load_file",
    "parse_stored",
    "render_text",
    "validate",
]
