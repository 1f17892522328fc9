"""Inputs a user hands in: image files of every common mode, bad files in folders and zips, and
the wire decoder fuzzed (it raises only ``wire.errors`` types, fast, for any frames at all)."""

from __future__ import annotations

import io
import json
import re
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from controller.images import ImageLibrary, read_zip_images
from wire.errors import CortexloopError, InvalidRequest
from wire.imageio import (
    BACKGROUND,
    MAX_PIXELS,
    ImageDecodeError,
    ImageProblem,
    decode_image,
    read_image,
    to_rgb8,
)


def save(tmp_path: Path, img: Image.Image, name: str, **kw: object) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def grey(values: list[int] | np.ndarray) -> np.ndarray:
    """Expected RGB pixels of a row of grey levels."""
    v = np.asarray(values, dtype=np.uint8)[None, :]
    return np.repeat(v[..., None], 3, axis=-1)


# --- modes ----------------------------------------------------------------------------------------
def test_rgb_and_grey_are_read_as_they_are(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(read_image(save(tmp_path, Image.fromarray(rgb), "rgb.png")), rgb)
    row = np.array([[0, 17, 128, 255]], np.uint8)
    assert np.array_equal(read_image(save(tmp_path, Image.fromarray(row), "l.png")), grey(row[0]))


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 257 * 100, 32768, 65535]], np.uint16)
    expected = grey(np.rint(values[0] / 257.0).astype(np.uint8))  # [0, 4, 100, 128, 255]
    png = save(tmp_path, Image.fromarray(values), "g16.png")
    with Image.open(png) as img:
        assert img.mode == "I;16"
    assert np.array_equal(read_image(png), expected)
    # big-endian 16-bit (TIFF keeps I;16B)
    tif = save(tmp_path, Image.frombytes("I;16B", (5, 1), values.astype(">u2").tobytes()), "g16b.tif")
    with Image.open(tif) as img:
        assert img.mode == "I;16B"
    assert np.array_equal(read_image(tif), expected)
    # Pillow's own convert("RGB") clips: the reason for the decoder
    with Image.open(png) as img:
        assert np.asarray(img.convert("RGB"))[0, 1, 0] == 255


def test_32_bit_integer_grey_is_16_bit_when_in_range_else_stretched(tmp_path: Path) -> None:
    in16 = np.array([[0, 257 * 10, 65535]], np.int32)
    tif = save(tmp_path, Image.frombytes("I", (3, 1), in16.astype("<i4").tobytes()), "i.tif")
    with Image.open(tif) as img:
        assert img.mode == "I"
    assert np.array_equal(read_image(tif), grey([0, 10, 255]))
    wide = np.array([[-100, 0, 100]], np.int32)
    img = Image.frombytes("I", (3, 1), wide.astype("<i4").tobytes())
    assert np.array_equal(to_rgb8(img), grey([0, 128, 255]))


