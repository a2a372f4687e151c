"""Previews within a memory budget, measured on a real `labeler review` process (its peak RSS,
VmHWM, read from /proc before and after a burst of concurrent previews)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.review.hardening_support import SECRET_KEY, ReviewProcess
from tests.review.support import ReviewSetup

pytestmark = pytest.mark.slow
MB = 1024 * 1024
# 2 decodes at once, on 2 threads, of at most 16 Mpx (~70 MB each at peak).
PEAK_GROWTH_BOUND = 250 * MB  # measured: ~143 MB; 574 MB when any web thread decoded


@pytest.fixture
def setup(tmp_path: Path, redis_url: str) -> ReviewSetup:
    return ReviewSetup.build(tmp_path / "data", redis_url)


@pytest.fixture
def app(tmp_path: Path, redis_url: str) -> Iterator[ReviewProcess]:
    process = ReviewProcess(
        tmp_path / "data", redis_url, tmp_path / "review.log", review_secret_key=SECRET_KEY
    )
    try:
        yield process.start()
    finally:
        process.stop()


def _encoded(side: int, fmt: str, shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (shade, 90, 160)).save(out, format=fmt)
    return out.getvalue()


def _peak_rss(app: ReviewProcess) -> int:
    assert app.process is not None
    status = Path(f"/proc/{app.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _burst(app: ReviewProcess, keys: list[str]) -> list[int]:
    def fetch(key: str) -> int:
        return app.client().request("GET", f"/image?key={key}").status

    with ThreadPoolExecutor(len(keys)) as pool:
        return list(pool.map(fetch, keys))


def test_ten_concurrent_7000px_png_previews_are_refused_cheaply(
    setup: ReviewSetup, app: ReviewProcess
) -> None:
    data = _encoded(7000, "PNG", 10)  # ~50 kB that would decode to 147 MB
    assert len(data) < 1 * MB
    keys = [f"bomb/{n}.png" for n in range(10)]
    for key in keys:
        setup.incoming.put(key, data)
    before = _peak_rss(app)

    statuses = _burst(app, keys)

    assert statuses == [415] * 10
    assert _peak_rss(app) - before < 50 * MB


def test_ten_concurrent_16_mpx_previews_stay_in_budget(
    setup: ReviewSetup, app: ReviewProcess
) -> None:
    keys = []
    for n in range(10):  # distinct images: the cache does not help
        keys.append(f"big/{n}.png")
        setup.incoming.put(keys[-1], _encoded(4000, "PNG", 20 + n))
    before = _peak_rss(app)

    statuses = _burst(app, keys)

    assert statuses == [200] * 10
    growth = _peak_rss(app) - before
    print(f"peak RSS growth for 10 concurrent 4000x4000 PNG previews: {growth / MB:.0f} MB")
    assert growth < PEAK_GROWTH_BOUND


def test_a_7000px_jpeg_is_previewed_at_reduced_scale(
    setup: ReviewSetup, app: ReviewProcess
) -> None:
    setup.incoming.put("photo.jpg", _encoded(7000, "JPEG", 30))
    before = _peak_rss(app)

    answer = app.client().request("GET", "/image?key=photo.jpg")

    assert answer.status == 200
    with Image.open(io.BytesIO(answer.body)) as preview:
        assert max(preview.size) == 512
    assert _peak_rss(app) - before < 60 * MB  # decoded at 1/8: ~2.3 MB of pixels, not 147 MB
