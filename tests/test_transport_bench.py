"""The transport benchmark's pickle baseline loads arrays but refuses any other global."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_baseline_unpickler_only_builds_arrays() -> None:
    spec = importlib.util.spec_from_file_location("transport_bench", REPO / "bench" / "transport_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    batch = np.arange(2 * 112 * 112 * 3, dtype=np.uint8).reshape(2, 112, 112, 3)
    got = bench._load(pickle.dumps({"pixels": batch, "ids": ["a"]}, protocol=pickle.HIGHEST_PROTOCOL))
    np.testing.assert_array_equal(got["pixels"], batch)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        bench._load(pickle.dumps(Evil()))
