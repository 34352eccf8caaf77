"""A prediction says how far it can be trusted: wide intervals and extrapolations are flagged in words."""

from __future__ import annotations

from proxytune.analysis.predict import trust_warnings
from proxytune.thresholds import THRESHOLDS


def result(lo=-7.5, hi=-6.5, width=512, depth=2, tokens=1e5, batch=1024):
    return {"hp": {"interval": [lo, hi]},
            "target": {"width": width, "depth": depth, "tokens": tokens, "batch_tokens": batch},
            "proxies": {"widths": [32, 64, 128], "depths": [2], "tokens": 1e5, "batch_tokens": [1024], "seeds": 2}}


def test_a_prediction_inside_the_swept_range_with_a_narrow_interval_has_no_warning():
    assert trust_warnings(result()) == []


def test_wide_interval_is_flagged_with_what_to_do():
    (w,) = trust_warnings(result(lo=-10.0, hi=-6.0))
    assert "factor 16" in w and "more seeds (now 2)" in w and "more proxy widths" in w and "longer" in w
    # exactly at the limit is not flagged
    assert trust_warnings(result(lo=-8.0, hi=-8.0 + THRESHOLDS.max_trusted_interval_octaves)) == []


def test_extrapolation_in_depth_width_tokens_and_batch_is_flagged():
    warns = trust_warnings(result(width=128 * 32, depth=32, tokens=1e9, batch=4096))
    text = " | ".join(warns)
    assert len(warns) == 4, warns
    assert "depth 32 was never swept" in text and "32x the largest proxy" in text
    assert "1e+09 tokens" in text and "outside the swept" in text
    assert not any("x the largest proxy" in w for w in trust_warnings(result(width=128 * 16)))
