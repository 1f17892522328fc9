"""The demo's scoring against the hidden ground truth: the causal tests' images, rated by the rig.

The rig process holds the ground truth (compact models of real V4 neurons, or synthetic units);
these functions only ask it for its noise-free rates over its RPC (:meth:`RigLink.rates`) and
compare them the way Cowley et al. (2023) report their causal tests:

* ``max_normal`` / ``max_synth``: each neuron's own maximizing images against the random natural
  images of the same block (percent change of the mean rate);
* ``adv_plus`` / ``adv_minus``: each adversarial image against the base image it was made from,
  for the neuron it targets (paired), and the fraction of neurons moved in the intended direction;
* ``smooth_minus`` / ``smooth_random``: smoothed where the model says the neuron is sensitive,
  against smoothing random regions of the same base images (the control).

Intervals: per neuron, a bootstrap over images; for the mean over neurons, a bootstrap over neurons.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from controller.assembly import Session
from controller.links import RigLink
from controller.modellink import natural_key
from controller.store import SessionReader
from wire.documents import BlockDoc, PickDoc, ResponseDoc
from wire.messages import Ok
from wire.model import Predict, Prediction

#: the paper's figures on real V4 (Cowley et al. 2023): mean % change of the response
PAPER: dict[str, float] = {"max_normal": 137.0, "max_synth": 153.0, "adv_plus": 84.0, "adv_minus": -33.0,
                           "smooth_minus": -46.0}

_BOOT = 1000


def _ci(values: np.ndarray, stat: Any, rng: np.random.Generator) -> list[float]:
    """95% percentile interval of ``stat`` over bootstrap resamples of ``values``' first axis."""
    n = len(values)
    if n < 2:
        return [float("nan"), float("nan")]
    idx = rng.integers(0, n, size=(_BOOT, n))
    boots = np.array([stat(values[i]) for i in idx])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return [round(float(lo), 1), round(float(hi), 1)]


def _entry(per_neuron: dict[int, float], per_ci: dict[int, list[float]], key: str,
           rng: np.random.Generator, direction: int = 0) -> dict[str, Any]:
    vals = np.array(list(per_neuron.values()), dtype=float)
    out: dict[str, Any] = {
        "mean_percent_change": round(float(vals.mean()), 1) if vals.size else None,
        "ci": _ci(vals, np.mean, rng) if vals.size else None,
        "per_neuron": {str(j): round(v, 1) for j, v in per_neuron.items()},
        "per_neuron_ci": {str(j): c for j, c in per_ci.items()},
        "n_neurons": int(vals.size),
    }
    if direction:
        out["fraction_in_direction"] = round(float(np.mean(np.sign(vals) == direction)), 3) if vals.size else None
    if key in PAPER:
        out["paper"] = PAPER[key]
    return out


class _Block:
    """One block of a session file: its images by condition and the pick documents behind them."""

    def __init__(self, path: Path, block_id: str) -> None:
        with SessionReader(path) as reader:
            docs = list(reader.documents())
            self.images = reader.images()
        block = next((d for d in docs if isinstance(d, BlockDoc) and d.block_id == block_id), None)
        self.found = block is not None
        self.by_cond: dict[str, list[str]] = {}
        for _, image, cond in (block.params["trials"] if block is not None else []):
            ids = self.by_cond.setdefault(cond, [])
            if image not in ids:
                ids.append(image)
        self.picks = {d.image_id: d for d in docs if isinstance(d, PickDoc) and d.block_id == block_id}

    def neurons(self, kind: str) -> dict[int, list[str]]:
        """Images of condition ``kind`` per target neuron (labels ``kind/neuron=j``)."""
        out: dict[int, list[str]] = {}
        for cond, ids in self.by_cond.items():
            if cond.startswith(kind + "/neuron="):
                out[int(cond.split("=", 1)[1])] = ids
        return out

    def stack(self, ids: Sequence[str]) -> np.ndarray:
        return np.stack([self.images[i] for i in ids])


