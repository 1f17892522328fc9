"""A child's traceback is kept whole for the session's events (the README's dashboard screenshot showed
a modelserver InternalError fallback whose traceback only ever reached a console)."""

from __future__ import annotations

import asyncio

from controller.children import Child

SCRIPT = """
import logging, sys, time
logging.basicConfig(stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s %(message)s")
print("toy ready", flush=True)
time.sleep(0.3)
try:
    {}["model"]
except KeyError:
    logging.getLogger("toy").exception("generation failed")
print("toy INFO after", flush=True)
sys.stdout.flush()
time.sleep(30)
"""


async def test_a_childs_traceback_reaches_the_hook_whole() -> None:
    got: list[tuple[str, str]] = []
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hook(name: str, text: str) -> None:  # on the child's pump thread
        got.append((name, text))
        loop.call_soon_threadsafe(arrived.set)

    child = await Child.start("toy", ["-c", SCRIPT], ready="toy ready", timeout=30)
    child.on_traceback = hook
    try:
        async with asyncio.timeout(20):
            await arrived.wait()
    finally:
        child.stop(grace=2)
    ((name, text),) = got
    lines = text.strip().splitlines()
    assert name == "toy" and lines[0].startswith("Traceback (most recent call last)")
    assert lines[-1] == "KeyError: 'model'" and any('File "<string>"' in ln for ln in lines)
