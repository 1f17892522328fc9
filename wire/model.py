"""The model server's vocabulary: commands, replies and events (``model.*``).

Images travel as uint8 arrays (N, H, W, 3); an image's id is :func:`wire.base.image_id` of
its pixels. Spike counts are (trials, neurons) per session; neurons are never matched across
sessions.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from wire.base import Array, Message

#: a session name (the server checks its characters)
SessionName = Annotated[str, Field(min_length=1, max_length=64)]
#: a model version id
VersionId = Annotated[str, Field(min_length=1, max_length=128)]
#: image ids (content hashes) of up to a million trials
ImageIds = Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=1_000_000)]

# --- commands --------------------------------------------------------------------------------


class Ingest(Message):
    """Append trials of one session to the training set (deduplicated by image id, repeats kept)."""

    kind: Literal["model.ingest"] = "model.ingest"
    session: SessionName = Field(description="session name (1-64 chars of [A-Za-z0-9_.-])")
    image_ids: ImageIds = Field(description="per trial: the id of the image shown")
    counts: Array = Field(description="(trials, neurons) spike counts, finite and >= 0")
    images: Array | None = Field(default=None, description="(U, H, W, 3) uint8 pixels of ids the server lacks")


class Train(Message):
    """Start training the ensemble in the background; progress comes as TrainProgress events."""

    kind: Literal["model.train"] = "model.train"
    sessions: list[SessionName] | None = Field(default=None, max_length=10_000,
                                              description="sessions to train on (all when None)")
    members: int | None = Field(default=None, ge=1, le=64)
    max_epochs: int | None = Field(default=None, ge=1, le=100_000)
    time_budget_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    loss: Literal["poisson", "gaussian"] | None = None
    warm_start: bool = Field(default=True, description="continue from the current version where compatible")


class CancelTraining(Message):
    kind: Literal["model.cancel"] = "model.cancel"
    #: admitted even when the server is at its concurrency bound (wire.transport.RpcServer)
    always_admitted: ClassVar[bool] = True


class Status(Message):
    kind: Literal["model.status"] = "model.status"
    always_admitted: ClassVar[bool] = True


class Predict(Message):
    """Predicted responses of a session's neurons to images, from the current (or a given) version."""

    kind: Literal["model.predict"] = "model.predict"
    session: Annotated[str, Field(min_length=1, max_length=256)]
    images: Array = Field(description="(N, H, W, 3) uint8")
    version: VersionId | None = None


class ListVersions(Message):
    kind: Literal["model.versions"] = "model.versions"


class LoadVersion(Message):
    kind: Literal["model.load_version"] = "model.load_version"
    version: VersionId


class ExportVersion(Message):
    """Export a version: the file a model version is stored as (``torch.save`` of tensors and plain
    data only, loadable with ``torch.load(weights_only=True)``), written into the server's own
    exports folder (``<data_dir>/exports/<name>``) and/or sent back in the reply (``inline``).

    ``name`` is a plain file name (letters, digits, ``_-.``, at most 128 characters; never a path:
    a separator, ``..`` or a leading dot is refused as ``forbidden``); an existing file is refused
    unless ``overwrite``. ``path`` is the older spelling of ``name`` and takes plain names only.
    """

    kind: Literal["model.export"] = "model.export"
    version: VersionId | None = Field(default=None, description="the current version when None")
    name: str | None = Field(default=None, max_length=128,
                             description="file name in the server's exports folder (<data_dir>/exports/)")
    path: str | None = Field(default=None, max_length=4096,
                             description="deprecated spelling of 'name': a plain file name, never a path")
    overwrite: bool = Field(default=False, description="replace an existing export of that name")
    inline: bool = Field(default=False, description="send the file's bytes back in the reply (Exported.data)")


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
    path: str | None = Field(default=None, description="the written file on the server's machine (None: inline only)")
    bytes: int = Field(description="size of the exported file")
    data: Array | None = Field(default=None, description="inline: the file's bytes as a uint8 array; "
                               "torch.load(io.BytesIO(data.tobytes()), weights_only=True) reads it")


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