async def maximize_truth(path: Path, rig: RigLink, *, seed: int = 0) -> dict[str, Any]:
    """``max_normal`` and ``max_synth``: own maximizing images vs the block's random natural images."""
    b = _Block(path, "maximize")
    if not b.found:
        return {"error": "the maximize block was not shown (no neuron matched)"}
    rng = np.random.default_rng(seed)
    base = await rig.rates(b.stack(b.by_cond.get("random_normal", [])))  # (images, neurons)
    out: dict[str, Any] = {}
    for kind, key in (("max_normal", "max_normal"), ("max_synth", "max_synth")):
        per, per_ci = {}, {}
        for j, ids in sorted(b.neurons(kind).items()):
            test = (await rig.rates(b.stack(ids)))[:, j]
            ref = base[:, j]
            per[j] = float(100 * (test.mean() - ref.mean()) / ref.mean())
            per_ci[j] = _pair_ci(test, ref, rng)
        out[key] = _entry(per, per_ci, key, rng)
    return out


def _pair_ci(test: np.ndarray, ref: np.ndarray, rng: np.random.Generator, paired: bool = False) -> list[float]:
    """95% bootstrap interval over images of the percent change of the means: each condition's
    images resampled on their own, or, ``paired`` (``test[k]`` made from ``ref[k]``), the pairs."""
    if len(test) < 2 or len(ref) < 2:
        return [float("nan"), float("nan")]
    it = rng.integers(0, len(test), size=(_BOOT, len(test)))
    t = test[it].mean(1)
    r = ref[it if paired else rng.integers(0, len(ref), size=(_BOOT, len(ref)))].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of silent base images: no ratio
        ratio = 100 * (t - r) / r
    ok = ratio[np.isfinite(ratio)]
    if ok.size < 0.95 * len(ratio):
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return [round(float(lo), 1), round(float(hi), 1)]


async def paired_truth(path: Path, rig: RigLink, block_id: str, kinds: Sequence[tuple[str, str, int]], *,
                       seed: int = 0) -> dict[str, Any]:
    """Each generated image against its own base image, for the neuron it targets.

    ``kinds``: (condition, summary key, intended direction: +1 raise, -1 lower)."""
    b = _Block(path, block_id)
    if not b.found:
        return {"error": f"the {block_id} block was not shown (no neuron matched)"}
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for cond, key, direction in kinds:
        per, per_ci = {}, {}
        for j, ids in sorted(b.neurons(cond).items()):
            bases = [_base_of(b.picks.get(i)) for i in ids]
            pairs = [(i, s) for i, s in zip(ids, bases, strict=True) if s is not None and s in b.images]
            if not pairs:
                continue
            test = (await rig.rates(b.stack([i for i, _ in pairs])))[:, j]
            ref = (await rig.rates(b.stack([s for _, s in pairs])))[:, j]
            per[j] = float(100 * (test.mean() - ref.mean()) / ref.mean())
            per_ci[j] = _pair_ci(test, ref, rng, paired=True)
        out[key] = _entry(per, per_ci, key, rng, direction)
    return out


def _base_of(pick: PickDoc | None) -> str | None:
    source = str(pick.details.get("source", "")) if pick is not None else ""
    return source.split(":", 1)[1] if source.startswith("base:") else None


async def adversarial_truth(path: Path, rig: RigLink) -> dict[str, Any]:
    return await paired_truth(path, rig, "adversarial-test", [("adv+", "adv_plus", 1), ("adv-", "adv_minus", -1)])


async def smooth_truth(path: Path, rig: RigLink) -> dict[str, Any]:
    return await paired_truth(path, rig, "smooth-test",
                              [("smooth_minus", "smooth_minus", -1), ("smooth_random", "smooth_random", -1)])


