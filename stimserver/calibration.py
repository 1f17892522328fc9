"""Analog eye signals: the calibration fit, drift correction, and a gaze source over a DAQ.

``fit_calibration`` turns the raw volts recorded while the animal fixated each calibration target
into a :class:`wire.calibration.EyeCalibration`; ``drift_correction`` re-centres it between blocks;
:class:`AnalogGaze` is the gaze source (``name``, ``open()``, ``poll()``, ``close()``) that applies it
to the samples of a reader: a callable returning ``(times, volts)`` acquired since its last call
(times on ``wire.clock.now``, volts an (N, 2) array). ``nidaqmx_reader`` and ``labjack_reader`` make
such readers over NI-DAQmx and LabJack LJM hardware (continuous buffered acquisition in a thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from wire import clock
from wire.behavior import GazeSample
from wire.calibration import MIN_POINTS, CalibrationKind, EyeCalibration, design_matrix
from wire.errors import AcquisitionError, InvalidRequest, StateError

Reader = Callable[[], tuple[np.ndarray, np.ndarray]]
_MAD_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def robust_centre(volts: np.ndarray, min_samples: int = 5, what: str = "samples") -> np.ndarray:
    """Median (vx, vy) of a fixation's samples without NaN rows and without rows outside 3 (scaled) MADs."""
    v = np.asarray(volts, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 2:
        raise ValueError(f"{what}: expected an (N, 2) array of volts, got shape {v.shape}")
    good = v[np.isfinite(v).all(axis=1)]
    n_nan = len(v) - len(good)
    if len(good):
        med = np.median(good, axis=0)
        mad = _MAD_SIGMA * np.median(np.abs(good - med), axis=0)
        good = good[(np.abs(good - med) <= 3 * mad).all(axis=1)]
    if len(good) < min_samples:
        raise ValueError(f"{what}: {len(good)} usable samples of {len(v)} ({n_nan} without an eye, the rest "
                         f"outside 3 MADs); need {min_samples}: repeat the fixation")
    return np.asarray(np.median(good, axis=0))


def fit_calibration(targets: Sequence[tuple[float, float]], volts_samples: Sequence[np.ndarray],
                    kind: CalibrationKind = "affine", max_error_deg: float = 1.0,
                    min_samples: int = 5) -> EyeCalibration:
    """Least-squares map from each target's robust volts centre to its position (deg).

    Refuses (ValueError) fewer points than the kind needs (affine 5, quadratic 9), a target without
    ``min_samples`` usable samples, volts that do not span both axes, and a fit whose largest error at
    a target exceeds ``max_error_deg``."""
    tgt = np.asarray(targets, dtype=np.float64).reshape(-1, 2)
    if len(volts_samples) != len(tgt):
        raise ValueError(f"{len(tgt)} targets but {len(volts_samples)} sample arrays")
    if len(tgt) < MIN_POINTS[kind]:
        raise ValueError(f"a {kind} calibration needs at least {MIN_POINTS[kind]} points, got {len(tgt)}")
    centres = np.array([robust_centre(s, min_samples, f"target {i} at {tuple(tgt[i].tolist())}")
                        for i, s in enumerate(volts_samples)])
    d = design_matrix(centres[:, 0], centres[:, 1], kind)
    coef, _, rank, _ = np.linalg.lstsq(d, tgt, rcond=None)
    if rank < d.shape[1]:
        raise ValueError(f"the volts at the targets do not determine a {kind} map (rank {rank} of "
                         f"{d.shape[1]}): is an eye channel flat or are the targets on a line?")
    err = np.hypot(*(d @ coef - tgt).T)
    worst = int(np.argmax(err))
    if err[worst] > max_error_deg:
        raise ValueError(f"calibration error {err[worst]:.2f} deg at target {worst} {tuple(tgt[worst].tolist())} "
                         f"exceeds {max_error_deg} deg: repeat that fixation or the calibration")
    return EyeCalibration(kind=kind, coef_x=coef[:, 0].tolist(), coef_y=coef[:, 1].tolist(),
                          rms_error_deg=float(np.sqrt(np.mean(err**2))), max_error_deg=float(err[worst]),
                          n_points=len(tgt))


def drift_correction(cal: EyeCalibration, volts_samples_at_centre: np.ndarray,
                     target: tuple[float, float] = (0.0, 0.0), max_drift_deg: float = 2.0,
                     min_samples: int = 5) -> EyeCalibration:
    """``cal`` with its drift changed so that the robust centre of a fixation on ``target`` maps onto it.

    Refuses (ValueError) a correction larger than ``max_drift_deg``: likely the animal looked elsewhere."""
    vx, vy = robust_centre(volts_samples_at_centre, min_samples, "drift fixation")
    x, y = cal.apply(float(vx), float(vy))
    dx, dy = target[0] - x, target[1] - y
    if np.hypot(dx, dy) > max_drift_deg:
        raise ValueError(f"drift of ({dx:.2f}, {dy:.2f}) deg exceeds {max_drift_deg} deg: likely a bad "
                         "fixation; repeat it or recalibrate")
    return cal.with_drift(dx, dy)


class AnalogGaze:
    """Gaze source over an analog eye signal: ``poll()`` maps the reader's new volts to degrees.

    A reader with ``open()`` / ``close()`` methods (the hardware readers) is opened and closed with the
    source. ``calibration`` may be replaced between polls (after a drift correction); ``last_raw`` holds
    the (times, volts) of the last poll, for recording calibration fixations from the same stream."""

    def __init__(self, reader: Reader, calibration: EyeCalibration, name: str = "analog") -> None:
        self.name = name
        self.calibration = calibration
        self.last_raw: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty((0, 2)))
        self._reader = reader
        self._open = False

    def open(self) -> None:
        if not self._open:
            getattr(self._reader, "open", lambda: None)()
            self._open = True

    def poll(self) -> list[GazeSample]:
        """The samples acquired since the last poll, in degrees (NaN volts give NaN degrees)."""
        if not self._open:
            raise StateError(f"gaze source {self.name!r} polled before open()")
        times, volts = self._reader()
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        v = np.asarray(volts, dtype=np.float64).reshape(-1, 2)
        if len(t) != len(v):
            raise AcquisitionError(f"{self.name}: reader gave {len(t)} times for {len(v)} samples")
        self.last_raw = (t, v)
        x, y = self.calibration.apply(v[:, 0], v[:, 1])
        return [GazeSample(t=ti, x=xi, y=yi) for ti, xi, yi in zip(t.tolist(), x.tolist(), y.tolist(), strict=True)]

    def close(self) -> None:
        if self._open:
            self._open = False
            getattr(self._reader, "close", lambda: None)()


