"""Eye-position calibration of analog eye signals: volts from a tracker's analog output to degrees.

As in MonkeyLogic, the animal fixates 5 or 9 known points (:func:`calibration_targets`), a
least-squares fit maps the median volts at each point onto its position (``stimserver.calibration``),
and between blocks a drift correction re-centres the map by adding an offset. The result,
:class:`EyeCalibration`, is stored with the session and applied to every sample
(degrees from the screen centre, x right, y up, as :class:`wire.behavior.GazeSample`).
"""

from __future__ import annotations

import time
from typing import Literal, overload

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

CalibrationKind = Literal["affine", "quadratic"]

#: coefficients per axis: affine [vx, vy, 1]; quadratic adds [vx^2, vy^2, vx*vy]
N_COEFFICIENTS: dict[str, int] = {"affine": 3, "quadratic": 6}
#: fewest fixation points a fit accepts (one more than the unknowns' count would fit anything exactly)
MIN_POINTS: dict[str, int] = {"affine": 5, "quadratic": 9}


def calibration_targets(n: Literal[5, 9], spread_deg: float) -> list[tuple[float, float]]:
    """Fixation points (deg): 5: the centre, then the corners of the square of half-side ``spread_deg``;
    9: the 3x3 grid over that square (row by row from the top left)."""
    if not spread_deg > 0:
        raise ValueError(f"spread_deg must be positive, got {spread_deg}")
    s = float(spread_deg)
    if n == 5:
        return [(0.0, 0.0), (-s, s), (s, s), (-s, -s), (s, -s)]
    if n == 9:
        return [(x, y) for y in (s, 0.0, -s) for x in (-s, 0.0, s)]
    raise ValueError(f"n must be 5 or 9, got {n}")


def design_matrix(vx: np.ndarray, vy: np.ndarray, kind: CalibrationKind) -> np.ndarray:
    """The fit's regressors, one row per sample: [vx, vy, 1] (+ [vx^2, vy^2, vx*vy] for quadratic)."""
    vx = np.asarray(vx, dtype=np.float64)
    vy = np.asarray(vy, dtype=np.float64)
    cols = [vx, vy, np.ones_like(vx)]
    if kind == "quadratic":
        cols += [vx * vx, vy * vy, vx * vy]
    return np.stack(cols, axis=-1)


class EyeCalibration(BaseModel):
    """A fitted volts-to-degrees map: ``deg = coef @ design(vx, vy) + drift`` for each axis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CalibrationKind = Field(description="affine: [vx, vy, 1]; quadratic adds vx^2, vy^2, vx*vy")
    coef_x: list[float] = Field(description="x (deg) coefficients over the design terms")
    coef_y: list[float] = Field(description="y (deg) coefficients over the design terms")
    rms_error_deg: float = Field(ge=0, description="root mean square error at the fixation points (deg)")
    max_error_deg: float = Field(ge=0, description="largest error at a fixation point (deg)")
    n_points: int = Field(ge=1, description="fixation points of the fit")
    drift: tuple[float, float] = Field(default=(0.0, 0.0), description="offset added by drift corrections "
                                       "(deg, accumulated)")
    created: float = Field(default_factory=time.time, description="when fitted (s since the epoch)")

    @model_validator(mode="after")
    def _shape(self) -> EyeCalibration:
        n = N_COEFFICIENTS[self.kind]
        if len(self.coef_x) != n or len(self.coef_y) != n:
            raise ValueError(f"a {self.kind} calibration has {n} coefficients per axis, got "
                             f"{len(self.coef_x)} (x) and {len(self.coef_y)} (y)")
        if self.n_points < MIN_POINTS[self.kind]:
            raise ValueError(f"a {self.kind} calibration needs at least {MIN_POINTS[self.kind]} points, "
                             f"got {self.n_points}")
        if not all(np.isfinite(self.coef_x + self.coef_y + list(self.drift))):
            raise ValueError("calibration coefficients and drift must be finite")
        return self

    @overload
    def apply(self, vx: float, vy: float) -> tuple[float, float]: ...

    @overload
    def apply(self, vx: np.ndarray, vy: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def apply(self, vx: float | np.ndarray, vy: float | np.ndarray
              ) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
        """Degrees (x, y) for volts (vx, vy): floats give floats, arrays give arrays; NaN in, NaN out."""
        d = design_matrix(np.asarray(vx), np.asarray(vy), self.kind)
        x = d @ np.asarray(self.coef_x) + self.drift[0]
        y = d @ np.asarray(self.coef_y) + self.drift[1]
        if isinstance(vx, np.ndarray) or isinstance(vy, np.ndarray):
            return x, y
        return float(x), float(y)

    def with_drift(self, dx: float, dy: float) -> EyeCalibration:
        """This calibration with (dx, dy) deg added to its drift offset (corrections accumulate)."""
        return EyeCalibration.model_validate(
            {**self.model_dump(), "drift": (self.drift[0] + float(dx), self.drift[1] + float(dy))})
