"""The pure parts of audits: the Wilson interval, the lottery ticket, and the estimates."""

from __future__ import annotations

import pytest

from workers.review import (
    ReviewPolicy,
    VersionCounts,
    audit_fraction,
    auto_quality,
    below_target,
    reviewed_quality,
    wilson_interval,
)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", table I, method 3.
@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    got = wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0)
    assert low == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_audit_fraction_is_reproducible_and_spread_evenly() -> None:
    assert audit_fraction("a.png", "e1", 3) == audit_fraction("a.png", "e1", 3)
    assert audit_fraction("a.png", "e1", 3) != audit_fraction("a.png", "e1", 4)
    drawn = [audit_fraction(f"k{i}.png", "etag", 1) for i in range(20_000)]
    share = sum(f < 0.02 for f in drawn) / len(drawn)
    assert 0.016 < share < 0.024  # 2% within about 4 standard errors
    assert all(0.0 <= f < 1.0 for f in drawn)


def test_policy_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="rate"):
        ReviewPolicy(lease_seconds=60, order="uncertainty", audit_rate=1.5, audit_min_per_class=30)
    with pytest.raises(ValueError, match="min_per_class"):
        ReviewPolicy(lease_seconds=60, order="uncertainty", audit_rate=0.02, audit_min_per_class=-1)


def counts(auto: dict[str, int], audits: dict[str, dict[str, int]]) -> VersionCounts:
    return VersionCounts(3, auto, {"audit": audits})


def test_overall_precision_weights_classes_by_their_auto_labels_not_by_audits() -> None:
    # "rare" got as many audits as "common" (the floor) but has 1% of the labels.
    c = counts(
        {"common": 9900, "rare": 100},
        {"common": {"agreed": 95, "corrected": 5}, "rare": {"agreed": 50, "corrected": 50}},
    )
    auto = auto_quality(c)
    assert auto["precision"] == pytest.approx(0.99 * 0.95 + 0.01 * 0.5)  # not the pooled 0.725
    assert auto["low"] < auto["precision"] < auto["high"]
    assert (auto["labels"], auto["audited"]) == (10_000, 200)
    rare = auto["by_class"]["rare"]
    assert rare["precision"] == 0.5
    assert rare["labels"] == 100
    assert (rare["low"], rare["high"]) == pytest.approx(wilson_interval(50, 100))


def test_one_class_overall_is_its_plain_wilson_interval_and_discards_count_apart() -> None:
    auto = auto_quality(counts({"cat": 500}, {"cat": {"agreed": 40, "discarded": 3}}))
    assert auto["precision"] == 1.0
    assert auto["discarded"] == 3
    assert auto["audited"] == 40
    assert (auto["low"], auto["high"]) == pytest.approx(wilson_interval(40, 40))


def test_no_audits_states_no_precision() -> None:
    auto = auto_quality(counts({"cat": 12}, {}))
    assert auto["precision"] is None
    assert auto["by_class"]["cat"]["precision"] is None


def test_below_target_needs_enough_audits() -> None:
    auto = auto_quality(
        counts(
            {"a": 100, "b": 100, "c": 100},
            {
                "a": {"agreed": 70, "corrected": 30},  # clearly under 0.95
                "b": {"agreed": 7, "corrected": 3},  # under, but 10 audits say little
                "c": {"agreed": 100},
            },
        )
    )
    assert below_target(auto, 0.95) == ["a"]


def test_reviewed_agreement_is_its_own_figure() -> None:
    c = VersionCounts(
        3, {}, {"reviewed": {"cat": {"agreed": 3, "corrected": 1}, "dog": {"agreed": 1}}}
    )
    reviewed = reviewed_quality(c)
    assert reviewed["agreement"] == pytest.approx(0.8)
    assert reviewed["reviewed"] == 5
    assert reviewed["by_class"]["cat"]["agreement"] == 0.75
    assert "precision" not in reviewed


def test_the_report_section_states_each_class_with_its_interval() -> None:
    from workers.review import label_quality
    from workers.training.report import _audited_html

    class Ledger:
        def versions(self) -> list[int]:
            return [2]

        def counts(self, version: int) -> VersionCounts:
            if version != 2:
                return counts({"dog": 4}, {})
            return counts({"<b>": 90, "dog": 10}, {"<b>": {"agreed": 9, "corrected": 1}})

    quality = label_quality(Ledger(), 2, 0.95)  # type: ignore[arg-type]
    section = _audited_html(quality)
    low, high = wilson_interval(9, 10)
    assert "production v2 (blind audits)" in section
    assert f"<td>&lt;b&gt;</td><td>90</td><td>10</td><td>0.900</td><td>[{low:.3f}, {high:.3f}]" in (
        section
    )
    assert "<td>dog</td><td>10</td><td>0</td><td>—</td>" in section
    unaudited = label_quality(Ledger(), 3, 0.95)  # type: ignore[arg-type]
    assert _audited_html(unaudited) == ""  # v3: nothing audited yet
