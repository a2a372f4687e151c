"""The decoded-image cache: fetched once, counted through a real S3 endpoint, damage rebuilt,
never half-written, size-bounded."""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.sample_data import digit_samples
from storage import LocalStore, S3Store, make_s3_client
from testbed.services import MotoServer
from tests.conftest import s3_options
from tests.support.s3_proxy import S3Proxy
from workers.inference import decode_image
from workers.training import load_training_data, split_of
from workers.training.image_cache import TRAILER_BYTES, ImageCache, fill_cache

SIZE = (32, 32)
MAX_PIXELS = 10**6


def _png(seed: int, size: tuple[int, int] = (40, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def proxied(s3_server: MotoServer, s3_store: S3Store) -> Iterator[tuple[S3Store, S3Proxy]]:
    """The test's bucket, written directly, read through a proxy that counts every GET."""
    proxy = S3Proxy(s3_server.port)
    options = s3_options(proxy.url)
    through_proxy = S3Store(make_s3_client(options), s3_store.bucket, s3_store.prefix)
    yield through_proxy, proxy
    proxy.close()


def _image_gets(proxy: S3Proxy) -> int:
    return len(proxy.gets_of(".png"))


def test_second_run_fetches_nothing_and_five_changed_fetch_five(
    s3_store: S3Store, proxied: tuple[S3Store, S3Proxy], tmp_path: Path
) -> None:
    store, proxy = proxied
    keys = [f"{c}/img-{i:03d}.png" for c in ("cat", "dog") for i in range(40)]
    for n, key in enumerate(keys):
        s3_store.put(key, _png(n))
    cache = ImageCache(tmp_path / "cache", SIZE, max_bytes=2**30)

    first = load_training_data(store, cache, max_pixels=MAX_PIXELS)
    assert _image_gets(proxy) == 80
    assert first.cache == {"total": 80, "fetched": 80, "reused": 0, "failed": 0}

    second = load_training_data(store, cache, max_pixels=MAX_PIXELS)
    assert _image_gets(proxy) == 80  # nothing fetched again
    assert second.cache["reused"] == 80
    assert second.fingerprint == first.fingerprint

    changed = keys[3:8]
    for n, key in enumerate(changed):
        s3_store.put(key, _png(1000 + n))  # new bytes: a new ETag
    third = load_training_data(store, cache, max_pixels=MAX_PIXELS)
    assert _image_gets(proxy) == 85
    assert sorted(e.path.split("/root/", 1)[1] for e in proxy.gets_of(".png")[80:]) == changed
    assert third.cache == {"total": 80, "fetched": 5, "reused": 75, "failed": 0}
    assert third.fingerprint != first.fingerprint


def test_streamed_images_equal_decoded_ones_and_keep_their_split(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "training")
    samples = digit_samples()[:200]
    for sample in samples:
        store.put(sample.key, sample.data)
    cache = ImageCache(tmp_path / "cache", SIZE, max_bytes=2**30)

    data = load_training_data(store, cache, max_pixels=MAX_PIXELS)

    by_key = {s.key: s for s in samples}
    for name in ("train", "validation", "test"):
        split = getattr(data, name)
        assert all(split_of(key) == name for key in split.keys)
        streamed = np.concatenate(list(split.images(batch_size=16)))
        expected = np.stack(
            [decode_image(by_key[k].data, SIZE, max_pixels=MAX_PIXELS) for k in split.keys]
        )
        np.testing.assert_array_equal(streamed, expected)
        assert [data.class_names[i] for i in split.labels] == [k.split("/")[0] for k in split.keys]
    assert sum(len(getattr(data, n)) for n in ("train", "validation", "test")) == 200


def test_a_cut_short_entry_is_rebuilt_and_verify_finds_damaged_pixels(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "training")
    for n in range(6):
        store.put(f"a/{n}.png", _png(n))
    infos = list(store.list())
    cache = ImageCache(tmp_path / "cache", SIZE, max_bytes=2**30)
    fill_cache(store, infos, cache, max_pixels=MAX_PIXELS)
    truncated, flipped = cache.path("a/1.png", infos[1].etag), cache.path("a/2.png", infos[2].etag)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    damaged = bytearray(flipped.read_bytes())
    damaged[10] ^= 0xFF
    flipped.write_bytes(bytes(damaged))

    quick = fill_cache(store, infos, cache, max_pixels=MAX_PIXELS)
    assert (quick.fetched, quick.reused) == (1, 5)  # the cut-short entry, found by its size
    truncated.write_bytes(truncated.read_bytes()[:-100])

    report = fill_cache(store, infos, cache, max_pixels=MAX_PIXELS, verify=True)

    assert (report.fetched, report.reused) == (2, 4)
    for key, info in (("a/1.png", infos[1]), ("a/2.png", infos[2])):
        entry = cache.path(key, info.etag).read_bytes()
        assert len(entry) == 32 * 32 * 3 + TRAILER_BYTES
        expected = decode_image(store.get(key).data, SIZE, max_pixels=MAX_PIXELS)
        assert entry[:-TRAILER_BYTES] == expected.tobytes()


def test_undecodable_images_are_remembered_not_fetched_again(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "training")
    store.put("a/good.png", _png(1))
    store.put("a/broken.png", b"not an image at all")
    cache = ImageCache(tmp_path / "cache", SIZE, max_bytes=2**30)

    first = fill_cache(store, list(store.list()), cache, max_pixels=MAX_PIXELS)
    second = fill_cache(store, list(store.list()), cache, max_pixels=MAX_PIXELS)

    assert (first.fetched, first.failed) == (2, 1)
    assert (second.fetched, second.reused, second.failed) == (0, 2, 1)
    assert "not_an_image" in second.skipped["a/broken.png"]
    assert set(second.entries) == {"a/good.png"}


def test_stale_entries_are_evicted_oldest_first_and_an_oversized_set_is_refused(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "training")
    entry = 32 * 32 * 3 + TRAILER_BYTES
    cache = ImageCache(tmp_path / "cache", SIZE, max_bytes=10 * entry)
    for n in range(8):
        store.put(f"old/{n}.png", _png(n))
    old = list(store.list())
    fill_cache(store, old, cache, max_pixels=MAX_PIXELS)
    for n, info in enumerate(old):  # old/0 was used longest ago
        os.utime(cache.path(info.key, info.etag), (1_000_000 + n, 1_000_000 + n))
    for n in range(5):
        store.put(f"new/{n}.png", _png(100 + n))
    new = [i for i in store.list() if i.key.startswith("new/")]

    fill_cache(store, new, cache, max_pixels=MAX_PIXELS)

    present = [info.key for info in old if cache.path(info.key, info.etag).exists()]
    assert present == [f"old/{n}.png" for n in range(3, 8)]  # 5 new + 5 newest old = 10
    assert all(cache.path(i.key, i.etag).exists() for i in new)
    with pytest.raises(ValueError, match="LABELER_TRAIN_CACHE_MAX_BYTES"):
        fill_cache(store, list(store.list()), cache, max_pixels=MAX_PIXELS)


def _fill_in_child(training: str, cache_root: str) -> tuple[int, int]:
    store = LocalStore(Path(training))
    report = fill_cache(
        store,
        list(store.list()),
        ImageCache(Path(cache_root), (64, 64), max_bytes=2**30),
        max_pixels=MAX_PIXELS,
        threads=4,
    )
    return report.fetched, report.reused


def test_two_runs_at_once_never_see_a_half_written_entry(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "training")
    for n in range(300):
        store.put(f"a/{n}.png", _png(n, (200, 200)))
    root = tmp_path / "cache"
    whole = 64 * 64 * 3 + TRAILER_BYTES
    seen_partial: list[str] = []
    done = threading.Event()

    def watch() -> None:  # every visible entry must be whole at every moment
        while not done.is_set():
            for path in root.rglob("*.u8"):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size != whole:
                    seen_partial.append(f"{path}: {size}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            results = pool.starmap(_fill_in_child, [(str(tmp_path / "training"), str(root))] * 2)
    finally:
        done.set()
        watcher.join()

    assert seen_partial == []
    assert all(fetched + reused == 300 for fetched, reused in results)
    cache = ImageCache(root, (64, 64), max_bytes=2**30)
    final = fill_cache(store, list(store.list()), cache, max_pixels=MAX_PIXELS)
    assert (final.fetched, final.reused) == (0, 300)  # every entry whole and valid
    assert not [p for p in root.rglob(".*") if p.is_file()]  # no temporary files left behind
