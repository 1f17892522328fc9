"""The demo's ground-truth effect sizes: bootstrap intervals over images (controller/demo_scoring.py)."""

from __future__ import annotations

import numpy as np

from controller.demo_scoring import _pair_ci


def test_paired_interval_resamples_pairs_and_covers_the_effect() -> None:
    rng = np.random.default_rng(0)
    covered, widths = 0, {True: [], False: []}
    for _ in range(100):
        ref = rng.gamma(2.0, 5.0, 24)  # base images: responses vary a lot between images
        test = ref * 1.2 + rng.normal(0, 0.5, 24)  # each perturbed image +20% of its own base
        for paired in (True, False):
            lo, hi = _pair_ci(test, ref, rng, paired=paired)
            widths[paired].append(hi - lo)
            covered += paired and lo <= 20.0 <= hi
    # pairing removes the between-image spread: a far narrower interval that still holds +20%
    assert np.median(widths[True]) < 0.3 * np.median(widths[False]), widths
    assert covered >= 88, covered  # nominal 95 of 100
    assert np.isnan(_pair_ci(np.ones(1), np.ones(5), rng)).all()
    assert np.isnan(_pair_ci(np.ones(5), np.zeros(5), rng, paired=True)).all()  # silent bases: no ratio