def test_float_images_are_scaled_from_their_range(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    tif = save(tmp_path, Image.frombytes("F", (4, 1), unit.tobytes()), "f.tif")
    with Image.open(tif) as img:
        assert img.mode == "F"
    assert np.array_equal(read_image(tif), grey([0, 64, 128, 255]))        # 0..1 intensities
    wide = np.array([[-1.0, 0.0, 1.0, 3.0]], np.float32)                    # any other range: min..max
    assert np.array_equal(to_rgb8(Image.frombytes("F", (4, 1), wide.tobytes())), grey([0, 64, 128, 255]))
    flat = np.full((1, 3), 7.5, np.float32)                                 # constant outside 0..1: mid-grey
    assert np.array_equal(to_rgb8(Image.frombytes("F", (3, 1), flat.tobytes())), grey([BACKGROUND] * 3))
    bad = np.array([[0.0, np.nan]], np.float32)
    with pytest.raises(ImageDecodeError, match="NaN"):
        to_rgb8(Image.frombytes("F", (2, 1), bad.tobytes()), "nan.tif")


def test_alpha_is_composited_on_mid_grey(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [255, 0, 0, 128], [0, 0, 0, 51]]], np.uint8)
    got = read_image(save(tmp_path, Image.frombytes("RGBA", (4, 1), rgba.tobytes()), "rgba.png"))
    a = rgba[..., 3:4].astype(float) / 255
    expected = np.rint(rgba[..., :3] * a + BACKGROUND * (1 - a)).astype(np.uint8)
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert got[0, 0].tolist() == [255, 0, 0] and got[0, 1].tolist() == [BACKGROUND] * 3
    # grey + alpha
    la = Image.frombytes("LA", (2, 1), bytes([200, 255, 200, 0]))
    assert np.array_equal(read_image(save(tmp_path, la, "la.png")), grey([200, BACKGROUND]))
    # palette + alpha (PA, in TIFF) and palette with a transparent index (GIF, PNG)
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (3 * 253))
    pal.putdata([0, 1, 2])
    for name in ("tp.gif", "tp.png"):
        got = read_image(save(tmp_path, pal, name, transparency=1))
        assert got.tolist() == [[[255, 0, 0], [BACKGROUND] * 3, [0, 0, 255]]], name
    pa = pal.convert("PA")
    pa.putalpha(Image.frombytes("L", (3, 1), bytes([255, 0, 255])))
    tif = save(tmp_path, pa, "pa.tif")
    with Image.open(tif) as img:
        assert img.mode == "PA"
    assert read_image(tif).tolist() == [[[255, 0, 0], [BACKGROUND] * 3, [0, 0, 255]]]


def test_palette_bilevel_and_cmyk_are_converted(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * (3 * 254))
    pal.putdata([1, 0])
    assert read_image(save(tmp_path, pal, "p.png")).tolist() == [[[200, 100, 0], [10, 20, 30]]]
    bits = Image.frombytes("L", (3, 1), bytes([0, 255, 0])).convert("1")
    png = save(tmp_path, bits, "b.png")
    with Image.open(png) as img:
        assert img.mode == "1"
    assert np.array_equal(read_image(png), grey([0, 255, 0]))
    cmyk = Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255]))
    tif = save(tmp_path, cmyk, "c.tif")
    with Image.open(tif) as img:
        assert img.mode == "CMYK"
    assert read_image(tif).tolist() == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]
    jpg = save(tmp_path, Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "c.jpg", quality=95)
    assert np.abs(read_image(jpg).astype(int) - 255).max() <= 2


def test_tiny_images_are_fine_and_empty_ones_refused(tmp_path: Path) -> None:
    one = save(tmp_path, Image.new("RGB", (1, 1), (1, 2, 3)), "one.png")
    assert read_image(one).tolist() == [[[1, 2, 3]]]
    with pytest.raises(ImageDecodeError, match="empty"):
        to_rgb8(Image.new("RGB", (0, 3)), "zero")
    with pytest.raises(ImageDecodeError, match=r"zero\.png"):
        decode_image(_png_header(0, 5), "zero.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` 8-bit grey, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        _chunk(b"IEND", b"")


def test_huge_images_are_refused_from_their_header_before_decoding() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="limit") as err:
        decode_image(_png_header(50_000, 50_000), "bomb.png")   # 2.5 gigapixels in 100 bytes
    assert "bomb.png" in str(err.value)
    assert time.perf_counter() - t0 < 1.0
    side = int(MAX_PIXELS ** 0.5) + 1
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(_png_header(side, side), "just-over.png")
    with pytest.raises(ImageDecodeError, match="limit"):
        to_rgb8(Image.new("L", (20, 20)), "small-limit", max_pixels=100)


