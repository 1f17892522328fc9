"""Run any protocol without servers: synthetic results, the steps it would take, and checks.

The simulator is an executor like the engine, but every step is answered from a synthetic
world: images are fake content hashes, neurons are Poisson units with known gains per
condition (:data:`DEFAULT_EFFECTS`), the modelserver matches a fraction of the neurons and
generates labelled images (or fails, for the generators in ``fail_generators``), and the
operator answers pauses from a script. Analyses run for real (:mod:`protocols.analysis`)
on the synthetic counts, so a causal test's expected effects show in its report.

While running it checks what only a run can: unique block and request ids, references to
blocks/requests that exist, analysed conditions that were shown. Every problem found is
raised at the end in one :class:`ProtocolValidationError`.

``cortexloop simulate FILE`` calls :func:`simulate_file` and prints :meth:`SimulationReport.text`.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from protocols.analysis import TrialData, run_analysis
from protocols.errors import Problem, ProtocolValidationError
from protocols.library import ProtocolBase
from protocols.library.schedule import ScheduleProtocol, ScheduleSimulation, simulate_schedule
from protocols.loader import load_protocol
from protocols.plan import drive
from protocols.steps import (
    Analyse,
    AnalysisResult,
    BlockResult,
    CountsResult,
    DotsParams,
    GenerateImages,
    GenerateResult,
    ImageSet,
    Ingest,
    IngestResult,
    MatchModels,
    MatchResult,
    NeuronMatch,
    OperatorResult,
    PauseForOperator,
    Plan,
    PresentBlock,
    Result,
    Retrain,
    RetrainResult,
    Step,
    WaitForCounts,
)
from wire.errors import ModelError

#: Gain of the targeted neuron's rate per condition (all neurons for untargeted conditions).
DEFAULT_EFFECTS: dict[str, float] = {
    "max_normal": 1.5, "max_synth": 2.0, "adv+": 1.4, "adv-": 0.6,
    "smooth_minus": 0.7, "smooth_random": 0.97, "gaudy": 1.2,
}


@dataclass
class SimConfig:
    n_neurons: int = 20
    seed: int = 0
    effects: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EFFECTS))
    match_fraction: float = 0.6
    fail_generators: frozenset[str] = frozenset()
    operator: list[str] = field(default_factory=list)  # answers to pauses, in order ("resume"/"abort")
    refresh_hz: float = 60.0


@dataclass(frozen=True)
class SimRecord:
    index: int
    step: Step
    result: Result


@dataclass
class SimulationReport:
    protocol: str
    records: list[SimRecord]
    trials: TrialData
    frames: int
    refresh_hz: float

    @property
    def steps(self) -> list[Step]:
        return [r.step for r in self.records]

    @property
    def analyses(self) -> list[AnalysisResult]:
        return [r.result for r in self.records if isinstance(r.result, AnalysisResult)]

    def text(self) -> str:
        lines = [f"protocol {self.protocol}: {len(self.records)} steps, {self.trials.counts.shape[0]} trials, "
                 f"~{self.frames / self.refresh_hz / 60:.1f} min of stimulus at {self.refresh_hz:g} Hz"]
        for r in self.records:
            lines.append(f"{r.index:4d} {r.step.kind:<19} {describe(r.step)}  ->  {describe_result(r.result)}")
        for a in self.analyses:
            lines.extend("     " + ln for ln in a.summary.splitlines())
        return "\n".join(lines)


def describe(step: Step) -> str:
    """One line naming what a step asks for."""
    if isinstance(step, PresentBlock):
        sets = ", ".join(f"{s.label}({'ids' if s.image_ids else s.source}"
                         f"{'<' + s.request if s.request else ''})x{s.n_images or len(s.image_ids or []) or '*'}"
                         for s in step.images)
        return f"{step.block_id}: {sets}; repeats {step.repeats}, {step.on_frames}+{step.off_frames} frames"
    if isinstance(step, WaitForCounts):
        return step.block_id
    if isinstance(step, Ingest):
        return ",".join(step.block_ids) + (" (held out)" if step.heldout else "")
    if isinstance(step, Retrain):
        return f"scope {step.scope}"
    if isinstance(step, GenerateImages):
        neurons = getattr(step.params, "neurons", None)
        tgt = f" for {len(neurons)} neurons" if neurons else ""
        return f"{step.request_id}: {step.params.generator} x{step.total_images}{tgt}" + (
            " (prefetch)" if step.prefetch else "")
    if isinstance(step, MatchModels):
        return f"on {','.join(step.heldout_blocks)}, {step.metric} >= {step.min_score}"
    if isinstance(step, Analyse):
        vs = f" vs {step.baseline}" if step.baseline else ""
        return f"{step.name}: {step.analysis} {','.join(step.conditions)}{vs}"
    if isinstance(step, PauseForOperator):
        return step.message
    return ""


def describe_result(result: Result) -> str:
    if isinstance(result, BlockResult):
        fb = f", fallback for {result.fallbacks}" if result.fallbacks else ""
        return f"{result.status}: {result.n_trials} trials of {len(result.image_ids)} images{fb}"
    if isinstance(result, CountsResult):
        return f"{result.n_trials} trials x {result.n_neurons} neurons, mean {result.mean_count:.2f}"
    if isinstance(result, IngestResult):
        return f"dataset {result.dataset_version}: {result.n_images} images, {result.n_trials} trials"
    if isinstance(result, RetrainResult):
        return f"model {result.model_version}"
    if isinstance(result, GenerateResult):
        return f"{result.status}" + (f" ({len(result.image_ids)} images)" if result.image_ids else "") + (
            f": {result.error}" if result.error else "")
    if isinstance(result, MatchResult):
        return f"{len(result.matches)}/{result.n_neurons} neurons matched"
    if isinstance(result, AnalysisResult):
        return "done"
    if isinstance(result, OperatorResult):
        return result.action
    return result.kind


def _fake_id(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


class Simulator:
    """The synthetic executor. ``execute(step)`` answers one step; :meth:`run` drives a plan."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.cfg = config or SimConfig()
        self.rng = np.random.default_rng(self.cfg.seed)
        self.rates = self.rng.gamma(4.0, 2.0, size=self.cfg.n_neurons)
        self.problems: list[Problem] = []
        self.blocks: dict[str, BlockResult] = {}
        self.requests: dict[str, tuple[GenerateImages, GenerateResult]] = {}
        self.counts: list[np.ndarray] = []
        self.trial_conditions: list[str] = []
        self.trial_blocks: list[str] = []
        self.trial_images: list[str] = []
        self.ingested: set[str] = set()
        self.model_version = 0
        self.frames = 0
        self._fresh = 0
        self._operator = list(self.cfg.operator)

    # --- driving ---------------------------------------------------------------------------
    def run(self, plan: Plan, name: str = "plan") -> SimulationReport:
        records: list[SimRecord] = []

        def execute(step: Step) -> Result:
            result = self.execute(step)
            records.append(SimRecord(len(records), step, result))
            return result

        drive(plan, execute)
        if self.problems:
            raise ProtocolValidationError(self.problems, f"simulation of {name}")
        return SimulationReport(name, records, self.trials(), self.frames, self.cfg.refresh_hz)

    def trials(self) -> TrialData:
        counts = np.concatenate(self.counts) if self.counts else np.zeros((0, self.cfg.n_neurons))
        return TrialData(counts, list(self.trial_conditions), list(self.trial_blocks),
                         images=list(self.trial_images))

    def problem(self, step: Step, index_path: str, message: str) -> None:
        self.problems.append(Problem(index_path, f"{step.kind}: {message}"))

    def execute(self, step: Step) -> Result:
        if isinstance(step, PresentBlock):
            return self._present(step)
        if isinstance(step, WaitForCounts):
            return self._wait(step)
        if isinstance(step, Ingest):
            return self._ingest(step)
        if isinstance(step, Retrain):
            self.model_version += 1
            return RetrainResult(scope=step.scope, model_version=f"sim-{self.model_version}",
                                 status="done" if step.wait else "started", heldout_score=0.55)
        if isinstance(step, GenerateImages):
            return self._generate(step)
        if isinstance(step, MatchModels):
            return self._match(step)
        if isinstance(step, Analyse):
            return self._analyse(step)
        if isinstance(step, PauseForOperator):
            action = self._operator.pop(0) if self._operator else "resume"
            return OperatorResult(action="abort" if action == "abort" else "resume", operator="simulator")
        raise ProtocolValidationError([Problem("kind", f"unknown step {step!r}")])

    # --- steps -------------------------------------------------------------------------------
    def _pool(self, source: str, n: int, seed: int | None) -> list[str]:
        if source == "normal" and seed is not None:
            return [_fake_id("normal", seed, i) for i in range(n)]
        self._fresh += n
        return [_fake_id(source, self.cfg.seed, self._fresh - n + i) for i in range(n)]

    def _resolve(self, step: PresentBlock, s: ImageSet) -> tuple[list[str], list[str], bool]:
        """(image ids, condition per image, fallback used) of one image set."""
        if s.image_ids is not None:
            return list(s.image_ids), [s.label] * len(s.image_ids), False
        if s.request is not None or s.generated:
            if s.request is None:
                try:
                    inline = s.inline_request(step.block_id)
                except ValidationError as exc:
                    err = exc.errors(include_url=False)[0]
                    self.problem(step, f"{step.block_id}.images", f"set {s.label!r}: inline {s.source} "
                                 f"parameters: {'.'.join(map(str, err['loc']))}: {err['msg']}")
                    return [], [], False
                self._generate(inline)
            entry = self.requests.get(s.request or f"{step.block_id}.{s.label}")
            if entry is None:
                self.problem(step, f"{step.block_id}.images", f"request {s.request!r} was never made")
                return [], [], False
            req, res = entry
            if res.status == "failed":
                if s.fallback is None:
                    raise ModelError(f"request {s.request!r} failed and image set {s.label!r} has no fallback")
                n = s.n_images or req.total_images
                return self._pool(s.fallback, n, s.seed), [f"{s.label}/fallback"] * n, True
            ids = list(res.image_ids)
            labels = res.labels or [""] * len(ids)
            return ids, [f"{s.label}/{lb}" if lb else s.label for lb in labels], False
        assert s.source is not None
        return self._pool(s.source, s.n_images, s.seed), [s.label] * s.n_images, False

    def _gain(self, label: str) -> np.ndarray:
        head, _, tail = label.partition("/")
        gain = np.ones(self.cfg.n_neurons)
        effect = self.cfg.effects.get(head, 1.0)
        if tail == "fallback":
            return gain
        if tail.startswith("neuron="):
            k = int(tail.split("=", 1)[1])
            if 0 <= k < self.cfg.n_neurons:
                gain[k] = effect
            return gain
        size = None
        for part in tail.split(","):
            key, _, v = part.partition("=")
            if key == "size":
                size = float(v)
        if size is not None:  # dots: every neuron prefers bigger dots, by its own slope
            slopes = np.linspace(0.1, 0.6, self.cfg.n_neurons)
            return gain * (1.0 + slopes * size)
        return gain * effect

    def _present(self, step: PresentBlock) -> BlockResult:
        if step.block_id in self.blocks:
            self.problem(step, step.block_id, f"block id {step.block_id!r} used twice")
        ids: list[str] = []
        conds: list[str] = []
        fallbacks: list[str] = []
        for s in step.images:
            i, c, fb = self._resolve(step, s)
            ids += i
            conds += c
            if fb:
                fallbacks.append(s.label)
        order = np.repeat(np.arange(len(ids)), step.repeats)
        if step.shuffle:
            np.random.default_rng(step.seed).shuffle(order)
        rates = np.empty((len(order), self.cfg.n_neurons))
        for t, i in enumerate(order):
            image_gain = np.random.default_rng(int(ids[i][:8], 16)).lognormal(0.0, 0.15, self.cfg.n_neurons)
            rates[t] = self.rates * image_gain * self._gain(conds[i])
        self.counts.append(self.rng.poisson(rates).astype(np.float64))
        self.trial_conditions += [conds[i] for i in order]
        self.trial_blocks += [step.block_id] * len(order)
        self.trial_images += [ids[i] for i in order]
        self.frames += len(order) * (step.on_frames + step.off_frames)
        result = BlockResult(block_id=step.block_id, n_trials=len(order), image_ids=ids,
                             conditions=dict(zip(ids, conds, strict=True)), fallbacks=fallbacks)
        self.blocks[step.block_id] = result
        return result

    def _known_blocks(self, step: Step, blocks: Sequence[str]) -> list[str]:
        missing = [b for b in blocks if b not in self.blocks]
        for b in missing:
            self.problem(step, b, f"block {b!r} has not been presented")
        return [b for b in blocks if b in self.blocks]

    def _wait(self, step: WaitForCounts) -> CountsResult:
        if not self._known_blocks(step, [step.block_id]):
            return CountsResult(block_id=step.block_id, n_trials=0, n_neurons=self.cfg.n_neurons, mean_count=0.0)
        mask = np.asarray(self.trial_blocks) == step.block_id
        counts = self.trials().counts[mask]
        return CountsResult(block_id=step.block_id, n_trials=int(mask.sum()), n_neurons=self.cfg.n_neurons,
                            mean_count=float(counts.mean()) if counts.size else 0.0)

    def _ingest(self, step: Ingest) -> IngestResult:
        self.ingested.update(self._known_blocks(step, step.block_ids))
        images = {i for b in self.ingested for i in self.blocks[b].image_ids}
        n_trials = sum(self.blocks[b].n_trials for b in self.ingested)
        return IngestResult(n_images=len(images), n_trials=n_trials, dataset_version=f"d{len(self.ingested)}")

    def _generate(self, step: GenerateImages) -> GenerateResult:
        if step.request_id in self.requests:
            self.problem(step, step.request_id, f"request id {step.request_id!r} used twice")
        p = step.params
        if p.generator in self.cfg.fail_generators:
            result = GenerateResult(request_id=step.request_id, status="failed",
                                    error=f"simulated modelserver failure ({p.generator})")
        else:
            ids: list[str] = []
            labels: list[str] = []
            bases: list[str] = []
            if isinstance(p, DotsParams):
                for size in p.sizes:
                    for x, y in p.locations:
                        for n in p.numbers:
                            ids.append(_fake_id("dots", size, x, y, n, p.color))
                            labels.append(f"size={size:g},loc={x:g}:{y:g},n={n}")
            else:
                neurons = getattr(p, "neurons", None)
                given = getattr(p, "base_ids", None)
                per = step.n_images or 0
                targets = neurons if neurons else [None]
                for j, k in enumerate(targets):
                    for i in range(per):
                        ids.append(_fake_id(step.request_id, p.generator, k, i, self.cfg.seed))
                        if k is not None:
                            labels.append(f"neuron={k}")
                        if hasattr(p, "base_ids"):
                            bases.append(given[(j * per + i) % len(given)] if given else
                                         _fake_id("base", self.cfg.seed, k, i))
            result = GenerateResult(
                request_id=step.request_id, status="pending" if step.prefetch else "ready",
                image_ids=[] if step.prefetch else ids, labels=(labels or None) if not step.prefetch else None,
                base_ids=(bases or None) if not step.prefetch else None, model_version=f"sim-{self.model_version}")
            # what the engine would hold once the prefetch completes
            self.requests[step.request_id] = (step, result.model_copy(update={
                "status": "ready", "image_ids": ids, "labels": labels or None, "base_ids": bases or None}))
            return result
        self.requests[step.request_id] = (step, result)
        return result

    def _match(self, step: MatchModels) -> MatchResult:
        blocks = self._known_blocks(step, step.heldout_blocks)
        if "match_models" in self.cfg.fail_generators:
            raise ModelError("simulated modelserver failure (match_models)")
        n = self.cfg.n_neurons
        rng = np.random.default_rng(self.cfg.seed + 1)
        n_good = round(self.cfg.match_fraction * n) if blocks else 0
        scores = np.concatenate([rng.uniform(step.min_score, 0.9, n_good),
                                 rng.uniform(-0.2, step.min_score, n - n_good) if step.min_score > -0.2
                                 else np.full(n - n_good, -1.0)])
        scores = scores[rng.permutation(n)]
        models = step.models or [f"model-{k}" for k in range(n)]
        matches = [NeuronMatch(neuron=k, model_id=models[k % len(models)], score=float(scores[k]))
                   for k in np.argsort(-scores) if scores[k] >= step.min_score]
        if step.max_neurons is not None:
            matches = matches[:step.max_neurons]
        return MatchResult(matches=matches, n_neurons=n)

    def _analyse(self, step: Analyse) -> AnalysisResult:
        blocks = self._known_blocks(step, step.blocks)
        shown = {c.split("/", 1)[0] for b in blocks for c in self.blocks[b].conditions.values()}
        for c in [*step.conditions, *([step.baseline] if step.baseline else [])]:
            if c not in shown:
                self.problem(step, step.name, f"condition {c!r} is not shown in blocks {step.blocks}")
        if not blocks or self.problems:
            return AnalysisResult(name=step.name, analysis=step.analysis, summary="skipped (invalid protocol)")
        return run_analysis(step, self.trials())


