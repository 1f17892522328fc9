"""A real LSL rig in another process, for tests: reads one JSON line from stdin
``{"spike_name", "marker_name", "spikes": [[unit, t], ...], "markers": [[label, t], ...]}``,
waits until the test's inlets are connected, pushes everything with those exact timestamps,
prints "pushed", then waits for stdin to close before exiting (so no data is lost in flight).
"""

from __future__ import annotations

import json
import sys

import pylsl


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    spikes = pylsl.StreamOutlet(pylsl.StreamInfo(spec["spike_name"], "Spikes", 1, pylsl.IRREGULAR_RATE,
                                                 "int32", spec["spike_name"] + "-src"))
    markers = pylsl.StreamOutlet(pylsl.StreamInfo(spec["marker_name"], "Markers", 1, pylsl.IRREGULAR_RATE,
                                                  "string", spec["marker_name"] + "-src"))
    print("ready", flush=True)
    if not (spikes.wait_for_consumers(20) and markers.wait_for_consumers(20)):
        print("no consumers", flush=True)
        sys.exit(1)
    events = [(t, "m", label) for label, t in spec["markers"]] + [(t, "s", u) for u, t in spec["spikes"]]
    events.sort(key=lambda e: e[0])
    chunk: list[tuple[float, int]] = []
    for t, kind, val in events:  # in time order; spikes in chunks, markers as they come
        if kind == "m":
            if chunk:
                spikes.push_chunk([[u] for _, u in chunk], [ts for ts, _ in chunk])
                chunk = []
            markers.push_sample([val], t)
        else:
            chunk.append((t, val))
            if len(chunk) >= 50:
                spikes.push_chunk([[u] for _, u in chunk], [ts for ts, _ in chunk])
                chunk = []
    if chunk:
        spikes.push_chunk([[u] for _, u in chunk], [ts for ts, _ in chunk])
    print("pushed", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
