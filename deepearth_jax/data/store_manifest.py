"""The store's format names and what its manifest may say: every field's type, checked when a store opens.

`store.py` opens stores and re-exports these names; `store_writer` writes manifests that satisfy
`check_manifest`, and `store_check` verifies the bytes they describe.
"""

from __future__ import annotations

from pathlib import Path

from deepearth_jax.errors import StoreError

FORMAT_NAME = "deepearth-store"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
OBSERVATIONS_FILE = "observations.parquet"
SPECIES_FILE = "species.parquet"
VISION_FILE = "vision.npy"
LANGUAGE_FILE = "language.npy"
FEATURES_DIR = "features"


_ARRAY_FILES = {"vision": VISION_FILE, "language": LANGUAGE_FILE}
_ARRAY_DTYPES = {"vision": ("float16", "float32"), "language": ("float32",)}
_COUNTS = ("observations", "species", "vision_rows", "language_rows", "observations_with_vision")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def field_error(manifest_path: Path, field_name: str, expected: str, value: object) -> StoreError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return StoreError(f"{manifest_path}: field {field_name} must be {expected}, got {shown}")


def _check_array_entry(manifest_path: Path, name: str, info: object) -> None:
    where = f"arrays.{name}"
    if name not in _ARRAY_FILES:
        raise StoreError(f"{manifest_path}: unknown array {name!r} (a store holds vision and language)")
    if not isinstance(info, dict):
        raise field_error(manifest_path, where, "an object", info)
    if info.get("file") != _ARRAY_FILES[name]:
        raise field_error(manifest_path, f"{where}.file", repr(_ARRAY_FILES[name]), info.get("file"))
    shape = info.get("shape")
    if not isinstance(shape, list) or not shape or not all(_is_count(s) for s in shape):
        raise field_error(manifest_path, f"{where}.shape", "a list of sizes", shape)
    if info.get("dtype") not in _ARRAY_DTYPES[name]:
        raise field_error(
            manifest_path, f"{where}.dtype", " or ".join(_ARRAY_DTYPES[name]), info.get("dtype")
        )
    sums = info.get("checksums")
    if not (
        isinstance(sums, dict)
        and isinstance(sums.get("header_sha256"), str)
        and _is_count(sums.get("rows_per_chunk"))
        and isinstance(sums.get("chunk_sha256"), list)
        and all(isinstance(c, str) for c in sums["chunk_sha256"])
    ):
        raise field_error(
            manifest_path, f"{where}.checksums", "header_sha256, rows_per_chunk, chunk_sha256", sums
        )


def check_manifest(manifest: dict, manifest_path: Path) -> None:
    """Raises StoreError naming the first field of a complete manifest that has the wrong type."""
    counts = manifest.get("counts")
    if not isinstance(counts, dict):
        raise field_error(manifest_path, "counts", "an object", counts)
    for key in _COUNTS:
        if not _is_count(counts.get(key)):
            raise field_error(manifest_path, f"counts.{key}", "a count (an integer >= 0)", counts.get(key))
    observation_only = manifest.get("observation_only", False)
    if not isinstance(observation_only, bool):
        raise field_error(manifest_path, "observation_only", "true or false", observation_only)
    arrays = manifest.get("arrays")
    if observation_only:
        if arrays != {}:
            raise field_error(manifest_path, "arrays", "{} in an observation-only store", arrays)
        for key in ("vision_rows", "language_rows", "observations_with_vision"):
            if counts[key] != 0:
                raise field_error(
                    manifest_path, f"counts.{key}", "0 in an observation-only store", counts[key]
                )
    elif not isinstance(arrays, dict) or "language" not in arrays:
        raise field_error(
            manifest_path, "arrays", "an object with a language entry (or observation_only: true)", arrays
        )
    for name, info in arrays.items():
        _check_array_entry(manifest_path, name, info)
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted((OBSERVATIONS_FILE, SPECIES_FILE)):
        raise field_error(manifest_path, "files", f"sha256 of {OBSERVATIONS_FILE} and {SPECIES_FILE}", files)
    if not all(isinstance(v, str) for v in files.values()):
        raise field_error(manifest_path, "files", "sha256 strings", files)
    for key, kind, expected in (("skipped", list, "a list"), ("features", dict, "an object")):
        if not isinstance(manifest.get(key, kind()), kind):
            raise field_error(manifest_path, key, expected, manifest.get(key))
