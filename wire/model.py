"""The model server's vocabulary: commands, replies and events (``model.*``).

Images travel as uint8 arrays (N, H, W, 3); an image's id is :func:`wire.base.image_id` of
its pixels. Spike counts are (trials, neurons) per session; neurons are never matched across
sessions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wire.base import Array, Message

# --- commands --------------------------------------------------------------------------------


class Ingest(Message):
    """Append trials of one session to the training set (deduplicated by image id, repeats kept)."""

    kind: Literal["model.ingest"] = "model.ingest"
    session: str = Field(description="session name (1-64 chars of [A-Za-z0-9_.-])")
    image_ids: list[str] = Field(description="per trial: the id of the image shown")
    counts: Array = Field(description="(trials, neurons) spike counts, finite and >= 0")
    images: Array | None = Field(default=None, description="(U, H, W, 3) uint8 pixels of ids the server lacks")


class Train(Message):
    """Start training the ensemble in the background; progress comes as TrainProgress events."""

    kind: Literal["model.train"] = "model.train"
    sessions: list[str] | None = Field(default=None, description="sessions to train on (all when None)")
    members: int | None = Field(default=None, ge=1, le=64)
    max_epochs: int | None = Field(default=None, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    loss: Literal["poisson", "gaussian"] | None = None
    warm_start: bool = Field(default=True, description="continue from the current version where compatible")


class CancelTraining(Message):
    kind: Literal["model.cancel"] = "model.cancel"


class Status(Message):
    kind: Literal["model.status"] = "model.status"


class Predict(Message):
    """Predicted responses of a session's neurons to images, from the current (or a given) version."""

    kind: Literal["model.predict"] = "model.predict"
    session: str
    images: Array = Field(description="(N, H, W, 3) uint8")
    version: str | None = None


class ListVersions(Message):
    kind: Literal["model.versions"] = "model.versions"


class LoadVersion(Message):
    kind: Literal["model.load_version"] = "model.load_version"
    version: str


class ExportVersion(Message):
    """Write a version to a file holding tensors and plain data only (``torch.load(weights_only=True)``)."""

    kind: Literal["model.export"] = "model.export"
    version: str | None = Field(default=None, description="the current version when None")
    path: str = Field(description="file path on the model server's machine")


# --- replies ---------------------------------------------------------------------------------


class Ingested(Message):
    kind: Literal["model.ingested"] = "model.ingested"
    session: str
    new_images: int
    trials: int
    total_trials: int = Field(description="trials of this session in the training set")
    total_images: int = Field(description="distinct images in the training set")


class JobStarted(Message):
    kind: Literal["model.job"] = "model.job"
    job_id: str


class SessionSummary(Message):
    kind: Literal["model.session"] = "model.session"
    name: str
    neurons: int
    trials: int
    images: int


class VersionInfo(Message):
    kind: Literal["model.version"] = "model.version"
    version: str
    created: float = Field(description="seconds since the epoch")
    sessions: dict[str, int] = Field(description="session -> neurons the version predicts")
    val_r: float = Field(description="mean validation Pearson r over members")
    epochs: int


class ServerStatus(Message):
    kind: Literal["model.status_reply"] = "model.status_reply"
    state: Literal["idle", "training"]
    device: str
    job_id: str | None = None
    epoch: int | None = None
    val_r: float | None = None
    current_version: str | None = None
    sessions: list[SessionSummary] = Field(default_factory=list)
    versions: int = 0


class Prediction(Message):
    kind: Literal["model.prediction"] = "model.prediction"
    session: str
    version: str
    responses: Array = Field(description="(neurons, N) float32 predicted spike counts")


class Versions(Message):
    kind: Literal["model.version_list"] = "model.version_list"
    versions: list[VersionInfo]
    current: str | None = None


class Exported(Message):
    kind: Literal["model.exported"] = "model.exported"
    version: str
    path: str
    bytes: int


# --- events ------------------------------------------------------------------------------------


class TrainProgress(Message):
    kind: Literal["model.train_progress"] = "model.train_progress"
    job_id: str
    epoch: int
    train_loss: float
    val_r: float
    seconds: float


class TrainDone(Message):
    kind: Literal["model.train_done"] = "model.train_done"
    job_id: str
    status: Literal["done", "cancelled", "failed"]
    version: str | None = None
    message: str = ""


COMMANDS = (Ingest, Train, CancelTraining, Status, Predict, ListVersions, LoadVersion, ExportVersion)
EVENTS = (TrainProgress, TrainDone)