class StreamReader:
    """A reader over blocking hardware reads in a background thread; times from the sample index.

    ``start()`` starts acquisition and returns the actual rate (Hz); ``read_chunk()`` blocks for the
    next (n, 2) volts; ``stop()`` ends acquisition. The first sample is stamped when ``start()`` returns."""

    def __init__(self, start: Callable[[], float], read_chunk: Callable[[], np.ndarray],
                 stop: Callable[[], None], label: str) -> None:
        self._start, self._read, self._stop, self.label = start, read_chunk, stop, label
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._t0 = self._rate = 0.0
        self._index = 0

    def open(self) -> None:
        self._halt.clear()
        self._chunks, self._error, self._index = [], None, 0
        self._rate = float(self._start())
        self._t0 = clock.now()
        self._thread = threading.Thread(target=self._run, name=f"{self.label}-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                chunk = np.asarray(self._read(), dtype=np.float64).reshape(-1, 2)
                with self._lock:
                    self._chunks.append(chunk)
        except Exception as e:  # reported on the next call
            self._error = e

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._thread is None:
            raise StateError(f"{self.label} reader called before open()")
        with self._lock:
            chunks, self._chunks = self._chunks, []
        if not chunks and self._error is not None:
            raise AcquisitionError(f"{self.label} acquisition stopped: {self._error}") from self._error
        volts = np.concatenate(chunks) if chunks else np.empty((0, 2))
        times = self._t0 + (self._index + np.arange(len(volts))) / self._rate
        self._index += len(volts)
        return times, volts

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
            self._stop()


def nidaqmx_reader(x_channel: str = "Dev1/ai0", y_channel: str = "Dev1/ai1", rate_hz: float = 1000,
                   volt_range: float = 10.0) -> StreamReader:
    """Continuous buffered NI-DAQmx acquisition of the two channels (+-``volt_range`` V), read in 10 ms chunks."""
    try:
        import nidaqmx
        from nidaqmx.constants import AcquisitionType
        from nidaqmx.stream_readers import AnalogMultiChannelReader
    except ImportError as e:
        raise InvalidRequest("nidaqmx_reader needs the nidaqmx package: pip install nidaqmx "
                             "(and the NI-DAQmx driver: python -m nidaqmx installdriver)") from e
    chunk = max(1, round(rate_hz / 100))
    buf = np.empty((2, chunk))
    box: dict[str, Any] = {}

    def start() -> float:
        task = box["task"] = nidaqmx.Task()
        try:
            for ch in (x_channel, y_channel):
                task.ai_channels.add_ai_voltage_chan(ch, min_val=-volt_range, max_val=volt_range)
            task.timing.cfg_samp_clk_timing(rate_hz, sample_mode=AcquisitionType.CONTINUOUS,
                                            samps_per_chan=int(rate_hz * 10))  # a 10 s buffer
            box["reader"] = AnalogMultiChannelReader(task.in_stream)
            task.start()
            return float(task.timing.samp_clk_rate)
        except Exception:
            task.close()
            raise

    def read_chunk() -> np.ndarray:
        box["reader"].read_many_sample(buf, number_of_samples_per_channel=chunk, timeout=2.0)
        return buf.T.copy()

    def stop() -> None:
        try:
            box["task"].stop()
        finally:
            box["task"].close()

    return StreamReader(start, read_chunk, stop, "nidaqmx")


def labjack_reader(x: str = "AIN0", y: str = "AIN1", rate_hz: float = 1000, device: str = "ANY",
                   volt_range: float = 10.0) -> StreamReader:
    """LabJack (T7/T4) LJM stream of the two inputs, read in 10 ms chunks; skipped samples become NaN."""
    try:
        from labjack import ljm
    except Exception as e:  # ImportError, or LJMError when the LJM library itself is missing
        raise InvalidRequest("labjack_reader needs the labjack-ljm package: pip install labjack-ljm "
                             "(and the LJM library from labjack.com)") from e
    scans = max(1, round(rate_hz / 100))
    box: dict[str, Any] = {}

    def start() -> float:
        h = box["h"] = ljm.openS(device, "ANY", "ANY")
        names, values = [f"{x}_RANGE", f"{y}_RANGE"], [volt_range, volt_range]
        if ljm.getHandleInfo(h)[0] != ljm.constants.dtT4:  # T7/T8: untriggered, internally clocked stream
            names, values = [*names, "STREAM_TRIGGER_INDEX", "STREAM_CLOCK_SOURCE"], [*values, 0, 0]
        try:
            ljm.eWriteNames(h, len(names), names, values)
            return float(ljm.eStreamStart(h, scans, 2, ljm.namesToAddresses(2, [x, y])[0], rate_hz))
        except Exception:
            ljm.close(h)
            raise

    def read_chunk() -> np.ndarray:
        v = np.asarray(ljm.eStreamRead(box["h"])[0], dtype=np.float64).reshape(-1, 2)
        v[v == ljm.constants.DUMMY_VALUE] = np.nan
        return v

    def stop() -> None:
        try:
            ljm.eStreamStop(box["h"])
        finally:
            ljm.close(box["h"])

    return StreamReader(start, read_chunk, stop, "labjack")