async def fit_alone(client: Any, session: str, epochs: int, *, timeout: float = 3600.0) -> str:
    """Train a fresh ensemble on ``session`` alone (no shared core, no warm start) and return its
    version; the server's current version is loaded back afterwards, so the session chain goes on
    from its own model."""
    import asyncio
    import time

    from wire.model import JobStarted, ListVersions, LoadVersion, ServerStatus, Status, Train, Versions

    before = (await client.request(ListVersions(), Versions)).current
    await client.request(Train(sessions=[session], max_epochs=epochs, warm_start=False), JobStarted)
    deadline = time.monotonic() + timeout
    while True:
        st = await client.request(Status(), ServerStatus)
        if st.state == "idle":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"training {session} alone did not finish within {timeout:g} s")
        await asyncio.sleep(1.0)
    new = st.current_version
    if new is None or new == before:
        raise RuntimeError(f"training {session} alone produced no new version (see the modelserver log)")
    if before is not None:
        await client.request(LoadVersion(version=before), Ok)
    return new


async def score_session(s: Session, session: str, images: np.ndarray, truth: np.ndarray,
                        version: str | None = None) -> dict[str, Any]:
    """Median Pearson r between the model's predictions for ``session`` and the ground-truth rates."""
    async with s.model_client() as client:
        pred = await client.request(Predict(session=session, images=images, version=version), Prediction)
    resp = np.asarray(pred.responses)  # (neurons, images)
    rs = [float(np.corrcoef(resp[j], truth[:, j])[0, 1]) for j in range(min(len(resp), truth.shape[1]))
          if np.std(resp[j]) > 0 and np.std(truth[:, j]) > 0]
    return {"model_version": pred.version, "median_r": float(np.median(rs)) if rs else float("nan"),
            "r_per_neuron": [round(r, 4) for r in rs]}


def heldout_trials(path: Path, block: str = "heldout") -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """(image ids, raw counts (neurons, images, repeats; NaN-padded), pixels) of a repeated block."""
    with SessionReader(path) as reader:
        docs = list(reader.documents())
        images = reader.images()
    bdoc = next((d for d in docs if isinstance(d, BlockDoc) and d.block_id == block), None)
    if bdoc is None:
        return [], np.zeros((0, 0, 0)), []
    image_of = {tid: img for tid, img, _ in bdoc.params["trials"]}
    resp = [d for d in docs if isinstance(d, ResponseDoc) and d.trial_id.removesuffix(".again") in image_of]
    ids = list(dict.fromkeys(image_of.values()))
    col = {i: n for n, i in enumerate(ids)}
    per: dict[str, list[tuple[list[str], np.ndarray]]] = {}
    for d in resp:
        per.setdefault(image_of[d.trial_id.removesuffix(".again")], []).append((d.units, np.asarray(d.counts, float)))
    # a trial lists the units the rig had seen by then: rows by unit name, in the model's order
    units = sorted({u for d in resp for u in d.units}, key=natural_key)
    row = {u: k for k, u in enumerate(units)}
    raw = np.full((len(units), len(ids), max((len(v) for v in per.values()), default=0)), np.nan)
    for img, reps in per.items():
        for r, (names, c) in enumerate(reps):
            raw[[row[u] for u in names], col[img], r] = c
    return ids, raw, [images[i] for i in ids]


async def heldout_r2er(s: Session, session: str, path: Path) -> dict[str, Any]:
    """Noise-corrected R2 (Pospisil & Bair's r2_ER) of the model on the session's repeated held-out
    block, against the recorded repeats (the block was never trained on)."""
    from modelserver.training.metrics import r2_er

    ids, raw, pix = heldout_trials(path)
    if not ids or raw.shape[2] < 2:
        return {}
    async with s.model_client() as client:
        pred = await client.request(Predict(session=session, images=np.stack(pix)), Prediction)
    r2 = r2_er(np.asarray(pred.responses)[:raw.shape[0]], raw)
    ok = r2[np.isfinite(r2)]
    return {"r2_er_median": float(np.median(ok)) if ok.size else None,
            "r2_er_per_neuron": [None if not np.isfinite(v) else round(float(v), 4) for v in r2],
            "heldout_images": len(ids), "heldout_repeats": int(raw.shape[2])}
