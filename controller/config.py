"""The rig configuration: which servers, acquisition source, images and bus a session uses.

Everything has an embedded default, so ``cortexloop run PROTOCOL.yaml`` works on a laptop: a
stimserver child process (display-free presenter unless ``presenter: psychopy``), the
in-process virtual rig, a synthetic image library, no modelserver, and an in-process MQTT broker
(amqtt) whose operator credentials are written next to the session file. A lab's YAML file
replaces the parts it has (``cortexloop run PROTOCOL.yaml --config rig.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wire.errors import ProtocolError


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StimConfig(_Cfg):
    rpc: str | None = Field(default=None, description="RPC endpoint of a running stimserver (None: start one)")
    events: str | None = Field(default=None, description="its trial-event endpoint")
    presenter: Literal["fake", "psychopy"] = Field(default="fake", description="presenter of a started server")
    refresh_hz: float = Field(default=60.0, gt=0, description="refresh rate of the fake presenter")
    extra_args: list[str] = Field(default_factory=list, description="more `cortexloop stimserver` options")


class VirtualRigConfig(_Cfg):
    compact_models: Path | None = Field(default=None, description="folder of V4 compact models (ground truth)")
    n_units: int = Field(default=24, ge=1, description="synthetic Gabor-energy units when no models are given")
    baseline: float = Field(default=2.0, ge=0, description="baseline rate (spikes/s)")
    latency: float = Field(default=0.05, ge=0, description="response latency (s)")
    duration: float = Field(default=0.1, gt=0, description="response duration (s)")
    seed: int = 0


class AcquisitionConfig(_Cfg):
    kind: Literal["virtual", "lsl", "openephys"] = Field(default="virtual", description="where spikes come from")
    openephys_endpoint: str = "tcp://127.0.0.1:5557"
    lsl_spike_name: str | None = "cortexloop-spikes"
    silence_timeout: float = Field(default=10.0, gt=0, description="seconds without data before it is an error")
    window: tuple[float, float] = Field(default=(0.05, 0.15), description="counting window after onset (s)")
    lateness: float = Field(default=0.05, ge=0)
    virtual: VirtualRigConfig = Field(default_factory=VirtualRigConfig)


class ImagesConfig(_Cfg):
    pool: Path | None = Field(default=None, description="an image pool file (HDF5, images + ids)")
    v4_dir: Path | None = Field(default=None, description="a folder in the layout of the V4 data")
    v4_sessions: list[str] = Field(default_factory=lambda: ["190923"])
    synthetic: int = Field(default=400, ge=1, description="synthetic images when neither is given")


class ModelConfig(_Cfg):
    rpc: str | None = Field(default=None, description="RPC endpoint of a modelserver (None: no modelserver)")
    events: str | None = None
    timeout: float = Field(default=30.0, gt=0)


class BusConfig(_Cfg):
    broker: Literal["none", "embedded"] | str = Field(
        default="embedded", description="embedded (amqtt in this process), none, or host:port of a broker")
    username: str | None = None
    password: str | None = None


class RunConfig(_Cfg):
    rig: str = "rig1"
    subject: str = "virtual"
    out_dir: Path = Path("out")
    session_id: str | None = None
    seed: int = 0
    stim: StimConfig = Field(default_factory=StimConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    bus: BusConfig = Field(default_factory=BusConfig)


def load_config(path: str | Path | None) -> RunConfig:
    """The configuration in ``path`` (YAML), or the embedded defaults."""
    if path is None:
        return RunConfig()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        return RunConfig.model_validate(data)
    except OSError as exc:
        raise ProtocolError(f"cannot read rig configuration {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{p}: not YAML: {exc}") from exc
    except ValidationError as exc:
        lines = [f"{p}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise ProtocolError("invalid rig configuration:\n" + "\n".join(lines)) from exc
