"""Eye calibration of analog eye signals: fits on synthetic volts with known gains, offsets and cross-talk."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Literal

import numpy as np
import pytest
from pydantic import ValidationError

from stimserver.calibration import (
    AnalogGaze,
    StreamReader,
    drift_correction,
    fit_calibration,
    labjack_reader,
    nidaqmx_reader,
    robust_centre,
)
from wire import clock
from wire.calibration import EyeCalibration, calibration_targets
from wire.errors import AcquisitionError, InvalidRequest, StateError

NOISE_V = 0.01


def volts_of(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """The tracker's analog output for an eye at (x, y) deg: gains, offsets and a small cross-talk."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return np.stack([0.25 * x + 0.02 * y - 0.3, -0.2 * y + 0.1], axis=-1)


def degrees_of(v: np.ndarray) -> np.ndarray:
    """The exact inverse of :func:`volts_of`: y = 0.5 - 5 vy, x = 4 vx + 0.4 vy + 1.16."""
    vx, vy = v[..., 0], v[..., 1]
    return np.stack([4 * vx + 0.4 * vy + 1.16, 0.5 - 5 * vy], axis=-1)


def fixation(rng: np.random.Generator, v0: np.ndarray, n: int = 300, blinks: int = 30,
             outliers: int = 8) -> np.ndarray:
    """Samples of a fixation at volts ``v0``: noise, NaN blink samples (whole or one channel), saccade outliers."""
    s = v0 + rng.normal(0, NOISE_V, (n, 2))
    idx = rng.permutation(n)
    s[idx[:blinks // 2]] = np.nan
    s[idx[blinks // 2:blinks], rng.integers(0, 2)] = np.nan
    s[idx[blinks:blinks + outliers]] += rng.choice([-1, 1], (outliers, 2)) * rng.uniform(0.5, 3, (outliers, 2))
    return s


def record(rng: np.random.Generator, targets: list[tuple[float, float]],
           to_volts: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    return [fixation(rng, to_volts(np.array(t))) for t in targets]


def affine_volts(t: np.ndarray) -> np.ndarray:
    return volts_of(t[0], t[1])


def held_out_errors(cal: EyeCalibration, true_deg: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator,
                    lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Error (deg) at 500 random volts inside [lo, hi] (not the targets')."""
    v = rng.uniform(lo, hi, (500, 2))
    x, y = cal.apply(v[:, 0], v[:, 1])
    return np.hypot(*(np.stack([x, y], axis=-1) - true_deg(v)).T)


@pytest.mark.parametrize("n", [5, 9])
def test_affine_fit_recovers_the_inverse_map(n: Literal[5, 9]) -> None:
    rng = np.random.default_rng(n)
    targets = calibration_targets(n, 10.0)
    assert len(targets) == n and (0.0, 0.0) in targets
    assert {abs(c) for t in targets for c in t} == ({0.0, 10.0})
    cal = fit_calibration(targets, record(rng, targets, affine_volts))
    assert cal.kind == "affine" and cal.n_points == n and cal.drift == (0.0, 0.0)
    at_targets = [np.hypot(*(np.array(cal.apply(*map(float, volts_of(*t)))) - t)) for t in targets]
    assert max(at_targets) < 0.05
    assert cal.max_error_deg < 0.05 and cal.rms_error_deg <= cal.max_error_deg
    v_lo, v_hi = volts_of(-12, 12), volts_of(12, -12)  # a bit beyond the targets
    assert held_out_errors(cal, degrees_of, rng, np.minimum(v_lo, v_hi), np.maximum(v_lo, v_hi)).max() < 0.05
    np.testing.assert_allclose(cal.coef_x, [4, 0.4, 1.16], atol=0.02)
    np.testing.assert_allclose(cal.coef_y, [0, -5, 0.5], atol=0.02)


# a known quadratic distortion of volts -> degrees (the tracker's optics at large angles)
Q_X = np.array([4.0, 0.4, 1.16, 0.15, 0.06, -0.1])
Q_Y = np.array([0.0, -5.0, 0.5, 0.05, -0.15, 0.08])


def quad_degrees(v: np.ndarray) -> np.ndarray:
    vx, vy = v[..., 0], v[..., 1]
    d = np.stack([vx, vy, np.ones_like(vx), vx * vx, vy * vy, vx * vy], axis=-1)
    return np.stack([d @ Q_X, d @ Q_Y], axis=-1)


def quad_volts(t: np.ndarray) -> np.ndarray:
    """Volts that :func:`quad_degrees` maps onto ``t`` (Newton's method from the affine guess)."""
    v = volts_of(t[0], t[1])
    for _ in range(50):
        vx, vy = v
        jac = np.array([[Q_X[0] + 2 * Q_X[3] * vx + Q_X[5] * vy, Q_X[1] + 2 * Q_X[4] * vy + Q_X[5] * vx],
                        [Q_Y[0] + 2 * Q_Y[3] * vx + Q_Y[5] * vy, Q_Y[1] + 2 * Q_Y[4] * vy + Q_Y[5] * vx]])
        v = v - np.linalg.solve(jac, quad_degrees(v) - t)
    assert np.allclose(quad_degrees(v), t, atol=1e-9)
    return v


def test_quadratic_fit_on_nine_points_recovers_a_quadratic_distortion() -> None:
    rng = np.random.default_rng(3)
    targets = calibration_targets(9, 10.0)
    samples = record(rng, targets, quad_volts)
    cal = fit_calibration(targets, samples, kind="quadratic")
    assert cal.kind == "quadratic" and cal.max_error_deg < 0.05
    np.testing.assert_allclose(cal.coef_x, Q_X, atol=0.03)
    np.testing.assert_allclose(cal.coef_y, Q_Y, atol=0.03)
    corners = np.array([quad_volts(np.array(t)) for t in targets])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    assert held_out_errors(cal, quad_degrees, rng, lo, hi).max() < 0.05
    # an affine map cannot follow this distortion: the fit's own error check refuses it
    with pytest.raises(ValueError, match=r"exceeds 1\.0 deg"):
        fit_calibration(targets, samples, kind="affine")
    loose = fit_calibration(targets, samples, kind="affine", max_error_deg=10.0)
    assert loose.max_error_deg > 1.0


def test_robust_centre_discards_blinks_and_outliers() -> None:
    rng = np.random.default_rng(0)
    good = rng.normal(0, NOISE_V, (1000, 2))
    bad = np.full((430, 2), 1.0)  # 30 % of samples one-sided: a plain median moves by ~0.57 sigma
    s = np.concatenate([good, bad, np.full((100, 2), np.nan)])
    assert np.abs(np.median(np.concatenate([good, bad]), axis=0)).min() > 0.4 * NOISE_V
    assert np.abs(robust_centre(s)).max() < 0.15 * NOISE_V


def test_bad_inputs_are_refused() -> None:
    rng = np.random.default_rng(1)
    t5, t9 = calibration_targets(5, 8.0), calibration_targets(9, 8.0)
    s5, s9 = record(rng, t5, affine_volts), record(rng, t9, affine_volts)
    with pytest.raises(ValueError, match="at least 5 points, got 4"):
        fit_calibration(t5[:4], s5[:4])
    with pytest.raises(ValueError, match="quadratic calibration needs at least 9 points, got 5"):
        fit_calibration(t5, s5, kind="quadratic")
    with pytest.raises(ValueError, match="5 targets but 4 sample arrays"):
        fit_calibration(t5, s5[:4])
    blind = [*s5[:2], np.full((300, 2), np.nan), *s5[3:]]
    with pytest.raises(ValueError, match=r"target 2 at \(8.0, 8.0\): 0 usable samples of 300 \(300 without"):
        fit_calibration(t5, blind)
    with pytest.raises(ValueError, match="shape"):
        fit_calibration(t5, [*s5[:4], np.zeros((10, 3))])
    # the animal looked 3 deg beside target 6 of nine: the fit is refused and that target named
    wrong = [*s9[:6], fixation(rng, volts_of(t9[6][0] + 3.0, t9[6][1])), *s9[7:]]
    with pytest.raises(ValueError, match="at target 6"):
        fit_calibration(t9, wrong)
    flat = [np.column_stack([s[:, 0], np.full(len(s), 0.1)]) for s in s5]  # a dead y channel
    with pytest.raises(ValueError, match="flat"):
        fit_calibration(t5, flat)
    with pytest.raises(ValueError, match="5 or 9"):
        calibration_targets(7, 5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        calibration_targets(5, 0.0)
    good = fit_calibration(t9, s9)
    with pytest.raises(ValidationError, match="at least 9 points"):
        EyeCalibration(kind="quadratic", coef_x=[0.0] * 6, coef_y=[0.0] * 6, rms_error_deg=0,
                       max_error_deg=0, n_points=5)
    with pytest.raises(ValidationError, match="3 coefficients per axis"):
        EyeCalibration.model_validate({**good.model_dump(), "coef_x": [1.0, 2.0]})
    with pytest.raises(ValidationError, match="finite"):
        EyeCalibration.model_validate({**good.model_dump(), "drift": (float("nan"), 0.0)})


def test_drift_correction_recovers_a_known_offset() -> None:
    rng = np.random.default_rng(2)
    targets = calibration_targets(5, 10.0)
    cal = fit_calibration(targets, record(rng, targets, affine_volts))
    shift = np.array([0.1, -0.05])  # the tracker's baseline moved by this many volts

    def drifted(v: np.ndarray) -> np.ndarray:
        return degrees_of(v - shift)

    fixed = drift_correction(cal, fixation(rng, volts_of(0, 0) + shift))
    # expected: minus the degrees the volt shift adds (4*0.1 + 0.4*-0.05, -5*-0.05)
    np.testing.assert_allclose(fixed.drift, (-0.38, -0.25), atol=0.02)
    assert fixed.coef_x == cal.coef_x and fixed.created == cal.created
    v_lo, v_hi = volts_of(-10, 10) + shift, volts_of(10, -10) + shift
    lo, hi = np.minimum(v_lo, v_hi), np.maximum(v_lo, v_hi)
    assert held_out_errors(cal, drifted, rng, lo, hi).min() > 0.3  # uncorrected: every point off
    assert held_out_errors(fixed, drifted, rng, lo, hi).max() < 0.05
    # corrections accumulate; a fixation on another target works too
    again = drift_correction(fixed, fixation(rng, volts_of(5, 0) + 2 * shift), target=(5.0, 0.0))
    np.testing.assert_allclose(again.drift, (-0.76, -0.5), atol=0.03)
    assert cal.with_drift(0.5, -1.0).with_drift(0.25, 0.5).drift == (0.75, -0.5)
    with pytest.raises(ValueError, match=r"exceeds 2\.0 deg"):
        drift_correction(cal, fixation(rng, volts_of(3, 0)))  # looking 3 deg off the centre
    with pytest.raises(ValueError, match="drift fixation: 0 usable"):
        drift_correction(cal, np.full((50, 2), np.nan))


def test_apply_on_floats_and_arrays_passes_nan_through() -> None:
    cal = EyeCalibration(kind="affine", coef_x=[4.0, 0.4, 1.16], coef_y=[0.0, -5.0, 0.5], rms_error_deg=0.01,
                         max_error_deg=0.02, n_points=5, drift=(0.5, -0.5))
    x, y = cal.apply(0.2, 0.1)
    assert isinstance(x, float) and isinstance(y, float)
    assert (x, y) == pytest.approx((0.8 + 0.04 + 1.16 + 0.5, -0.5 + 0.5 - 0.5))
    xa, ya = cal.apply(np.array([0.2, np.nan, 0.0]), np.array([0.1, 0.0, np.nan]))
    assert isinstance(xa, np.ndarray) and xa.shape == (3,)
    assert xa[0] == pytest.approx(x) and ya[0] == pytest.approx(y)
    assert np.isnan(xa[1:]).all() and np.isnan(ya[1:]).all()
    assert all(np.isnan(cal.apply(float("nan"), 0.0)))


def test_calibration_round_trips_through_json() -> None:
    rng = np.random.default_rng(4)
    targets = calibration_targets(9, 6.0)
    for cal in (fit_calibration(targets, record(rng, targets, quad_volts), kind="quadratic"),
                fit_calibration(targets, record(rng, targets, affine_volts)).with_drift(0.3, -0.2)):
        back = EyeCalibration.model_validate_json(cal.model_dump_json())
        assert back == cal and isinstance(back.drift, tuple)
        assert back.apply(0.3, -0.4) == cal.apply(0.3, -0.4)


def drain(r: StreamReader, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Call the reader until it has given ``n`` samples (5 s at most)."""
    got: list[tuple[np.ndarray, np.ndarray]] = []
    deadline = time.monotonic() + 5
    while sum(len(v) for _, v in got) < n and time.monotonic() < deadline:
        got.append(r())
        time.sleep(0.002)
    return np.concatenate([t for t, _ in got]), np.concatenate([v for _, v in got])


class FakeReader:
    """Hands out prepared (times, volts) batches; records open/close."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.batches, self.opened, self.closed = list(batches), 0, 0

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.batches.pop(0) if self.batches else (np.empty(0), np.empty((0, 2)))


def test_analog_gaze_converts_volts_to_degrees() -> None:
    cal = EyeCalibration(kind="affine", coef_x=[4.0, 0.4, 1.16], coef_y=[0.0, -5.0, 0.5], rms_error_deg=0,
                         max_error_deg=0, n_points=5)
    truth = np.array([[0.0, 0.0], [5.0, -3.0], [-10.0, 10.0]])
    v = volts_of(truth[:, 0], truth[:, 1])
    v[1, 0] = np.nan  # a blink
    t = np.array([100.0, 100.001, 100.002])
    reader = FakeReader([(t, v), (np.array([100.003]), volts_of(1.0, 2.0)[None])])
    gaze = AnalogGaze(reader, cal, name="eye")
    assert gaze.name == "eye"
    with pytest.raises(StateError):
        gaze.poll()
    gaze.open()
    gaze.open()
    assert reader.opened == 1
    got = gaze.poll()
    assert [s.t for s in got] == t.tolist()
    assert got[0].x == pytest.approx(0, abs=1e-9) and got[0].y == pytest.approx(0, abs=1e-9)
    assert not got[1].has_eye and np.isnan(got[1].x) and np.isnan(got[1].y)
    assert (got[2].x, got[2].y) == pytest.approx((-10.0, 10.0))
    np.testing.assert_array_equal(gaze.last_raw[1], v)
    gaze.calibration = cal.with_drift(1.0, 0.0)  # a drift correction between blocks takes effect
    (s,) = gaze.poll()
    assert (s.t, s.x, s.y) == pytest.approx((100.003, 2.0, 2.0))
    assert gaze.poll() == []
    gaze.close()
    gaze.close()
    assert reader.closed == 1
    bad = AnalogGaze(lambda: (np.zeros(2), np.zeros((3, 2))), cal)
    bad.open()
    with pytest.raises(AcquisitionError, match="2 times for 3 samples"):
        bad.poll()


def test_stream_reader_stamps_samples_from_their_index() -> None:
    chunks = [np.full((10, 2), float(i)) for i in range(5)]
    stopped = threading.Event()

    def read_chunk() -> np.ndarray:
        if chunks:
            return chunks.pop(0)
        time.sleep(0.002)
        return np.empty((0, 2))

    r = StreamReader(lambda: 500.0, read_chunk, stopped.set, "fake")
    with pytest.raises(StateError):
        r()
    before = clock.now()
    r.open()
    after = clock.now()
    times, volts = drain(r, 50)
    assert volts.shape == (50, 2) and volts[:, 0].tolist() == [float(i // 10) for i in range(50)]
    assert before <= times[0] <= after
    np.testing.assert_allclose(np.diff(times), 1 / 500.0)
    chunks.append(np.ones((4, 2)))
    times2, _ = drain(r, 4)
    np.testing.assert_allclose(times2, times[0] + np.arange(50, 54) / 500.0)
    r.close()
    assert stopped.is_set()


def test_stream_reader_reports_a_failed_acquisition() -> None:
    def read_chunk() -> np.ndarray:
        raise OSError("device unplugged")

    r = StreamReader(lambda: 1000.0, read_chunk, lambda: None, "fake")
    r.open()
    time.sleep(0.05)
    with pytest.raises(AcquisitionError, match="fake acquisition stopped: device unplugged"):
        r()
    r.close()


def test_hardware_readers_say_how_to_install_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nidaqmx", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "labjack", None)
    with pytest.raises(InvalidRequest, match="pip install nidaqmx"):
        nidaqmx_reader()
    with pytest.raises(InvalidRequest, match="pip install labjack-ljm"):
        labjack_reader()


def test_labjack_reader_deinterleaves_and_marks_skipped_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    reads = [[1.0, -1.0, 2.0, -9999.0], [3.0, -3.0]]

    def stream_read(h: int) -> tuple[list[float], int, int]:
        if reads:
            return reads.pop(0), 0, 0
        time.sleep(0.002)
        return [], 0, 0

    def open_s(*a: str) -> int:
        calls.append("open")
        return 7

    def stream_start(h: int, scans: int, n: int, addr: list[int], rate: float) -> float:
        calls.append(f"start {scans} {addr} {rate}")
        return 1000.0

    ljm = types.SimpleNamespace(
        constants=types.SimpleNamespace(DUMMY_VALUE=-9999.0, dtT4=4),
        openS=open_s,
        getHandleInfo=lambda h: (7, 1, 123, 0, 0, 0),
        eWriteNames=lambda h, n, names, values: calls.append(",".join(names)),
        namesToAddresses=lambda n, names: ([0, 2], [3, 3]),
        eStreamStart=stream_start,
        eStreamRead=stream_read,
        eStreamStop=lambda h: calls.append("stop"),
        close=lambda h: calls.append("close"),
    )
    monkeypatch.setitem(sys.modules, "labjack", types.SimpleNamespace(ljm=ljm))
    r = labjack_reader(rate_hz=1000)
    r.open()
    times, volts = drain(r, 3)
    r.close()
    np.testing.assert_array_equal(volts, [[1.0, -1.0], [2.0, np.nan], [3.0, -3.0]])
    np.testing.assert_allclose(np.diff(times), 0.001)
    assert calls == ["open", "AIN0_RANGE,AIN1_RANGE,STREAM_TRIGGER_INDEX,STREAM_CLOCK_SOURCE",
                     "start 10 [0, 2] 1000", "stop", "close"]
