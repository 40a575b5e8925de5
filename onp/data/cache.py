"""Decode once, then load the decoded uint8 arrays from an ``.npz`` cache.

Decoding 60,000 JPEGs or 50,000 PPMs out of a tarball takes tens of seconds; loading the same
arrays from an uncompressed ``.npz`` takes well under a second. A cache entry is named by the
dataset name, the split and a hash of the full key (name, resolved root path, options, and the
size and modification time of the root when it is a file, or a fingerprint of its listing when it
is a folder: every file's path, size and modification time), and stores the key so that a stale
or colliding entry is never used: a file added, removed or edited in a dataset folder gives a new
entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onp.data.arrays import RawImages
from onp.io import atomic_path

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "ONP_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/onp")
# Bump when the stored layout or a decoder's output changes, so old entries are not reused.
CACHE_FORMAT_VERSION = 1
_KEY_HASH_CHARS = 16


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the cache folder: ``cache_dir``, else ``$ONP_CACHE_DIR``, else ``~/.cache/onp``.

    Args:
        cache_dir: Explicit cache folder (default: ``None``).
    """
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV_VAR) or None
    return Path(chosen if chosen is not None else DEFAULT_CACHE_DIR).expanduser()


def cache_key(name: str, root: str | Path, **options: Any) -> dict[str, Any]:
    """Build the cache key of one decoded dataset split.

    Args:
        name: Loader name, e.g. ``"gtsrb"``.
        root: Dataset root (folder, tarball or file); stored resolved to an absolute path.
        **options: Everything else that changes the decoded arrays (split, image size...).
            Values must be JSON-serialisable.

    Returns:
        A JSON-serialisable dict.
    """
    path = Path(root).expanduser().resolve()
    key: dict[str, Any] = {
        "format": CACHE_FORMAT_VERSION,
        "name": name,
        "root": str(path),
        "options": {k: options[k] for k in sorted(options)},
    }
    if path.is_file():
        stat = path.stat()
        key["root_stat"] = [stat.st_size, stat.st_mtime_ns]
    elif path.is_dir():
        key["root_listing"] = folder_fingerprint(path)
    return key


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 of every file's relative path, size and modification time under ``folder``.

    Reading the listing (not the contents) takes well under a second for a dataset folder, and
    any file added, removed, replaced or edited in place changes it.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_file(key: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Return the ``.npz`` path that holds the entry for ``key``."""
    text = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:_KEY_HASH_CHARS]
    split = str(key.get("options", {}).get("split", "all"))
    return resolve_cache_dir(cache_dir) / f"{key['name']}-{split}-{digest}.npz"


def save_cached(path: Path, key: Mapping[str, Any], raw: RawImages) -> None:
    """Write ``raw`` and its key to ``path`` atomically (uncompressed, for fast loading)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            images=raw.images,
            labels=raw.labels,
            class_names=np.array(raw.class_names, dtype=str),
            key=np.array(json.dumps(key, sort_keys=True)),
        )


def load_cached(path: Path, key: Mapping[str, Any]) -> RawImages | None:
    """Return the entry at ``path`` if it exists, is readable and was stored under ``key``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != json.dumps(key, sort_keys=True):
                log.warning("cache entry %s was stored under another key; rebuilding", path)
                return None
            return RawImages(
                images=data["images"],
                labels=data["labels"].astype(np.int64),
                class_names=tuple(str(c) for c in data["class_names"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("cache entry %s is unreadable (%s); rebuilding", path, err)
        return None


def cached_decode(
    key: Mapping[str, Any],
    decode: Callable[[], RawImages],
    cache_dir: str | Path | None = None,
    enabled: bool = True,
) -> RawImages:
    """Return the arrays cached under ``key``, or call ``decode`` and cache its result.

    Args:
        key: Cache key from :func:`cache_key`.
        decode: Function that decodes the dataset from its source.
        cache_dir: Cache folder (default: ``$ONP_CACHE_DIR`` or ``~/.cache/onp``).
        enabled: Use the cache; ``False`` always decodes and writes nothing (default: ``True``).

    Returns:
        The decoded images (``[N, C, H, W]`` uint8), labels and class names.
    """
    if not enabled:
        return decode()
    path = cache_file(key, cache_dir)
    cached = load_cached(path, key)
    if cached is not None:
        log.info("loaded %s from cache %s", key["name"], path)
        return cached
    raw = decode()
    try:
        save_cached(path, key, raw)
        log.info("cached decoded %s in %s", key["name"], path)
    except OSError as err:
        # A read-only or full cache folder must not stop the run: the data is already decoded.
        log.warning("could not write cache entry %s: %s", path, err)
    return raw