def simulate(protocol: ProtocolBase | Plan, config: SimConfig | None = None) -> SimulationReport:
    """Run ``protocol`` (or a bare plan) in the synthetic world and return what happened."""
    if isinstance(protocol, ProtocolBase):
        return Simulator(config).run(protocol.plan(), protocol.protocol)
    return Simulator(config).run(protocol)


def simulate_session(protocols: Sequence[ProtocolBase], config: SimConfig | None = None) -> list[SimulationReport]:
    """Run protocols one after another in one session (later ones may use earlier blocks)."""
    sim = Simulator(config)
    return [sim.run(p.plan(), p.protocol) for p in protocols]


def simulate_file(path: str | Path, *more: str | Path,
                  config: SimConfig | None = None) -> list[SimulationReport | ScheduleSimulation]:
    """Load, validate and simulate protocol files as one session (``cortexloop simulate FILE...``);
    a schedule file is simulated stage by stage, each session its own (:func:`simulate_schedule`)."""
    protocols = [load_protocol(p) for p in (path, *more)]
    if not any(isinstance(p, ScheduleProtocol) for p in protocols):
        return list(simulate_session(protocols, config))
    return [simulate_schedule(p, config) if isinstance(p, ScheduleProtocol) else simulate(p, config)
            for p in protocols]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m protocols.simulate [--neurons N] FILE...``: print the steps; exit 1 on problems."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = SimConfig()
    if len(args) >= 2 and args[0] == "--neurons":
        cfg = SimConfig(n_neurons=int(args[1]))
        args = args[2:]
    if not args:
        print("usage: python -m protocols.simulate [--neurons N] FILE...", file=sys.stderr)
        return 2
    try:
        reports = simulate_file(*args, config=cfg)
    except ProtocolValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n\n".join(r.text() for r in reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
