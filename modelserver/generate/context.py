"""The modelserver's generation context: its trained ensembles as the generators' models.

Generators (``modelserver.generate``) take *preprocessed* 112x112 images (raw RGB minus the
channel means, ``modelserver.compact.model.preprocess``) and a model mapping them to (N, neurons), or
an ensemble mapping them to (members, N, neurons). The ensemble reads its own input (scaled and
resized pixels, Gabor channels, or the frozen ResNet50 trunk's features computed on the fly);
:class:`EnsembleView` does that conversion differentiably on the ensemble's device, so gradient
ascent and adversarial steps run through the ensemble as they run through a compact model.

Model ids name a session's neurons in a model version: ``"<session>"`` (the current version) or
``"<version>/<session>"``. Pools live in ``<data_dir>/pools/<name>.h5``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from modelserver.compact.model import CHANNEL_MEANS
from modelserver.generate.handlers import natural_images, pool_file
from modelserver.training.ensemble import DeepEnsemble
from wire.errors import NotFound


class EnsembleView(torch.nn.Module):
    """One session of a :class:`DeepEnsemble` on preprocessed 112x112 input.

    ``members=False``: (N, neurons), the members' mean; ``members=True``: (members, N, neurons).
    """

    def __init__(self, ensemble: DeepEnsemble, session: str, *, members: bool = False) -> None:
        super().__init__()
        if session not in ensemble.sessions:
            raise NotFound(f"the model has no session {session!r}; it has {ensemble.sessions}")
        self.ensemble = ensemble.eval()
        self.session = session
        self.members = members
        self.n_neurons = int(ensemble.session_neurons[session])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ens = self.ensemble
        if ens.frontend is not None:  # the frozen trunk on the raw pixels, gradients flowing to them
            means = torch.tensor(CHANNEL_MEANS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            with ens.autocast():
                z = ens.frontend.features(x + means).float()
        else:
            z = x / 64.0  # preprocess() already subtracted the channel means
            size = ens.config.input_size
            if z.shape[-1] != size:
                z = F.interpolate(z, size=(size, size), mode="area")
            if ens.fixed is not None:
                z = ens.fixed(z)
        out = ens(z, self.session)  # (N, members, neurons)
        return out.permute(1, 0, 2) if self.members else out.mean(1)


class ServerGenerationContext:
    """:class:`modelserver.generate.handlers.GenerationContext` over a server's model versions.

    The server passes what it reads its models with (it is not imported here, so the server can
    import this module without a cycle): ``current()``, the model now served (None before the
    first training), and ``read_version(id)``, one saved version on the server's device.
    """

    def __init__(self, device: torch.device | str, data_dir: Path,
                 current: Callable[[], DeepEnsemble | None], read_version: Callable[[str], DeepEnsemble],
                 v4_dir: Path | None = None) -> None:
        self.device: torch.device | str = device
        self.current = current
        self.read_version = read_version
        self.v4_dir = v4_dir
        self.pool_dir = Path(data_dir) / "pools"
        self.pool_dir.mkdir(parents=True, exist_ok=True)

    def _ensemble(self, model_id: str) -> tuple[DeepEnsemble, str]:
        version, _, session = model_id.rpartition("/")
        if version:
            ens = self.read_version(version)
        else:
            current = self.current()
            if current is None:
                raise NotFound("no model has been trained yet")
            ens = current
        return ens, session

    def response_model(self, model_id: str) -> EnsembleView:
        ens, session = self._ensemble(model_id)
        return EnsembleView(ens, session)

    def ensemble(self, ensemble_id: str) -> EnsembleView:
        ens, session = self._ensemble(ensemble_id)
        return EnsembleView(ens, session, members=True)

    def pool_path(self, name: str, create: bool = False) -> Path:
        return pool_file(self.pool_dir, name, create)

    def natural_sources(self) -> list[np.ndarray]:
        return natural_images(self.v4_dir)
