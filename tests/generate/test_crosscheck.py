"""Slow cross-check: a model fitted only to Poisson counts of virtual V4 neurons (ground truth = the real
compact models) picks and synthesizes images that drive the GROUND-TRUTH models above random pool images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelserver.generate.crosscheck import cross_check, format_table, record
from modelserver.generate.models import CompactStack
from modelserver.generate.pool import natural_crops, package_sample_images, v4_images

pytestmark = [pytest.mark.v4, pytest.mark.slow, pytest.mark.timeout(900)]


def test_fitted_model_picks_and_synthesizes_images_that_drive_ground_truth(v4_dir: Path) -> None:
    gt = CompactStack.from_folder(v4_dir / "compact_models", neurons=[0, 1, 2, 3])
    train = np.stack(list(v4_images(v4_dir, sessions=["190925"], limit=1200)))
    sources = list(v4_images(v4_dir, sessions=["190927"], limit=200)) + package_sample_images()
    pool = np.concatenate(list(natural_crops(sources, 200, seed=1)))
    data = record(gt, train, pool, repeats=4)
    ridge = cross_check(gt, gt.names, train, pool, k=5, synth_steps=60, fit="ridge", data=data)
    cnn = cross_check(gt, gt.names, train, pool, k=5, synth_steps=60, fit="cnn", epochs=15, data=data)
    print("ridge on random features\n" + format_table(ridge) + "\nsmall CNN\n" + format_table(cnn))
    max_ridge = np.mean([r.max_fitted for r in ridge])
    assert max_ridge > 0, format_table(ridge)  # pool picks of the fitted model beat random pool images
    assert np.mean([r.synth_fitted for r in cnn]) > 0, format_table(cnn)  # and so do its synthesized images
    assert np.mean([r.max_oracle for r in ridge]) > max_ridge  # picking by the truth is the upper bound
