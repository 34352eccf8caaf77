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


def test_a_depth_recipe_carried_from_a_too_shallow_base_is_flagged():
    """CompleteP / depth-muP from a base shallower than THRESHOLDS.min_base_depth to a deeper target: flagged
    with the measurement behind it; not for muP (no depth rule), a deep enough base or an unchanged depth."""
    def with_recipe(recipe: str, base_depth: int, depth: int) -> dict:
        r = result(depth=depth)
        r["recipe"] = {"recipe": recipe}
        r["proxies"].update(depths=[base_depth, 2 * base_depth, 32], base_depth=base_depth)
        return r

    shallow = THRESHOLDS.min_base_depth - 1
    for recipe in ("completep", "depth-mup"):
        (w,) = trust_warnings(with_recipe(recipe, shallow, 24))
        assert f"base depth {shallow} is below {THRESHOLDS.min_base_depth}" in w and "B2" in w and recipe in w
    assert trust_warnings(with_recipe("mup", shallow, 24)) == []
    assert trust_warnings(with_recipe("completep", THRESHOLDS.min_base_depth, 24)) == []
    assert trust_warnings(with_recipe("completep", shallow, shallow)) == []
    # scaled-down branches at the base (measured to transfer from depth 2): no warning; full-size: warned
    scaled = with_recipe("completep", shallow, 24)
    scaled["proxies"]["base_residual"] = THRESHOLDS.max_shallow_base_residual
    assert trust_warnings(scaled) == []
    scaled["proxies"]["base_residual"] = 1.0
    assert "residual multiplier at 1" in trust_warnings(scaled)[0]

