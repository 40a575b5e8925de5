"""Decode-once cache: hits, misses, key checks, atomic writes, directory resolution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from onp.data import cache, files
from onp.data.arrays import RawImages
from onp.data.cache import cache_file, cache_key, cached_decode, resolve_cache_dir
from onp.data.folder import load_image_folder


def raw(value: int = 7) -> RawImages:
    return RawImages(np.full((2, 1, 3, 3), value, np.uint8), np.array([0, 1]), ("a", "b"))


class CountingDecoder:
    def __init__(self, value: int = 7) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> RawImages:
        self.calls += 1
        return raw(self.value)


def test_second_call_hits_the_cache(tmp_path: Path) -> None:
    key = cache_key("toy", tmp_path, split="train", size=3)
    decode = CountingDecoder()
    first = cached_decode(key, decode, tmp_path / "c")
    second = cached_decode(key, decode, tmp_path / "c")
    assert decode.calls == 1
    np.testing.assert_array_equal(first.images, second.images)
    assert second.labels.dtype == np.int64 and second.class_names == ("a", "b")
    assert [p.name for p in (tmp_path / "c").iterdir()] == [cache_file(key, tmp_path / "c").name]


def test_options_and_disabled_cache_miss(tmp_path: Path) -> None:
    decode = CountingDecoder()
    cached_decode(cache_key("toy", tmp_path, split="train", size=3), decode, tmp_path)
    cached_decode(cache_key("toy", tmp_path, split="train", size=4), decode, tmp_path)
    cached_decode(
        cache_key("toy", tmp_path, split="train", size=3), decode, tmp_path, enabled=False
    )
    assert decode.calls == 3


def test_root_file_change_invalidates(tmp_path: Path) -> None:
    data = tmp_path / "data.tar"
    data.write_bytes(b"one")
    key_before = cache_key("toy", data, split="test")
    data.write_bytes(b"three")  # another size
    assert cache_key("toy", data, split="test") != key_before


def test_a_file_changed_added_or_removed_in_a_root_folder_invalidates(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "1.png").write_bytes(b"one")
    keys = [cache_key("toy", root, split="train")]
    (root / "cat" / "1.png").write_bytes(b"other")  # edited in place, another size
    keys.append(cache_key("toy", root, split="train"))
    (root / "cat" / "2.png").write_bytes(b"two")
    keys.append(cache_key("toy", root, split="train"))
    (root / "cat" / "1.png").unlink()
    keys.append(cache_key("toy", root, split="train"))
    assert len({str(k) for k in keys}) == 4
    assert cache_key("toy", root, split="train") == keys[-1]  # unchanged folder, same key


def test_corrupt_or_foreign_entry_is_rebuilt(tmp_path: Path) -> None:
    key = cache_key("toy", tmp_path, split="train")
    path = cache_file(key, tmp_path)
    path.write_bytes(b"garbage")
    decode = CountingDecoder(9)
    assert int(cached_decode(key, decode, tmp_path).images[0, 0, 0, 0]) == 9
    other = dict(key, options={"split": "other"})
    cache.save_cached(path, other, raw(1))  # an entry stored under another key
    assert int(cached_decode(key, decode, tmp_path).images[0, 0, 0, 0]) == 9
    assert decode.calls == 2


def test_failed_decode_leaves_nothing(tmp_path: Path) -> None:
    def boom() -> RawImages:
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError):
        cached_decode(cache_key("toy", tmp_path), boom, tmp_path / "c")
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONP_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("ONP_CACHE_DIR")
    assert resolve_cache_dir() == Path("~/.cache/onp").expanduser()


def test_loader_decodes_once_then_reads_cache(
    tmp_path: Path, image_writer: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_writer(tmp_path / "d/train/a/0.png", np.full((3, 3, 3), 40, np.uint8))
    image_writer(tmp_path / "d/train/b/0.png", np.full((3, 3, 3), 80, np.uint8))
    first = load_image_folder(tmp_path / "d", "train")  # cache dir from ONP_CACHE_DIR (conftest)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr("onp.data.folder.decode_image", no_decoding)
    second = load_image_folder(tmp_path / "d", "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.meta == first.meta
    assert files.decode_image is not no_decoding  # only the loader's reference was patched
