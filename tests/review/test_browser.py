"""The review page in a real headless Chromium, against a real `labeler review` process."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from review import hash_password
from storage import LabelRecord, LocalStore, Prediction, label_key
from storage.registry import ModelRegistry
from testbed.digits import CLASSES, register_digits
from testbed.processes import LABELER, labeler_env
from testbed.services import free_port, require_binary
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from workers.review import ReviewQueue

pytestmark = pytest.mark.slow
PASSWORD = "s3cret-enough"
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver; Selenium Manager never runs


@pytest.fixture
def review_app(
    tmp_path: Path, redis_url: str, digits: DigitsFixture
) -> Iterator[dict[str, object]]:
    data_dir = tmp_path / "data"
    register_digits(ModelRegistry(LocalStore(data_dir / "models"), "default"), digits.model_path)
    port = free_port()
    env = labeler_env(
        data_dir=data_dir,
        broker_url=redis_url,
        review_users=f"ana:{hash_password(PASSWORD)}",
        review_port=port,
    )
    log = tmp_path / "review.log"
    with log.open("ab") as out:
        process = subprocess.Popen([*LABELER, "review"], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(url + "/healthz"), 60, f"review app (log: {log})")
        yield {"url": url, "data_dir": data_dir, "log": log}
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def browser() -> Iterator[object]:
    require_binary("chromium", "apt-get install chromium chromium-driver (make system-deps)")
    require_binary("chromedriver", "apt-get install chromium-driver (make system-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return str(response.read().decode())


def _seed(data_dir: Path, redis_url: str, digits: DigitsFixture, count: int) -> list[LabelRecord]:
    """Records the model was unsure of: predicted "1" for digits that are something else."""
    incoming, labels = LocalStore(data_dir / "incoming"), LocalStore(data_dir / "labels")
    queue = ReviewQueue(redis.Redis.from_url(redis_url))
    samples = [s for s in digits.held_out if s.label not in ("1", "9")][:count]
    records = []
    for n, sample in enumerate(samples):
        key = f"scans/{n:02d}-{sample.key.rsplit('/', 1)[-1]}"
        etag = incoming.put(key, sample.data).etag
        top = [Prediction(label="1", score=0.45), Prediction(label=sample.label, score=0.40)]
        record = LabelRecord(
            source_key=key,
            source_etag=etag,
            model_name="default",
            model_version=1,
            label="1",
            score=0.45,
            top_k=top,
            needs_review=True,
            created_at=1000.0 + n,
        )
        labels.put(label_key(key), record.model_dump_json(exclude_none=True).encode())
        queue.add(record)
        records.append(record)
    return records


def test_sign_in_see_correct_with_keyboard_next_appears(
    review_app: dict[str, object], browser: object, redis_url: str, digits: DigitsFixture
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    url, data_dir = str(review_app["url"]), Path(str(review_app["data_dir"]))
    first, second = _seed(data_dir, redis_url, digits, 2)
    truth = first.top_k[1].label
    wait = WebDriverWait(browser, 60)

    _sign_in(browser, url, wait)
    wait.until(lambda d: d.find_element(By.ID, "key").text == first.source_key)

    top_k = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#top-k li")]
    assert top_k == ["1 45.0%", f"{truth} 40.0%"]
    wait.until(lambda d: d.execute_script("return document.getElementById('image').naturalWidth"))
    # Digit n picks the n-th class of the model ("0".."9"): the true digit is at index int(truth).
    browser.find_element(By.TAG_NAME, "body").send_keys(str(CLASSES.index(truth) + 1))
    wait.until(lambda d: d.find_element(By.ID, "key").text == second.source_key)

    copied = data_dir / "training" / truth / first.source_key
    assert copied.read_bytes() == (data_dir / "incoming" / first.source_key).read_bytes()
    record = LabelRecord.model_validate_json(
        (data_dir / "labels" / label_key(first.source_key)).read_bytes()
    )
    assert record.label == "1"
    assert record.review is not None
    assert (record.review.label, record.review.outcome, record.review.reviewer) == (
        truth,
        "corrected",
        "ana",
    )
    # Arrows: back to the item just decided (it says so), forward to the current one again.
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_LEFT)
    wait.until(lambda d: d.find_element(By.ID, "key").text == first.source_key)
    assert browser.find_element(By.ID, "status").text == f"Reviewed before: corrected {truth}"
    body.send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda d: d.find_element(By.ID, "key").text == second.source_key)

    # Type-ahead: "/" opens the class filter, typing narrows it, Enter picks the highlighted one.
    body.send_keys("/")
    browser.find_element(By.ID, "class-filter").send_keys(second.top_k[1].label, Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "empty").is_displayed())
    assert (data_dir / "training" / second.top_k[1].label / second.source_key).exists()

    metrics = _get(url + "/metrics")
    assert 'labeler_reviews_total{outcome="corrected"} 2.0' in metrics
    assert 'labeler_review_agreement_ratio{label="1"} 0.0' in metrics


def test_an_audit_is_blind_on_the_page_and_a_picked_class_is_measured(
    review_app: dict[str, object], browser: object, redis_url: str, digits: DigitsFixture
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    from workers.review import QualityLedger

    assert isinstance(browser, WebDriver)
    url, data_dir = str(review_app["url"]), Path(str(review_app["data_dir"]))
    (seeded,) = _seed(data_dir, redis_url, digits, 1)
    truth = seeded.top_k[1].label
    # The same image as an auto-accepted (wrong) "1" drawn for an audit.
    audit = seeded.model_copy(update={"score": 0.97, "needs_review": False, "audit": True})
    LocalStore(data_dir / "labels").put(
        label_key(audit.source_key), audit.model_dump_json(exclude_none=True).encode()
    )
    QualityLedger(redis.Redis.from_url(redis_url)).count_label(audit)
    wait = WebDriverWait(browser, 60)

    _sign_in(browser, url, wait)
    wait.until(lambda d: d.find_element(By.ID, "key").text == audit.source_key)

    assert browser.find_element(By.ID, "audit-note").is_displayed()
    assert not browser.find_element(By.ID, "prediction").is_displayed()
    assert browser.find_element(By.ID, "predicted").get_attribute("textContent") == ""
    assert browser.find_elements(By.CSS_SELECTOR, "#top-k li") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#classes li.active") == []  # none preselected
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ENTER)  # no prediction to accept: Enter alone decides nothing
    body.send_keys(str(CLASSES.index(truth) + 1))
    wait.until(lambda d: d.find_element(By.ID, "empty").is_displayed())

    record = LabelRecord.model_validate_json(
        (data_dir / "labels" / label_key(audit.source_key)).read_bytes()
    )
    assert record.review is not None
    # Had Enter accepted the hidden "1", this would say agreed.
    assert (record.review.label, record.review.outcome) == (truth, "corrected")
    metrics = _get(url + "/metrics")
    assert 'labeler_audits_total{label="1",model_version="1",outcome="corrected"} 1.0' in metrics
    assert 'labeler_auto_label_precision{bound="point",label="1",model_version="1"} 0.0' in metrics


def _sign_in(browser: Any, url: str, wait: Any) -> None:
    """Open the app, get sent to the sign-in page, and sign in as ana."""
    from selenium.webdriver.common.by import By

    browser.get(url + "/")
    wait.until(lambda d: d.current_url.endswith("/login"))
    browser.find_element(By.ID, "username").send_keys("ana")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
