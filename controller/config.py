"""The rig configuration: every part of a session, each started here or reached at its endpoints.

Everything has an embedded default, so ``cortexloop run PROTOCOL.yaml`` is the closed loop on a
laptop: a stimserver child process (display-free presenter unless ``presenter: psychopy``), a
virtual rig process (``python -m virtualrig``: synthetic Gabor-energy neurons, or real V4 compact
models) whose spikes arrive over LSL with a photodiode sync stream, a modelserver child process
whose data folder persists under the output folder, a synthetic image library, and an in-process
MQTT broker (amqtt) whose operator credentials are written next to the session file. A lab's YAML
file replaces the parts it has (``cortexloop run PROTOCOL.yaml --config rig.yaml``);
``controller.assembly`` builds a running session from it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wire.behavior import FixationRule
from wire.errors import ProtocolError
from wire.security import CurveClient, CurveServer
from wire.stim import FixationSpot

#: default TCP ports of servers started by hand (children started by a session bind port 0)
STIM_PORTS = (5560, 5561)
MODEL_PORTS = (5570, 5571)


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StimConfig(_Cfg):
    rpc: str | None = Field(default=None, description="RPC endpoint of a running stimserver (None: start one)")
    events: str | None = Field(default=None, description="its trial-event endpoint")
    presenter: Literal["fake", "psychopy"] = Field(default="fake", description="presenter of a started server")
    refresh_hz: float = Field(default=60.0, gt=0, description="refresh rate of the fake presenter")
    extra_args: list[str] = Field(default_factory=list, description="more `cortexloop stimserver` options")
    markers: bool = Field(default=True, description="a started server publishes trial onsets as an LSL Markers "
                                                    "stream (`cortexloop-markers`, for LabRecorder)")

    @model_validator(mode="after")
    def _both_endpoints(self) -> StimConfig:
        if (self.rpc is None) != (self.events is None):
            raise ValueError("a running stimserver needs both rpc and events endpoints")
        if self.rpc is not None and (self.presenter != "fake" or self.extra_args
                                     or {"refresh_hz", "markers"} & self.model_fields_set):
            raise ValueError("presenter, refresh_hz, markers and extra_args configure a stimserver started here: with rpc "
                             "and events (a running server) set them on that server's command line")
        return self


class VirtualRigConfig(_Cfg):
    """The virtual monkey: started as ``python -m virtualrig`` (acquisition ``kind: virtual``), or a
    separately started one reached at ``rpc`` (acquisition ``kind: lsl``), which is sent the pixels
    of every image loaded into the stimserver."""

    rpc: str | None = Field(default=None, description="RPC endpoint of a running virtual rig (kind: lsl)")
    data: Path | None = Field(default=None, description="a folder in the V4 layout: its compact models are "
                                                        "the ground truth (None: synthetic Gabor-energy units)")
    session: str | None = Field(default=None, description="whose compact models (default: the first session)")
    neurons: int | list[int] | None = Field(default=None, description="first N, or these neurons (default all)")
    n_units: int = Field(default=24, ge=1, le=10_000, description="synthetic units when no models are given")
    baseline: float = Field(default=5.0, ge=0, description="baseline rate (spikes/s)")
    latency: float = Field(default=0.05, ge=0, description="response latency (s)")
    delay: float = Field(default=0.5, gt=0, le=10, description="streaming delay behind real time (s): a trial "
                                                               "event must reach the rig within it")
    seed: int = 0
    device: str = Field(default="cpu", description="torch device of the compact models")
    extra_args: list[str] = Field(default_factory=list, description="more `python -m virtualrig` options")


class SyncConfig(_Cfg):
    """The sync line that reports each stimulus onset on the acquisition clock (a photodiode on the
    screen's corner patch, or a TTL from the stimulus computer)."""

    channel: str = Field(default="photodiode", description="sync channel name (LSL marker label, or "
                                                           "an Open Ephys TTL line such as 'ttl1')")
    tolerance: float = Field(default=0.02, gt=0, le=1.0, description="max pulse-to-onset mismatch (s)")
    monitor: bool = Field(default=True, description="check every onset against its pulse (controller.timing): "
                                                    "an event and a bus warning when they stop agreeing")
    lost_after: int = Field(default=5, ge=1, le=10_000, description="consecutive onsets without a pulse "
                                                                  "before the sync line counts as lost")
    max_latency: float = Field(default=0.1, gt=0, le=2.0, description="longest flip-to-pulse delay (s) "
                                                                      "accepted before the first match")


class StreamPin(_Cfg):
    """Which LSL stream is the rig's, when several share its name (another rig, a test outlet)."""

    source_id: str | None = Field(default=None, max_length=200, description="the stream's source_id")
    host: str | None = Field(default=None, max_length=200, description="the hostname of the machine sending it")


class LslPinConfig(_Cfg):
    spikes: StreamPin = Field(default_factory=StreamPin)
    markers: StreamPin = Field(default_factory=StreamPin)


class AcquisitionConfig(_Cfg):
    kind: Literal["virtual", "lsl", "openephys"] = Field(
        default="virtual", description="virtual: start a virtual rig process (spikes over LSL); "
                                       "lsl: a rig's LSL streams; openephys: an Open Ephys ZMQ stream")
    openephys_endpoint: str = "tcp://127.0.0.1:5557"
    control: str | None = Field(default=None, description="kind openephys: the GUI's HTTP API "
                                                          "(http://HOST:37497): the session names and runs the recording")
    control_dir: str | None = Field(default=None, description="recording parent folder on the Open Ephys "
                                                              "machine (None: the GUI's own)")
    control_stop: Literal["ACQUIRE", "IDLE"] = Field(default="ACQUIRE", description="mode after the last block")
    lsl_spike_name: str | None = "cortexloop-spikes"
    lsl_marker_name: str | None = "cortexloop-sync"
    lsl_pin: LslPinConfig = Field(default_factory=LslPinConfig, description="kind lsl: pin the spike and marker "
                                  "streams by source_id and/or host (a session refuses a name that several "
                                  "streams on the network share)")
    sync: SyncConfig | None = Field(default=None, description="the sync channel (default for kind virtual: "
                                                              "the rig's photodiode markers)")
    silence_timeout: float = Field(default=10.0, gt=0, description="seconds without data before it is an error")
    window: tuple[float, float] = Field(default=(0.05, 0.15), description="counting window after onset (s)")
    lateness: float = Field(default=0.05, ge=0)
    virtual: VirtualRigConfig = Field(default_factory=VirtualRigConfig)

    @model_validator(mode="after")
    def _clocks(self) -> AcquisitionConfig:
        if self.kind == "virtual" and self.sync is None:
            self.sync = SyncConfig()
        if self.kind == "openephys" and self.sync is None:
            raise ValueError("Open Ephys spikes are timed on the sample clock: name the sync channel that "
                             "reports stimulus onsets (acquisition.sync.channel, e.g. 'ttl1')")
        if self.control is not None and self.kind != "openephys":
            raise ValueError("acquisition.control is the Open Ephys GUI's HTTP API: it needs kind openephys")
        if not self.window[1] > self.window[0]:
            raise ValueError(f"window end must be after its start, got {self.window}")
        return self


class BehaviorConfig(_Cfg):
    """An awake, fixating animal (``docs/behavior.md``): the stimulus server reads gaze and runs the trial
    state machine; trials the animal did not look at are recorded as invalid and shown again."""

    fixation: FixationRule = Field(default_factory=FixationRule, description="the trial state machine's settings")
    spot: FixationSpot = Field(default_factory=FixationSpot, description="the fixation spot")
    gaze: str = Field(default="virtual", description="the stimserver's gaze source: virtual (the virtual rig's "
                      "monkey), lsl[:NAME][?source_id=ID], iohub[:mouse|eyelink|tobii|gazepoint], none")
    reward: str = Field(default="none", description="reward output: none, serial:PORT[?mode=...], lsl[:NAME], "
                        "nidaqmx:LINE, labjack:CHANNEL (stimserver.reward)")
    break_rate: float = Field(default=0.25, ge=0, le=100, description="gaze virtual: the virtual monkey's breaks "
                              "of fixation per second (rising as it goes without reward)")
    gaze_rate_hz: float = Field(default=1000.0, gt=0, le=10_000, description="gaze virtual: samples per second")
    idle_warn_s: float = Field(default=30.0, gt=0, le=86_400, description="the 'not working' warning (an "
                               "animal_idle event) after this long without a completed sequence during a block")
    idle_pause: bool = Field(default=False, description="the 'not working' warning also pauses the session "
                             "(resume it as after an operator's pause)")

    @model_validator(mode="after")
    def _sources(self) -> BehaviorConfig:
        if self.gaze == "none":
            raise ValueError("behavior.gaze: an awake session needs a gaze source (virtual, lsl, iohub)")
        return self


class ImagesConfig(_Cfg):
    pool: Path | None = Field(default=None, description="an image pool file (HDF5, images + ids)")
    v4_dir: Path | None = Field(default=None, description="a folder in the layout of the V4 data")
    v4_sessions: list[str] | None = Field(default=None, description="its sessions (default: all)")
    synthetic: int = Field(default=400, ge=1, le=200_000, description="synthetic images when neither is given")
    holdout: int = Field(default=0, ge=0, description="images kept back from every session (for scoring)")
    holdout_seed: int = 0


class ModelConfig(_Cfg):
    """The modelserver: ``start`` a child process (its data folder persists, by default
    ``<out>/modelserver``, so a later session finds the models earlier ones trained), ``connect``
    to a running one (a GPU box serving several rigs), or ``none`` (model-made sets fall back)."""

    kind: Literal["start", "connect", "none"] = "start"
    rpc: str | None = Field(default=None, description="RPC endpoint of a running modelserver (kind connect)")
    events: str | None = Field(default=None, description="its event endpoint")
    data_dir: Path | None = Field(default=None, description="data folder of a started server "
                                                            "(default: <out>/modelserver)")
    device: str = Field(default="auto", description="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    threads: int = Field(default=0, ge=0, description="torch CPU threads of a started server (0: default)")
    members: int = Field(default=3, ge=1, le=64, description="ensemble members")
    max_epochs: int = Field(default=8, ge=1, le=10_000, description="epochs per training job at most")
    v4_dir: Path | None = Field(default=None, description="V4 folder whose images feed the candidate pools")
    block_epochs: int = Field(default=4, ge=1, description="epochs of a between-block retrain")
    session_epochs: int = Field(default=8, ge=1, description="epochs of an end-of-session retrain")
    pool_crops: int = Field(default=1500, ge=1, le=1_000_000, description="candidate pool size")
    timeout: float = Field(default=60.0, gt=0, description="seconds a request may take (generation has "
                                                           "the protocol's own timeouts)")
    start_timeout: float = Field(default=180.0, gt=0)
    ray: str | None = Field(default=None, description="a started server runs its heavy work on a Ray cluster: "
                                                      "auto, local or the cluster's address (docs/modelserver.md)")
    ray_gpus: float = Field(default=1.0, gt=0, le=8, description="GPUs per member task or pool scorer on a "
                                                                 "Ray cluster with GPUs (a fraction shares one)")
    frontend: Literal["pixels", "gabor", "resnet50"] = Field(
        default="gabor", description="the ensemble's input: pixels, fixed Gabor channels, or a frozen ResNet50 trunk")
    weights: Path | None = Field(default=None, description="frontend resnet50: a local torchvision-layout "
                                                           "state_dict file (docs/modelserver.md)")
    layer: Literal["layer1", "layer2", "layer3", "layer4"] = Field(
        default="layer3", description="frontend resnet50: the trunk's last stage")
    input_size: int | None = Field(default=None, ge=8, le=1024, description="images are resized to this "
                                                                            "(default 56; resnet50: 224)")
    autocast: bool = Field(default=False, description="bfloat16 autocast of the started server's forward passes")

    @model_validator(mode="after")
    def _endpoints(self) -> ModelConfig:
        if self.rpc is not None and self.kind == "start":
            self.kind = "connect"
        if self.kind == "connect" and (self.rpc is None or self.events is None):
            raise ValueError("model kind connect needs both rpc and events endpoints")
        if self.kind == "start" and self.frontend == "resnet50" and self.weights is None:
            raise ValueError("model frontend resnet50 needs weights: a local ResNet50 state_dict file")
        return self


class BusConfig(_Cfg):
    broker: Literal["none", "embedded"] | str = Field(
        default="embedded", description="embedded (amqtt in this process), none, or host:port of a broker")
    username: str | None = None
    password: str | None = None


class KeysConfig(_Cfg):
    """ZeroMQ CURVE for every server and client of the session (``docs/security.md``, "Authentication").

    ``folder`` holds the files ``cortexloop keys generate FOLDER NAME`` writes. The controller is the
    client ``client`` (``client.key_secret``); each server is named by its key pair: a started child
    gets ``NAME.key_secret`` and the allowed-clients folder (``allowed_clients``; by default the
    controller's public key alone, so one server's key never opens another), a running server is reached with its public ``NAME.key``.
    A server set to ``null`` is reached (or started) without CURVE. The virtual rig subscribes to the
    stimserver's events with the controller's client keys."""

    folder: Path = Field(description="folder of the key files (`cortexloop keys generate FOLDER NAME`)")
    client: str = Field(default="controller", description="the controller's key pair (NAME.key_secret)")
    stim: str | None = Field(default="stimserver", description="the stimserver's key pair (null: no CURVE)")
    model: str | None = Field(default="modelserver", description="the modelserver's key pair (null: no CURVE)")
    rig: str | None = Field(default="virtualrig", description="the virtual rig's key pair (null: no CURVE)")
    allowed_clients: Path | None = Field(default=None, description="folder of the clients started servers admit "
                                                                   "(public NAME.key files; default: the "
                                                                   "controller's key alone)")

    @model_validator(mode="after")
    def _plain_names(self) -> KeysConfig:
        for what, name in (("client", self.client), ("stim", self.stim), ("model", self.model), ("rig", self.rig)):
            if name is not None and (not name or name != Path(name).name or name.startswith(".")):
                raise ValueError(f"keys.{what}: {name!r} is not a plain key name (NAME of NAME.key in the folder)")
        return self

    def server(self, name: str) -> CurveServer:
        """A started server's configuration: its secret file and the allowed clients' folder."""
        return CurveServer(secret_key_file=(self.folder / f"{name}.key_secret").absolute(),
                           allowed_clients_dir=(self.allowed_clients or self.folder).absolute())

    def client_of(self, name: str) -> CurveClient:
        """The controller's client configuration for the server whose key pair is ``name``."""
        return CurveClient(secret_key_file=(self.folder / f"{self.client}.key_secret").absolute(),
                           server_public_key_file=(self.folder / f"{name}.key").absolute())


#: an ISO 8601 duration (P7Y, P2Y6M, P90D, PT12H), or a range of two ("P1Y/P2Y") or open above ("P1Y/")
_AGE = re.compile(r"P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?")


class SubjectConfig(_Cfg):
    """The animal, for the NWB export (``docs/nwb.md``): ``subject:`` in a rig file is its id or this mapping."""

    subject_id: str = Field(default="virtual", min_length=1, description="the animal's id")
    species: str = Field(default="Macaca mulatta", description="Latin binomial or an NCBITaxon URL")
    sex: Literal["M", "F", "U", "O"] = Field(default="U", description="M, F, U (unknown) or O (other)")
    age: str = Field(default="P0D/", description="ISO 8601 duration at the session, e.g. P7Y; P0D/: unknown")
    description: str | None = None

    @field_validator("age")
    @classmethod
    def _iso_age(cls, v: str) -> str:
        lo, _, hi = v.partition("/")
        if not _AGE.fullmatch(lo) or (hi and not _AGE.fullmatch(hi)):
            raise ValueError(f"age {v!r} is not an ISO 8601 duration such as P7Y, P30D or P2Y6M "
                             "(a range: P1Y/P2Y; unknown: P0D/)")
        return v

    @field_validator("species")
    @classmethod
    def _binomial(cls, v: str) -> str:
        if not (re.fullmatch(r"[A-Z][a-z]+ [a-z]+( [a-z]+)?", v) or v.startswith("http://purl.obolibrary.org/obo/NCBITaxon_")):
            raise ValueError(f"species {v!r}: give the Latin binomial (Macaca mulatta) or an NCBITaxon URL")
        return v


class RunConfig(_Cfg):
    rig: str = "rig1"
    subject: str = Field(default="virtual", description="the animal's id (a mapping in YAML: SubjectConfig)")
    subject_info: SubjectConfig | None = Field(default=None, description="the animal, when `subject:` is a mapping")
    lab: str | None = None
    institution: str | None = None
    experimenter: list[str] = Field(default_factory=list, description='"Last, First", one or more')
    out_dir: Path = Path("out")
    session_id: str | None = None
    seed: int = 0
    stim: StimConfig = Field(default_factory=StimConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    bus: BusConfig = Field(default_factory=BusConfig)
    keys: KeysConfig | None = Field(default=None, description="CURVE keys for every server and client "
                                                              "(None: no CURVE anywhere)")
    behavior: BehaviorConfig | None = Field(default=None, description="an awake, fixating animal: gaze, the trial "
                                            "state machine and reward (None: every trial counts)")

    @model_validator(mode="before")
    @classmethod
    def _subject_mapping(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("subject"), dict):
            if data.get("subject_info") is not None:
                raise ValueError("give the subject either as a mapping under subject: or as subject_info:, not both")
            info = data["subject"]  # validated as subject_info (errors name subject_info.<field>)
            data = {**data, "subject": info.get("subject_id", "virtual"), "subject_info": info}
        if isinstance(data, dict) and isinstance(data.get("experimenter"), str):
            data = {**data, "experimenter": [data["experimenter"]]}
        return data

    @model_validator(mode="after")
    def _one_subject_id(self) -> RunConfig:
        if self.subject_info is not None and self.subject_info.subject_id != self.subject:
            raise ValueError(f"subject {self.subject!r} and subject_info.subject_id "
                             f"{self.subject_info.subject_id!r} differ")
        return self

    @model_validator(mode="after")
    def _virtual_gaze(self) -> RunConfig:
        b = self.behavior
        if b is not None:  # a trial counts only when fixation held through the window its spikes are counted in
            end = self.acquisition.window[1]
            if "count_window_s" not in b.fixation.model_fields_set:
                b.fixation = b.fixation.model_copy(update={"count_window_s": end})
            elif b.fixation.count_window_s < end:
                raise ValueError(f"behavior.fixation.count_window_s ({b.fixation.count_window_s:g} s) ends before "
                                 f"the counting window (acquisition.window ends at {end:g} s)")
        if b is not None and b.gaze == "virtual" and (self.acquisition.kind != "virtual" or self.stim.rpc is not None):
            raise ValueError("behavior.gaze virtual is the virtual rig's monkey: it needs acquisition kind virtual "
                             "and a stimserver started here; name the lab's tracker instead (lsl, iohub)")
        return self

    def model_dir(self) -> Path:
        return self.model.data_dir if self.model.data_dir is not None else self.out_dir / "modelserver"


def _errors(source: str, exc: ValidationError) -> ProtocolError:
    lines = [f"{source}: {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors(include_url=False)]
    return ProtocolError("invalid rig configuration:\n" + "\n".join(lines))


def load_config(path: str | Path | None, overrides: dict[str, object] | None = None) -> RunConfig:
    """The configuration in ``path`` (YAML), or the embedded defaults; ``overrides`` replace top-level
    keys. Relative paths are taken from the current folder, like every other argument."""
    if path is None:
        try:
            return RunConfig.model_validate(overrides or {})
        except ValidationError as exc:
            raise _errors("(defaults)", exc) from exc
    from protocols.errors import ProtocolValidationError
    from protocols.loader import load_yaml, read_text_file

    p = Path(path)
    # bounded like a protocol file: at most 1 MiB of UTF-8, 100 levels deep, 100,000 values with
    # YAML aliases expanded; each problem is a ProtocolError naming the file, never a traceback
    try:
        text = read_text_file(p)
    except ProtocolValidationError as exc:
        raise ProtocolError(f"cannot read rig configuration {p}: "
                            f"{exc.problems[0].message.removeprefix('cannot read: ')}") from exc
    try:
        data = load_yaml(text, str(p))[1] or {}
    except ProtocolValidationError as exc:
        q = exc.problems[0]
        at = f" (line {q.line}{f', column {q.column}' if q.column else ''})" if q.line else ""
        raise ProtocolError(f"{p}: not YAML{at}: {q.message}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"{p}: a rig configuration is a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate({**data, **(overrides or {})})
    except ValidationError as exc:
        raise _errors(str(p), exc) from exc

