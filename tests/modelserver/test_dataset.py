"""The persistent training set: persistence, deduplication, bad input, crash safety."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from modelserver.training.dataset import TrainingSet
from wire.base import image_id
from wire.errors import InvalidRequest, NotFound


def _images(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_ingest_persists_and_resumes(tmp_path: Path) -> None:
    imgs = _images(4)
    ids = [image_id(im) for im in imgs]
    path = tmp_path / "train.h5"
    with TrainingSet(path) as ts:
        r = ts.ingest("s1", ids[:3] + ids[:1], np.array([[1, 2], [3, 4], [5, 6], [7, 8]]), imgs[:3])
        assert (r.new_images, r.trials, r.total_trials) == (3, 4, 4)
    with TrainingSet(path) as ts:  # a restarted server sees everything
        assert ts.n_images == 3
        s = ts.session("s1")
        assert sorted(s.image_ids) == sorted(ids[:3])
        row0 = s.image_ids.index(ids[0])
        np.testing.assert_allclose(s.mean[row0], [4, 5])  # two repeats of image 0 averaged
        assert s.repeats[row0] == 2
        np.testing.assert_array_equal(ts.images(s.image_rows[[row0]])[0], imgs[0])
        assert np.isnan(s.raw[:, s.repeats == 1, 1]).all()
        # second ingest: a known image needs no pixels, a new one is deduplicated
        r2 = ts.ingest("s1", [ids[0], ids[3]], np.ones((2, 2)), imgs[[0, 3, 3]])
        assert (r2.new_images, r2.total_images, r2.total_trials) == (1, 4, 6)
        ts.ingest("s2", [ids[1]], np.zeros((1, 5)))  # another session, another population size
        assert {(i.name, i.neurons, i.trials) for i in ts.sessions()} == {("s1", 2, 6), ("s2", 5, 1)}


@pytest.mark.parametrize(("counts", "match"), [
    (np.array([[1.0, np.nan]]), "NaN"),
    (np.array([[1.0, -1.0]]), "negative"),
    (np.array([[1.0, 2.0, 3.0]]), "neurons"),
    (np.array([1.0, 2.0]), "counts must be"),
    (np.array([[1.0, np.inf]]), "NaN or infinite"),
])
def test_bad_counts_are_rejected(tmp_path: Path, counts: np.ndarray, match: str) -> None:
    imgs = _images(1)
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.ingest("s", [image_id(imgs[0])], np.ones((1, 2)), imgs)
        with pytest.raises(InvalidRequest, match=match):
            ts.ingest("s", [image_id(imgs[0])], counts)
        assert ts.sessions()[0].trials == 1  # nothing partial written


def test_bad_images_and_ids_are_rejected(tmp_path: Path) -> None:
    imgs = _images(2)
    with TrainingSet(tmp_path / "t.h5") as ts:
        with pytest.raises(NotFound):
            ts.ingest("s", ["0" * 32], np.ones((1, 2)))
        with pytest.raises(InvalidRequest, match="uint8"):
            ts.ingest("s", [image_id(imgs[0])], np.ones((1, 2)), imgs.astype(np.float32))
        with pytest.raises(InvalidRequest, match=r"\(N, H, W, 3\)"):
            ts.ingest("s", [image_id(imgs[0])], np.ones((1, 2)), imgs[..., :2])
        ts.ingest("s", [image_id(imgs[0])], np.ones((1, 2)), imgs[:1])
        with pytest.raises(InvalidRequest, match="16x16"):
            big = _images(1, size=20)
            ts.ingest("s", [image_id(big[0])], np.ones((1, 2)), big)
        with pytest.raises(InvalidRequest, match="session name"):
            ts.ingest("bad/name", [image_id(imgs[0])], np.ones((1, 2)))
        with pytest.raises(NotFound):
            ts.session("nope")


def test_uncommitted_rows_are_dropped_on_open(tmp_path: Path) -> None:
    """A write cut short (rows past the committed length) never shows up after a restart."""
    imgs = _images(2)
    path = tmp_path / "t.h5"
    with TrainingSet(path) as ts:
        ts.ingest("s", [image_id(imgs[0])], np.ones((1, 3)), imgs[:1])
    with h5py.File(path, "a") as f:  # simulate a crash between the data and the commit mark
        f["sessions/s/counts"].resize(5, axis=0)
        f["sessions/s/image_index"].resize(5, axis=0)
        f["images/pixels"].resize(2, axis=0)
        f["images/ids"].resize(2, axis=0)
    with TrainingSet(path) as ts:
        assert ts.n_images == 1
        assert ts.sessions()[0].trials == 1
        assert ts.session("s").mean.shape == (1, 3)
