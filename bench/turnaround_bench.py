"""Closed-loop turnaround: from the last count of block N to the first trial of block N+1.

Runs a short real closed loop twice, each built by the controller's one assembly
(:func:`controller.assembly.assemble`) from a :class:`~controller.config.RunConfig`: a fresh
modelserver process with its own data folder (CPU unless ``--device``), a stimserver child process
with the display-free presenter, a virtual rig process (``python -m virtualrig``: the real V4
compact models when ``--data`` holds them, else synthetic Gabor units) whose spikes arrive over
LSL, no message bus, and the engine writing a session file. The protocol
(:class:`TurnaroundProtocol`) shows ``--blocks`` blocks: each block's counts are ingested and the
model retrained (block scope); from block 1 on a block also shows ``--picks`` active-learning picks:

* ``sequential``: block N+1's picks are requested after the retraining that follows block N, so
  the loop waits for them;
* ``prefetch``: block N+1's picks are requested (``generate_images prefetch``) before block N is
  shown, from the model retrained after block N-1, and computed while block N runs. Boundary 0->1
  cannot be prefetched (no model exists before block 0 is trained on) and is the same in both.
  The first prefetched request (block 2's) uses the same model as block 1's; it does not repeat
  block 1's picks because the model link excludes every image already picked or ingested;
  ``new imgs`` counts the images the stimserver did not hold yet.

Per boundary, the turnaround is ``onset of block N+1's first trial`` (stimserver flip clock) minus
the moment the engine recorded block N's last count; both are ``wire.clock`` (monotonic) seconds.
Timing proxies, put around the parts by the assembly's ``wrap`` before they are connected (model
link, stim link, session store, and the rig link whose ``load`` is the engine's image listener),
give the parts, each counted only where the loop was waiting on it inside that window (time a
prefetched request overlapped with other work is not counted):

* ``ingest``: the ingest RPC; ``retrain``: the block retraining (train job, TrainDone, versions);
* ``generate``: the active-learning request (pool build at the first, version list, scoring)
  minus its reply transfer; ``transfer``: that reply's transfer plus the stimserver load RPC's
  transfer, each measured after the session by sending the same images again (to the
  modelserver as a ``predict`` for a session that does not exist, to the stimserver as a load of
  images it already holds: both decode the whole message and answer at once);
* ``load``: the stimserver load RPC minus its transfer (id checks, copies, presenter preparation);
* ``rig``: the block's new images sent to the virtual rig, which computes their rates before it
  answers (``RigLink.load``, run before each block is shown; no cost on a real rig);
* ``store``: session documents written (images, picks, block, steps);
* ``start``: the present RPC to the first trial's onset flip; ``other``: the rest.

Boundary 0->1 ("cold": first model, pool build) is listed but left out of the medians when there
are later ones. Usage (about 5 minutes on 2 CPU cores at the defaults):

    .venv/bin/python bench/turnaround_bench.py [--blocks 5] [--images 40] [--picks 20] [--neurons 8]
        [--device cpu] [--data ../shared/data/v4] [--members 3] [--epochs 4] [--pool-crops 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.assembly import assemble, build_images  # noqa: E402
from controller.config import (  # noqa: E402
    AcquisitionConfig,
    BusConfig,
    ImagesConfig,
    ModelConfig,
    RunConfig,
    VirtualRigConfig,
)
from controller.demo import has_v4  # noqa: E402
from controller.engine import Generated  # noqa: E402
from controller.images import ImageLibrary  # noqa: E402
from controller.links import RigLink, StimLink  # noqa: E402
from controller.modellink import ProgressFn, ZmqModelLink  # noqa: E402
from controller.store import SessionWriter  # noqa: E402
from protocols.analysis import TrialData  # noqa: E402
from protocols.library.common import ProtocolBase, show_and_ingest  # noqa: E402
from protocols.plan import call  # noqa: E402
from protocols.steps import (  # noqa: E402
    ActiveParams,
    GenerateImages,
    GenerateResult,
    ImageSet,
    IngestResult,
    MatchModels,
    MatchResult,
    Plan,
    Retrain,
    RetrainResult,
)
from wire import clock  # noqa: E402
from wire.documents import EventDoc, ResponseDoc, TrialDoc  # noqa: E402
from wire.errors import CortexloopError  # noqa: E402
from wire.model import Predict, Prediction  # noqa: E402
from wire.stim import BlockResult as StimBlockResult  # noqa: E402
from wire.stim import TrialSpec  # noqa: E402

PARTS = ("ingest", "retrain", "generate", "transfer", "load", "rig", "store", "start", "other")
#: parts the engine awaits in its own step (rank 0) win over a prefetched request still running (rank 1)
FOREGROUND, BACKGROUND = 0, 1


# --- the protocol ------------------------------------------------------------------------------------
class TurnaroundProtocol(ProtocolBase):
    """Blocks of natural images plus active picks from block 1 on; ingest and retrain after each."""

    protocol: Literal["turnaround_bench"] = "turnaround_bench"
    n_blocks: int = Field(default=5, ge=2)
    normal: int = Field(default=40, ge=1, description="random pool images per block")
    picks: int = Field(default=20, ge=1, description="active-learning picks per block (from block 1)")
    prefetch: bool = False
    pick_timeout_s: float = Field(default=900.0, gt=0, description="wait this long for picks (no fallback)")

    def _request(self, i: int, prefetch: bool) -> GenerateImages:
        return GenerateImages(request_id=f"active-{i}", n_images=self.picks, prefetch=prefetch,
                              timeout_s=self.pick_timeout_s, params=ActiveParams())

    def plan(self) -> Plan:
        requested: set[int] = set()
        for i in range(self.n_blocks):
            if i >= 1 and i not in requested:  # block 0's model exists only after its retraining
                yield from call(self._request(i, prefetch=False), GenerateResult)
                requested.add(i)
            if self.prefetch and 1 <= i < self.n_blocks - 1:  # next block's picks, while this one runs
                yield from call(self._request(i + 1, prefetch=True), GenerateResult)
                requested.add(i + 1)
            sets = [ImageSet(source="pool_random", n_images=self.normal, condition="normal")]
            if i >= 1:
                sets.append(ImageSet(source="active", n_images=self.picks, request=f"active-{i}",
                                     fallback="pool_random", timeout_s=self.pick_timeout_s))
            yield from show_and_ingest(self.block(f"block-{i}", sets, repeats=1, salt=i))
            if i < self.n_blocks - 1:
                yield from call(Retrain(scope="block"), RetrainResult)


# --- timing proxies ----------------------------------------------------------------------------------
@dataclass
class Span:
    part: str
    start: float
    end: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timeline:
    """Everything the proxies saw, on ``wire.clock`` (monotonic) seconds."""

    spans: list[Span] = field(default_factory=list)
    counted: dict[str, float] = field(default_factory=dict)  # trial id -> when its counts were recorded
    onsets: dict[str, list[float]] = field(default_factory=dict)  # block id -> trial onsets (flip clock)
    fallbacks: int = 0

    def add(self, part: str, start: float, **info: Any) -> None:
        self.spans.append(Span(part, start, clock.now(), info))


class TimedModels:
    """The engine's :class:`~controller.engine.ModelLink`, timed."""

    def __init__(self, inner: ZmqModelLink, timeline: Timeline) -> None:
        self.inner, self.timeline = inner, timeline

    async def ingest(self, session_id: str, trials: list[tuple[TrialDoc, ResponseDoc]],
                     images: dict[str, np.ndarray], heldout: bool) -> IngestResult:
        t0 = clock.now()
        result = await self.inner.ingest(session_id, trials, images, heldout)
        self.timeline.add("ingest", t0)
        return result

    async def retrain(self, step: Retrain, progress: ProgressFn | None = None) -> RetrainResult:
        t0 = clock.now()
        result = await self.inner.retrain(step, progress=progress)
        self.timeline.add("retrain", t0)
        return result

    async def generate(self, step: GenerateImages, seed: int) -> Generated:
        t0 = clock.now()
        gen = await self.inner.generate(step, seed)
        self.timeline.add("generate", t0, request=step.request_id, ids=list(gen.result.image_ids))
        return gen

    async def match(self, step: MatchModels, data: TrialData, image_ids: list[str]) -> MatchResult:
        return await self.inner.match(step, data, image_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedStim:
    """The engine's :class:`~controller.links.StimLink`: ``load`` timed, ``present``'s start noted, the rest passed on."""

    def __init__(self, inner: StimLink, timeline: Timeline) -> None:
        self.inner, self.timeline = inner, timeline

    async def load(self, ids: Sequence[str], pixels: Sequence[np.ndarray], chunk: int = 256) -> int:
        t0 = clock.now()
        added = await self.inner.load(ids, pixels, chunk)
        self.timeline.add("load", t0, ids=list(ids), added=added)
        return added

    async def present(self, block_id: str, trials: list[TrialSpec], timeout: float, **awake: Any) -> StimBlockResult:
        self.timeline.add("present", clock.now(), block=block_id.split("~")[0])
        return await self.inner.present(block_id, trials, timeout, **awake)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedStore:
    """The engine's session writer: writes timed; when counts were recorded and trials' onsets noted."""

    def __init__(self, inner: SessionWriter, timeline: Timeline) -> None:
        self.inner, self.timeline = inner, timeline

    def _note(self, docs: Iterable[Any], t0: float) -> None:
        for d in docs:
            if isinstance(d, ResponseDoc):
                self.timeline.counted[d.trial_id] = t0
            elif isinstance(d, TrialDoc):
                self.timeline.onsets.setdefault(d.block_id, []).append(d.onset)
            elif isinstance(d, EventDoc) and d.what == "fallback":
                self.timeline.fallbacks += 1

    def write(self, doc: Any) -> bool:
        t0 = clock.now()
        out = self.inner.write(doc)
        self.timeline.add("store", t0)
        self._note([doc], t0)
        return out

    def write_many(self, docs: Iterable[Any]) -> int:
        docs = list(docs)
        t0 = clock.now()
        out = self.inner.write_many(docs)
        self.timeline.add("store", t0)
        self._note(docs, t0)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedRig:
    """The virtual rig's :class:`~controller.links.RigLink`: ``load`` (the engine's image listener,
    answered once the rig process has computed the rates of the new images) timed."""

    def __init__(self, inner: RigLink, timeline: Timeline) -> None:
        self.inner, self.timeline = inner, timeline

    async def load(self, ids: Sequence[str], pixels: Sequence[np.ndarray], chunk: int = 128) -> None:
        t0 = clock.now()
        await self.inner.load(ids, pixels, chunk)
        self.timeline.add("rig", t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


#: the assembly's parts (``assemble(wrap=...)``) that get a timing proxy
PROXIES: dict[str, Callable[[Any, Timeline], Any]] = {
    "models": TimedModels, "stim": TimedStim, "store": TimedStore, "rig": TimedRig}


# --- transfer probes (after the session) -------------------------------------------------------------
async def _median_time(make: Callable[[], Awaitable[object]], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = clock.now()
        await make()
        times.append(clock.now() - t0)
    return statistics.median(times)


async def probe_transfers(timeline: Timeline, link: ZmqModelLink, stim: StimLink,
                          pixels: dict[str, np.ndarray], reps: int = 3) -> None:
    """Set ``info['transfer']`` of every generate and load span: the same images sent again."""
    for span in timeline.spans:
        if span.part == "generate" and span.info["ids"]:
            batch = np.stack([pixels[i] for i in span.info["ids"]])

            async def predict(batch: np.ndarray = batch) -> None:
                with contextlib.suppress(CortexloopError):  # no such session: answered after decoding
                    await link.client.request(Predict(session="turnaround-probe-none", images=batch),
                                              Prediction, timeout=60.0)
            span.info["transfer"] = await _median_time(predict, reps)
        elif span.part == "load" and span.info["ids"]:
            send = functools.partial(stim.load, span.info["ids"], [pixels[i] for i in span.info["ids"]])
            if await send():  # evicted meanwhile: a probe would load for real; count it all as load
                span.info["transfer"] = 0.0
                continue
            span.info["transfer"] = await _median_time(send, reps)


# --- attributing a window ----------------------------------------------------------------------------
def _segments(timeline: Timeline, block: str) -> list[tuple[str, float, float, int]]:
    """(part, start, end, rank) of every timed activity; generate/load split at their transfer."""
    segs: list[tuple[str, float, float, int]] = []
    for s in timeline.spans:
        tau = min(max(0.0, float(s.info.get("transfer", 0.0))), s.end - s.start)
        if s.part == "generate":  # compute, then the reply travels back
            segs += [("generate", s.start, s.end - tau, BACKGROUND), ("transfer", s.end - tau, s.end, BACKGROUND)]
        elif s.part == "load":  # the request travels, then the server loads
            segs += [("transfer", s.start, s.start + tau, FOREGROUND), ("load", s.start + tau, s.end, FOREGROUND)]
        elif s.part == "present":
            if s.info["block"] == block and timeline.onsets.get(block):
                segs.append(("start", s.start, min(timeline.onsets[block]), FOREGROUND))
        else:
            segs.append((s.part, s.start, s.end, FOREGROUND))
    return segs


def attribute(segs: list[tuple[str, float, float, int]], t0: float, t1: float) -> dict[str, float]:
    """Seconds of [t0, t1] per part: each instant goes to the first foreground activity running then,
    else to a background one, else to ``other``. The parts sum to ``t1 - t0``."""
    inside = [s for s in segs if s[2] > t0 and s[1] < t1]
    cuts = sorted({t0, t1, *(min(max(x, t0), t1) for s in inside for x in s[1:3])})
    out = dict.fromkeys(PARTS, 0.0)
    for a, b in itertools.pairwise(cuts):
        mid = (a + b) / 2
        running = [s for s in inside if s[1] <= mid < s[2]]
        part = min(running, key=lambda s: s[3])[0] if running else "other"
        out[part] += b - a
    return out


@dataclass
class Boundary:
    after: str
    before: str
    total: float
    parts: dict[str, float]
    new_images: int


def boundaries(timeline: Timeline, n_blocks: int) -> list[Boundary]:
    out = []
    for i in range(n_blocks - 1):
        before, after = f"block-{i + 1}", f"block-{i}"
        last = max(t for tid, t in timeline.counted.items() if tid.rsplit("/", 1)[0] == after)
        first = min(timeline.onsets[before])
        parts = attribute(_segments(timeline, before), last, first)
        added = sum(s.info["added"] for s in timeline.spans if s.part == "load" and last <= s.start <= first)
        out.append(Boundary(after, before, first - last, parts, added))
    return out


# --- one variant -------------------------------------------------------------------------------------
@dataclass
class Options:
    blocks: int = 5
    images: int = 40
    picks: int = 20
    neurons: int = 8
    device: str = "cpu"
    data: Path | None = REPO.parent / "shared" / "data" / "v4"
    members: int = 3
    epochs: int = 4
    pool_crops: int = 1500
    frames: int = 4
    threads: int = 1


@dataclass
class VariantResult:
    variant: str
    exit: str
    seconds: float
    fallbacks: int
    boundaries: list[Boundary]
    median: dict[str, float]  # over the warm boundaries (all when there is only the cold one)


def _median(bs: list[Boundary]) -> dict[str, float]:
    warm = bs[1:] or bs
    med = {p: statistics.median(b.parts[p] for b in warm) for p in PARTS}
    med["total"] = statistics.median(b.total for b in warm)
    med["total-rig"] = statistics.median(b.total - b.parts["rig"] for b in warm)
    return med


def run_config(variant: str, opts: Options, data: Path | None, out: Path) -> RunConfig:
    """One variant's rig configuration: a modelserver child with its own data folder under ``out``,
    a virtual rig child (the V4 compact models of ``data``, else synthetic units), no bus."""
    if data is not None:
        images = ImagesConfig(v4_dir=data)
        rig = VirtualRigConfig(data=data, neurons=opts.neurons, device=opts.device)
    else:
        images = ImagesConfig(synthetic=max(4 * opts.images, 64))
        rig = VirtualRigConfig(n_units=opts.neurons * 2, seed=1, device=opts.device)
    model = ModelConfig(kind="start", data_dir=out / f"modelserver-{variant}", device=opts.device,
                        threads=opts.threads, members=opts.members, max_epochs=opts.epochs,
                        block_epochs=opts.epochs, session_epochs=opts.epochs, pool_crops=opts.pool_crops,
                        v4_dir=data, timeout=120)
    return RunConfig(out_dir=out, rig="bench", subject="virtual", session_id=f"turnaround-{variant}", seed=3,
                     images=images, acquisition=AcquisitionConfig(kind="virtual", virtual=rig), model=model,
                     bus=BusConfig(broker="none"))


async def run_variant(variant: str, opts: Options, data: Path | None, out: Path, lib: ImageLibrary | None = None,
                      announce: Callable[[str], None] | None = None) -> VariantResult:
    """One session through the assembly, its parts timed; ``announce`` gets the rig's ground truth
    in words once the session is assembled."""
    t_start = time.monotonic()
    timeline = Timeline()
    proto = TurnaroundProtocol.model_validate({
        "protocol": "turnaround_bench", "seed": 1, "n_blocks": opts.blocks, "normal": opts.images,
        "picks": opts.picks, "prefetch": variant == "prefetch",
        "timing": {"on_frames": opts.frames, "off_frames": opts.frames}})
    timed: dict[str, Any] = {}

    def wrap(name: str, part: Any) -> Any:
        if name not in PROXIES:
            return part
        timed[name] = PROXIES[name](part, timeline)
        return timed[name]

    async with assemble(run_config(variant, opts, data, out), proto, images=lib, wrap=wrap) as s:
        if announce is not None:
            announce((await s.rig.status()).description if s.rig is not None else "no virtual rig")
        stop = await s.run()
        if stop.exit_status == "success":
            await probe_transfers(timeline, timed["models"].inner, timed["stim"].inner, s.engine.pixels)
    if stop.exit_status != "success":
        raise CortexloopError(f"{variant}: the session ended {stop.exit_status}: {stop.reason}")
    bs = boundaries(timeline, opts.blocks)
    return VariantResult(variant, stop.exit_status, time.monotonic() - t_start, timeline.fallbacks, bs, _median(bs))


# --- set-up, output, entry point ---------------------------------------------------------------------
def device_name(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu ({cpu}, {os.cpu_count()} cores, {threads} torch thread(s) per process)"


def format_variant(r: VariantResult) -> str:
    cols = [*PARTS, "total", "total-rig"]
    head = f"{'boundary':<16}" + "".join(f"{c:>10}" for c in cols) + f"{'new imgs':>10}"
    lines = [f"{r.variant}: {r.seconds:.0f} s, exit {r.exit}, {r.fallbacks} fallback(s)", head]
    for k, b in enumerate(r.boundaries):
        row = [*(b.parts[p] for p in PARTS), b.total, b.total - b.parts["rig"]]
        name = f"{b.after[6:]}->{b.before[6:]}" + (" (cold)" if k == 0 and len(r.boundaries) > 1 else "")
        lines.append(f"{name:<16}" + "".join(f"{v:>10.3f}" for v in row) + f"{b.new_images:>10d}")
    label = "median (warm)" if len(r.boundaries) > 1 else "median"
    lines.append(f"{label:<16}" + "".join(f"{r.median[c]:>10.3f}" for c in cols))
    return "\n".join(lines)


def format_comparison(results: list[VariantResult]) -> str:
    cols = [*PARTS, "total", "total-rig"]
    lines = [f"{'median s':<12}" + "".join(f"{r.variant:>12}" for r in results)]
    lines += [f"{c:<12}" + "".join(f"{r.median[c]:>12.3f}" for r in results) for c in cols]
    return "\n".join(lines)


@contextlib.contextmanager
def child_threads(n: int) -> Iterator[None]:
    """Child processes (modelserver, stimserver) start with ``n`` OpenMP/torch threads."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


async def run_bench(opts: Options, out: Path) -> dict[str, Any]:
    data = opts.data if has_v4(opts.data) else None
    lib, _ = build_images(run_config("sequential", opts, data, out))  # loaded once, shown by both variants
    device = device_name(opts.device, opts.threads)
    truth_name = ""

    def announce(truth: str) -> None:
        nonlocal truth_name
        if not truth_name:
            truth_name = truth
            print(f"turnaround bench: {truth}; {len(lib)} images ({lib.name}); {opts.blocks} blocks of "
                  f"{opts.images} images + {opts.picks} picks; {opts.members} members, {opts.epochs} epochs; "
                  f"{device}", flush=True)

    results = []
    for variant in ("sequential", "prefetch"):
        results.append(await run_variant(variant, opts, data, out, lib, announce))
        print(format_variant(results[-1]), flush=True)
    print(f"\nturnaround parts, median over warm boundaries, {device}:\n{format_comparison(results)}")
    return {"device": device, "ground_truth": truth_name, "options": {k: str(v) for k, v in asdict(opts).items()},
            "variants": {r.variant: asdict(r) for r in results}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    ap.add_argument("--blocks", type=int, default=d.blocks, help="blocks per session (>= 2)")
    ap.add_argument("--images", type=int, default=d.images, help="random natural images per block")
    ap.add_argument("--picks", type=int, default=d.picks, help="active-learning picks per block from block 1")
    ap.add_argument("--neurons", type=int, default=d.neurons, help="ground-truth V4 models (synthetic: x2 units)")
    ap.add_argument("--device", default=d.device, help="torch device of the modelserver and the rig")
    ap.add_argument("--data", type=Path, default=d.data, help="V4 data folder (absent: synthetic)")
    ap.add_argument("--members", type=int, default=d.members, help="ensemble members")
    ap.add_argument("--epochs", type=int, default=d.epochs, help="epochs per block retraining")
    ap.add_argument("--pool-crops", type=int, default=d.pool_crops, help="candidate pool of the picks")
    ap.add_argument("--frames", type=int, default=d.frames, help="on and off frames per trial (60 Hz)")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch threads per process")
    ap.add_argument("--out", type=Path, default=None, help="keep session files here (default: a temp folder)")
    a = ap.parse_args(argv)
    if a.blocks < 2:
        ap.error("--blocks must be at least 2 (a turnaround is between two blocks)")
    opts = Options(blocks=a.blocks, images=a.images, picks=a.picks, neurons=a.neurons, device=a.device,
                   data=a.data, members=a.members, epochs=a.epochs, pool_crops=a.pool_crops, frames=a.frames,
                   threads=a.threads)
    import torch

    torch.set_num_threads(opts.threads)
    with child_threads(opts.threads), contextlib.ExitStack() as stack:
        out = a.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="turnaround-")))
        out.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run_bench(opts, out))


if __name__ == "__main__":
    main()