def test_broken_files_are_refused_with_their_name(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.jpg", "text.png", "empty.png"):
        with pytest.raises(ImageDecodeError, match=re.escape(name)):
            read_image(tmp_path / name)
    with pytest.raises(ImageDecodeError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")
    assert issubclass(ImageDecodeError, InvalidRequest)  # travels as 'invalid'


# --- folders and zips: a bad file is reported and skipped -------------------------------------------
def _png(seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_bad_entry_in_a_zip_is_reported_and_skipped(tmp_path: Path) -> None:
    z = tmp_path / "images_s1.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.png", _png(1))
        zf.writestr("b.png", b"garbage")
        zf.writestr("c.png", _png(2))
        zf.writestr("d.png", _png(3, size=8))       # a different size: the library is one array
        zf.writestr("e.txt", b"ignored")
    problems: list[ImageProblem] = []
    images = read_zip_images(z, problems=problems)
    assert images.shape == (2, 16, 16, 3)
    assert [p.name.rsplit(":", 1)[1] for p in problems] == ["b.png", "d.png"]
    assert "not an image" in problems[0].message and "8 x 8" in problems[1].message
    assert read_zip_images(z, limit=1).shape == (1, 16, 16, 3)
    (tmp_path / "images").mkdir()
    z.rename(tmp_path / "images" / "images_s1.zip")
    problems = []
    lib = ImageLibrary.from_v4(tmp_path, ["s1"], problems=problems)
    assert len(lib) == 2 and len(problems) == 2


def test_a_bad_file_in_an_image_folder_is_reported_and_skipped(tmp_path: Path) -> None:
    pool = pytest.importorskip("modelserver.generate.pool")
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(_png(1))
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    (folder / "sub" / "c.tif").write_bytes(b"")
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(folder / "sub" / "d.png")
    problems: list[ImageProblem] = []
    got = list(pool.folder_images(folder, problems))
    assert len(got) == 2
    assert got[1].tolist() == [[[0, 0, 0], [255, 255, 255]]]      # the 16-bit one, scaled
    assert sorted(Path(p.name).name for p in problems) == ["b.png", "c.tif"]
    # v4_images skips a bad zip entry too
    (tmp_path / "v4" / "images").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "v4" / "images" / "images_x.zip", "w") as zf:
        zf.writestr("1.png", _png(1))
        zf.writestr("2.png", b"bad")
        zf.writestr("3.png", _png(3))
    problems = []
    assert len(list(pool.v4_images(tmp_path / "v4", problems=problems))) == 2 and len(problems) == 1
    assert len(list(pool.v4_images(tmp_path / "v4", limit=1))) == 1


# --- the wire decoder, fuzzed ------------------------------------------------------------------------
#: the suite's hang guard per example (the long fuzz command, bench/fuzz.py, uses 2 s and a timer)
SUITE_HANG_S = 5.0
#: frames are separated by this byte sequence in a fuzz case's bytes
FRAME_SEP = b"\x1e\x1e"


def _wire_adapter():  # type: ignore[no-untyped-def]
    from tests.wire.examples import all_message_classes
    from wire.transport import union_adapter

    global _ADAPTER
    if _ADAPTER is None:
        _ADAPTER = union_adapter(all_message_classes())
    return _ADAPTER


_ADAPTER = None


def wire_seeds() -> list[bytes]:
    """Real encoded messages (one of every kind), frames joined by :data:`FRAME_SEP`."""
    from tests.wire.examples import all_message_classes, example
    from wire.codec import encode

    return [FRAME_SEP.join(bytes(f) for f in encode(example(cls), f"rid-{i}"))
            for i, cls in enumerate(all_message_classes())]


def fuzz_wire_frames(data: bytes) -> None:
    """Fuzz target: decode ``data`` (frames split at :data:`FRAME_SEP`) with the union of every
    message; only ``wire.errors`` types (CortexloopError) may come out."""
    from wire.codec import decode

    try:
        decode(data.split(FRAME_SEP), _wire_adapter())
    except CortexloopError:
        pass


def _guarded(target, data: bytes) -> None:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    target(data)
    assert time.perf_counter() - t0 < SUITE_HANG_S, f"hang: {len(data)} bytes took > {SUITE_HANG_S} s"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_wire_decoder_raises_only_wire_errors_on_random_bytes(data: bytes) -> None:
    _guarded(fuzz_wire_frames, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=json_values, rid=st.one_of(st.none(), st.text(max_size=10), st.integers()),
       kind=st.sampled_from(["stim.ping", "ping", "model.predict", "x", ""]),
       frames=st.lists(st.binary(max_size=64), max_size=3),
       arr=st.fixed_dictionaries({"__nd__": st.integers(-1, 3), "dtype": st.sampled_from(["<f4", "|u1", "<i8", "O", 1]),
                                  "shape": st.lists(st.integers(-2, 2 ** 40), max_size=3)}))
def test_wire_decoder_raises_only_wire_errors_on_structured_headers(msg: object, rid: object, kind: str,
                                                                    frames: list[bytes], arr: dict) -> None:
    body = {"kind": kind, "x": msg, "a": arr} if isinstance(msg, dict | list) else msg
    header = json.dumps({"v": 1, "id": rid, "msg": body}).encode()
    _guarded(fuzz_wire_frames, FRAME_SEP.join([header, *frames]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10 ** 6), cuts=st.lists(st.tuples(st.integers(0, 4096), st.binary(max_size=8)), max_size=4))
def test_wire_decoder_raises_only_wire_errors_on_mutated_messages(seed: int, cuts: list[tuple[int, bytes]]) -> None:
    seeds = _WIRE_SEEDS or _WIRE_SEEDS.extend(wire_seeds()) or _WIRE_SEEDS
    data = bytearray(seeds[seed % len(seeds)])
    for at, junk in cuts:
        at = at % (len(data) + 1)
        data[at: at + len(junk)] = junk
    _guarded(fuzz_wire_frames, bytes(data))


_WIRE_SEEDS: list[bytes] = []


@pytest.mark.parametrize("header", [
    b"[" * 100_000,
    b'{"v":1,"msg":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"v":1,"msg":{"a":' * 900 + b"1" + b"}" * 900,
    b'{"v":1,"msg":' + b"1" * 5000 + b"}",                         # an integer of more than 4300 digits
    b'{"v":1,"msg":{"kind":"stim.ping","x":NaN}}',
    b"\xff\xfe{",
    b'{"v":1,"msg":{"__nd__":0,"dtype":"<f4","shape":[99999999999,99999999999]}}',
], ids=["deep-list", "deep-msg", "deep-dict", "huge-int", "nan", "not-utf8", "absurd-shape"])
def test_wire_decoder_known_nasty_headers(header: bytes) -> None:
    _guarded(fuzz_wire_frames, FRAME_SEP.join([header, b""]))


# --- security round 2: what a file's name claims is not what gets decoded -------------------------
def test_an_eps_file_named_png_is_refused_without_running_ghostscript(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from PIL import EpsImagePlugin

    from wire.imageio import ImageDecodeError, read_image

    def no_gs(*a: object, **k: object) -> None:
        raise AssertionError("Ghostscript was asked to render a user's file")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_gs)
    eps = tmp_path / "innocent.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n"
                    b"showpage\n%%EOF\n")
    with pytest.raises(ImageDecodeError, match="not an image file of the formats read"):
        read_image(eps)


def test_a_small_float_tiff_with_a_huge_canvas_is_refused_from_its_header(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from wire.imageio import MAX_WIDE_PIXELS, ImageDecodeError, read_image

    side = int(MAX_WIDE_PIXELS**0.5) + 100
    path = tmp_path / "flat.tif"
    Image.fromarray(np.zeros((side, side), np.float32), mode="F").save(path, compression="tiff_deflate")
    assert path.stat().st_size < 2_000_000  # a few hundred kB on disk
    with pytest.raises(ImageDecodeError, match="more than 8 bits per sample"):
        read_image(path)
    small = tmp_path / "small.tif"
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(small)
    px = read_image(small)
    assert px.shape == (64, 64, 3) and px[0, 0, 0] == 0 and px[-1, -1, 0] == 255
