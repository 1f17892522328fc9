"""Nothing from the wire names an arbitrary path on the modelserver (a real server, real files).

Exports go into ``<data_dir>/exports`` by plain name or come back inline; pools are built only from
the configured image roots; pool names are plain names. Every refusal is a typed error and leaves
the file system exactly as it was.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelserver.serving.server import ModelServer, ModelServerConfig
from modelserver.serving.versions import save_version
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig, FitReport
from wire.errors import Forbidden, InvalidRequest, LimitExceeded, NotFound
from wire.generate import GenBuildPool, GenMaximize, GenPoolInfo
from wire.model import Exported, ExportVersion, Predict, Prediction
from wire.transport import RpcClient

TINY = EnsembleConfig(members=2, channels=4, input_size=16, strides=(1,), first_stride=2, max_epochs=1,
                      batch_size=16, patience=5)


def _snapshot(*folders: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``folders``: (size, mtime_ns, link target) by path, symlinks not followed."""
    out = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns, os.readlink(p) if p.is_symlink() else "")
    return out


def _images(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"im{i}.png")


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A data folder with one real model version, an image root and, outside it, private files."""
    data, root, outside = tmp_path / "ms", tmp_path / "roots" / "stimuli", tmp_path / "private"
    (data / "versions").mkdir(parents=True)
    model = DeepEnsemble(TINY)
    model.add_session("s1", 3)
    save_version(data / "versions", model, FitReport(epochs=0, seconds=0.0, best_val_r=[0.0, 0.0]))
    _images(root / "set_a", 3)
    _images(outside / "secret_images", 2, seed=1)
    (outside / "victim.txt").write_text("do not touch")
    (root / "escape").symlink_to(outside / "secret_images", target_is_directory=True)  # a link out of the root
    (root / "mixed").mkdir()
    _images(root / "mixed", 1, seed=2)
    (root / "mixed" / "stolen.png").symlink_to(outside / "secret_images" / "im0.png")  # one file links out
    return {"data": data, "root": root, "outside": outside, "tmp": tmp_path}


@pytest.fixture
async def client(layout: dict[str, Path]) -> AsyncIterator[tuple[ModelServer, RpcClient]]:
    cfg = ModelServerConfig(data_dir=layout["data"], endpoint="tcp://127.0.0.1:0",
                            events_endpoint="tcp://127.0.0.1:0", ensemble=TINY, image_roots=[layout["root"]])
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as c:
        assert server.version is not None
        yield server, c


async def test_export_goes_into_the_exports_folder_or_comes_back_inline(
        client: tuple[ModelServer, RpcClient], layout: dict[str, Path]) -> None:
    server, c = client
    ex = await c.request(ExportVersion(name="day1.pt"), Exported)
    assert ex.path is not None and Path(ex.path) == (layout["data"] / "exports" / "day1.pt").resolve()
    blob = torch.load(ex.path, weights_only=True)
    assert "s1" in blob["sessions"] and ex.bytes == Path(ex.path).stat().st_size
    old = ExportVersion(path="day0.pt")  # the older field takes plain names too
    assert Path((await c.request(old, Exported)).path or "").name == "day0.pt"
    # inline: the same bytes, as a uint8 array (torch.save of tensors only: weights_only loads it)
    inline = await c.request(ExportVersion(inline=True), Exported)
    assert inline.path is None and inline.data is not None and inline.data.dtype == np.uint8
    assert inline.data.tobytes() == Path(ex.path).read_bytes()
    assert set(torch.load(io.BytesIO(inline.data.tobytes()), weights_only=True)) == set(blob)
    # an existing export is kept unless overwrite
    before = _snapshot(layout["data"] / "exports")
    with pytest.raises(Forbidden, match="exists"):
        await c.request(ExportVersion(name="day1.pt"), Exported)
    assert _snapshot(layout["data"] / "exports") == before
    again = await c.request(ExportVersion(name="day1.pt", overwrite=True), Exported)
    assert again.bytes == ex.bytes
    with pytest.raises(InvalidRequest, match="name"):
        await c.request(ExportVersion(), Exported)
    small = server.config.limits.__class__(max_export_bytes=10)
    server.config.limits = small
    with pytest.raises(LimitExceeded, match="max_export_bytes"):
        await c.request(ExportVersion(inline=True), Exported)


@pytest.mark.parametrize("name", [
    "../escape.pt", "../../private/victim.txt", "sub/dir.pt", "..", ".hidden.pt", "a\\b.pt", "C:evil.pt",
    "/tmp/abs.pt", "ok.pt\x00.txt",
])
async def test_export_paths_are_refused(client: tuple[ModelServer, RpcClient], layout: dict[str, Path],
                                        name: str) -> None:
    _, c = client
    before = _snapshot(layout["tmp"])
    for cmd in (ExportVersion(name=name), ExportVersion(path=name), ExportVersion(name=name, overwrite=True)):
        with pytest.raises(Forbidden):
            await c.request(cmd, Exported)
    assert _snapshot(layout["tmp"]) == before
    assert not Path("/tmp/abs.pt").exists()


async def test_export_through_a_symlink_out_is_refused(client: tuple[ModelServer, RpcClient],
                                                       layout: dict[str, Path]) -> None:
    _, c = client
    exports = layout["data"] / "exports"
    exports.mkdir()
    (exports / "link.pt").symlink_to(layout["outside"] / "victim.txt")
    before = _snapshot(layout["tmp"])
    for overwrite in (False, True):
        with pytest.raises(Forbidden):
            await c.request(ExportVersion(name="link.pt", overwrite=overwrite), Exported)
    assert _snapshot(layout["tmp"]) == before
    assert (layout["outside"] / "victim.txt").read_text() == "do not touch"


async def test_pools_come_only_from_the_image_roots(client: tuple[ModelServer, RpcClient],
                                                    layout: dict[str, Path]) -> None:
    _, c = client
    root, outside = layout["root"], layout["outside"]
    info = await c.request(GenBuildPool(pool="mine", folders=["set_a"]), GenPoolInfo)  # relative to a root
    assert info.size == 3 and Path(info.path).parent == (layout["data"] / "pools").resolve()
    info = await c.request(GenBuildPool(pool="mine2", folders=[str(root / "set_a")]), GenPoolInfo)  # absolute inside
    assert info.size == 3
    before = _snapshot(layout["tmp"])
    refused = [
        [str(outside / "secret_images")],  # an absolute folder outside every root
        ["../../private/secret_images"],  # '..' out of the root
        ["set_a/../../../private/secret_images"],
        [str(root / ".." / ".." / "private" / "secret_images")],  # '..' inside an absolute path
        ["escape"],  # a symlink in the root that points out of it
        ["mixed"],  # a folder in the root holding a file that links out
        ["/"], ["/etc"],
    ]
    for folders in refused:
        with pytest.raises(Forbidden):
            await c.request(GenBuildPool(pool="stolen", folders=folders), GenPoolInfo)
    with pytest.raises(NotFound):
        await c.request(GenBuildPool(pool="stolen", folders=["no_such_folder"]), GenPoolInfo)
    assert _snapshot(layout["tmp"]) == before
    with pytest.raises(NotFound):  # and nothing can be read back from a pool that was never made
        await c.request(GenMaximize(model="s1", pool="stolen", neurons=[0], k=1), GenMaximize)


@pytest.mark.parametrize("pool", ["../x", "../../private/victim", "a/b", ".hidden", "..", "/tmp/p", "a\\b",
                                  "p\x00"])
async def test_pool_names_are_not_paths(client: tuple[ModelServer, RpcClient], layout: dict[str, Path],
                                        pool: str) -> None:
    _, c = client
    before = _snapshot(layout["tmp"])
    with pytest.raises(Forbidden):
        await c.request(GenBuildPool(pool=pool, folders=["set_a"]), GenPoolInfo)
    with pytest.raises(Forbidden):
        await c.request(GenMaximize(model="s1", pool=pool, neurons=[0], k=1), GenMaximize)
    assert _snapshot(layout["tmp"]) == before


async def test_a_pool_file_that_links_out_is_refused(client: tuple[ModelServer, RpcClient],
                                                     layout: dict[str, Path]) -> None:
    _, c = client
    (layout["data"] / "pools" / "evil.h5").symlink_to(layout["outside"] / "victim.txt")
    before = _snapshot(layout["tmp"])
    with pytest.raises(Forbidden):
        await c.request(GenMaximize(model="s1", pool="evil", neurons=[0], k=1), GenMaximize)
    with pytest.raises(Forbidden):
        await c.request(GenBuildPool(pool="evil", folders=["set_a"]), GenPoolInfo)
    assert _snapshot(layout["tmp"]) == before


async def test_without_image_roots_only_crops_make_pools(layout: dict[str, Path]) -> None:
    cfg = ModelServerConfig(data_dir=layout["data"], endpoint="tcp://127.0.0.1:0",
                            events_endpoint="tcp://127.0.0.1:0", ensemble=TINY)
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as c:
        before = _snapshot(layout["tmp"])
        with pytest.raises(Forbidden, match="--image-root"):
            await c.request(GenBuildPool(pool="p", folders=[str(layout["root"] / "set_a")]), GenPoolInfo)
        assert _snapshot(layout["tmp"]) == before


async def test_predict_size_is_bounded(client: tuple[ModelServer, RpcClient]) -> None:
    server, c = client
    server.config.limits = server.config.limits.__class__(max_predict_images=4)
    with pytest.raises(LimitExceeded, match="max_predict_images"):
        await c.request(Predict(session="s1", images=np.zeros((5, 16, 16, 3), np.uint8)), Prediction)
    pred = await c.request(Predict(session="s1", images=np.zeros((4, 16, 16, 3), np.uint8)), Prediction)
    assert pred.responses.shape == (3, 4)
