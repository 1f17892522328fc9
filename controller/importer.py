"""Import recorded V4 sessions (``../shared/data/v4`` layout) into session files: ``cortexloop import-v4``.

Each session becomes one session file, written as if a ``script`` protocol had shown its images
block by block: start, image, block, trial, response and step documents, so that it can be
read, reported, exported and replayed (``cortexloop replay``) like any recorded session.

* Repeat-averaged responses (``responses_avg``, float (neurons, images)): one trial per image,
  whose counts are the averaged counts, kept as float64 (not rounded: they are means).
* Raw responses (``responses_raw``, (neurons, images, repeats), NaN in unused repeat slots):
  one trial per recorded repeat, counts as int32 (they are whole spike counts); NaN slots are
  no trial. Within a block every image's first repeat comes first, then the second, and so on.

The files carry no timing: trial onsets are nominal (one trial every ``trial_period`` seconds,
image on for 100 ms), and the start document says so. Units are named by their row, ``"0"``...
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from controller.images import read_zip_images
from controller.store import SessionWriter
from protocols.library import ScriptProtocol
from protocols.steps import AnyStep, BlockResult, CountsResult, ImageSet, PresentBlock, WaitForCounts
from wire.base import image_id
from wire.documents import BlockDoc, ImageDoc, ResponseDoc, StartDoc, StepDoc, StopDoc, TrialDoc
from wire.errors import InvalidRequest, NotFound, StoreError

__all__ = ["import_v4", "load_v4_responses"]

Kind = Literal["auto", "avg", "raw"]
CONDITION = "recorded"
WINDOW = (0.0, 0.1)  # the published counts are over a 100 ms window; its latency is not given


def load_v4_responses(data_dir: Path, session: str, kind: Kind = "auto") -> tuple[np.ndarray, str]:
    """(responses, "avg" | "raw"): raw (neurons, images, repeats) when asked, or found with ``auto``."""
    raw = data_dir / "responses_raw" / f"responses_{session}.npy"
    avg = data_dir / "responses_avg" / f"responses_{session}.npy"
    path = raw if kind == "raw" or (kind == "auto" and raw.is_file()) else avg
    if not path.is_file():
        raise NotFound(f"no {'raw' if path == raw else 'repeat-averaged'} responses for session {session} at {path}")
    resp = np.load(path, allow_pickle=False)
    want = 3 if path == raw else 2
    if resp.ndim != want:
        raise InvalidRequest(f"{path}: expected {want} dimensions, got shape {resp.shape}")
    return resp, "raw" if path == raw else "avg"


def _trials(resp: np.ndarray, kind: str, block: range) -> list[tuple[int, np.ndarray]]:
    """(image index, counts) of each trial of the images in ``block``, in showing order."""
    if kind == "avg":
        return [(i, resp[:, i].astype(np.float64)) for i in block]
    out = []
    for r in range(resp.shape[2]):
        for i in block:
            c = resp[:, i, r]
            if np.isnan(c).all():
                continue
            if np.isnan(c).any():  # never seen in the published files; kept, as floats, rather than dropped
                out.append((i, c.astype(np.float64)))
            else:
                out.append((i, c.astype(np.int32)))
    return out


def import_v4(data_dir: str | Path, session: str, out_dir: str | Path, *, kind: Kind = "auto",
              block_size: int = 300, trial_period: float = 0.2, overwrite: bool = False) -> Path:
    """Write ``out_dir/v4-<session>.h5`` from the images and responses of one V4 session."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if block_size < 1:
        raise InvalidRequest("block_size must be >= 1")
    zpath = data_dir / "images" / f"images_{session}.zip"
    if not zpath.is_file():
        raise NotFound(f"no image archive for session {session} at {zpath}")
    resp, found = load_v4_responses(data_dir, session, kind)
    try:
        images = read_zip_images(zpath)
    except zipfile.BadZipFile as exc:
        raise InvalidRequest(f"{zpath} is not a readable zip archive: {exc}") from exc
    if resp.shape[1] != len(images):
        raise InvalidRequest(f"session {session}: {len(images)} images but responses for {resp.shape[1]}")
    ids = [image_id(im) for im in images]
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"session {session}: some images are identical; image ids would collide")
    units = [str(j) for j in range(resp.shape[0])]
    sid = f"v4-{session}"
    path = out_dir / f"{sid}.h5"
    out_dir.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise StoreError(f"{path} exists (pass overwrite to replace it)")

    blocks = [range(a, min(a + block_size, len(images))) for a in range(0, len(images), block_size)]
    plan = [(f"v4-{b}", _trials(resp, found, rng)) for b, rng in enumerate(blocks)]
    steps: list[AnyStep] = []
    for block_id, trials in plan:
        steps += [PresentBlock(block_id=block_id, images=[ImageSet(image_ids=[ids[i] for i, _ in trials],
                                                                   condition=CONDITION)],
                               shuffle=False, on_frames=6, off_frames=6),
                  WaitForCounts(block_id=block_id)]
    protocol = ScriptProtocol(steps=steps, seed=0)

    t = 0.0
    n_trials = 0
    with SessionWriter.create(path, overwrite=overwrite) as store:
        store.write(StartDoc(session_id=sid, protocol=protocol.model_dump(mode="json"), code_version=_version(),
                             subject=session, rig="imported", config={"seed": 0, "imported": {
                                 "data_dir": str(data_dir), "session": session, "responses": found,
                                 "timing": f"nominal: none in the source; one trial every {trial_period:g} s",
                                 "window": "100 ms counting window; its latency after onset is not given"}}))
        for index, (block_id, trials) in enumerate(plan):
            shown = list(dict.fromkeys(i for i, _ in trials))
            store.write_many(ImageDoc(image_id=ids[i], pixels=images[i], source=f"v4:{session}:{i}") for i in shown)
            tids = [f"{block_id}/{n}" for n in range(len(trials))]
            store.write(BlockDoc(block_id=block_id, index=index, source=CONDITION, n_trials=len(trials), params={
                "step": steps[2 * index].model_dump(mode="json"), "fallbacks": [],
                "trials": [[tid, ids[i], CONDITION] for tid, (i, _) in zip(tids, trials, strict=True)]}))
            docs: list[TrialDoc | ResponseDoc] = []
            for n, (tid, (i, counts)) in enumerate(zip(tids, trials, strict=True)):
                docs.append(TrialDoc(trial_id=tid, block_id=block_id, index=n, image_id=ids[i], onset=t,
                                     offset=t + 0.1, on_frames=6, dropped_frames=0))
                docs.append(ResponseDoc(trial_id=tid, units=units, counts=counts, window=WINDOW, onset_acq=t))
                t += trial_period
            store.write_many(docs)
            n_trials += len(trials)
            block = BlockResult(block_id=block_id, n_trials=len(trials), image_ids=[ids[i] for i in shown],
                                conditions={ids[i]: CONDITION for i in shown})
            finite = np.concatenate([c[np.isfinite(c)] for _, c in trials])
            counted = CountsResult(block_id=block_id, n_trials=len(trials), n_neurons=len(units),
                                   mean_count=float(finite.mean()) if finite.size else 0.0)
            store.write(StepDoc(index=2 * index, step=steps[2 * index].model_dump(mode="json"),
                                result=block.model_dump(mode="json")))
            store.write(StepDoc(index=2 * index + 1, step=steps[2 * index + 1].model_dump(mode="json"),
                                result=counted.model_dump(mode="json")))
        store.write(StopDoc(exit_status="success", reason=f"imported from {data_dir}", n_trials=n_trials))
    return path


def _version() -> str:
    from controller import __version__

    return __version__
