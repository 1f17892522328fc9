"""The long fuzz run: every decoder of outside input, N cases in total, crashes and hangs counted.

Each target is a function ``target(data: bytes) -> None`` defined next to its suite tests; it
feeds ``data`` to a decoder and swallows the error types that decoder is allowed to raise, so
anything escaping it is a crash (an unexpected exception type, or a broken property). Cases are
made from the target's seeds (real, valid inputs) by random mutation (bit flips, interesting
bytes, deleted / inserted / duplicated / spliced chunks, truncation, nesting and alias bombs,
huge numbers) or are random bytes; case ``i`` of a target is the same on every run with the same
``--seed``. The cases of a target run one after another in one worker process (in-process: no
process per case), each under a SIGALRM timer: a case that takes longer than ``--hang-s`` (2 s)
is a hang, interrupted where Python code runs. A case stuck in C code (the timer cannot reach it:
e.g. libhdf5 looping on a damaged file while holding the GIL) is found by the supervising
process after ``--stuck-s`` (30 s), counted as a hang, and the worker is killed and replaced, going
on with the next case; a worker that dies in a case (segfault) counts as a crash.

    .venv/bin/python bench/fuzz.py [--cases 100000] [--seed 0] [--hang-s 2] [--stuck-s 30]
                                   [--only NAME ...] [--max-seconds S] [--save-dir DIR]

Prints, per target, the cases run, crashes (one example of each distinct exception type and
place) and hangs, and exits 1 if there was any crash or hang. To add a target, add one line to
:data:`TARGETS` (a name, the module, its target function and, optionally, its seeds function).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing as mp
import random
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Target:
    name: str
    module: str
    function: str
    seeds: str | None = None
    #: a target another change adds: skipped (and said so) while its module does not exist
    optional: bool = False


#: every fuzz target; adding one is one line
TARGETS: list[Target] = [
    Target("wire.decode", "tests.test_inputs", "fuzz_wire_frames", "wire_seeds"),
    Target("mqtt.command", "tests.bus.test_command_fuzz", "fuzz_command_bytes", "command_seeds"),
    Target("protocol.load", "tests.protocols.test_loader_limits", "fuzz_protocol_file", "protocol_seeds"),
    Target("rig.load", "tests.protocols.test_loader_limits", "fuzz_rig_file", "rig_seeds"),
    Target("session.read", "tests.store.test_fuzz_reader", "fuzz_session_bytes", "session_seeds", optional=True),
    Target("schedule.state", "tests.controller.test_schedule_state", "fuzz_schedule_state", "schedule_state_seeds"),
    Target("dashboard.request", "tests.dashboard.test_app", "fuzz_dashboard_request", "dashboard_request_seeds"),
]

#: byte strings worth inserting: JSON/YAML/TOML syntax, bombs, huge numbers, odd encodings
TOKENS: list[bytes] = [
    b"[", b"]", b"{", b"}", b'"', b"'", b"\\", b":", b",", b"\n", b"- ", b"? ", b"&a ", b"*a", b"<<: *a",
    b"!!python/object:os.system ", b"!!binary ", b"!!set ", b"%YAML 1.1\n", b"---\n", b"...\n", b"#", b"=",
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"0x1F", b"1_000", b"2001-02-30", b"1979-05-27T07:32:00Z",
    b"true", b"null", b"~", b"\x00", b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\\ud800",
    b"\xc0\x80", b"\t", b"\r", b'"__nd__"', b'"dtype":"<f4"', b'"shape":[1,2]', b'"kind":', b'"v":1',
    b'"id":', b'"msg":', b'"time":', b'"reason":', b'"when":', b"9" * 5000, b"9" * 400, b"[" * 2000,
    b"{" * 2000, b'{"a":' * 1200, b"- " * 1500, b"[[[[[[[[", b"\x1e\x1e",
]


_KEY_END = re.compile(rb"[:=]")
_VALUE_END = re.compile(rb"[,}\]\n]")
#: values swapped in after a key: each type, limits, emptiness, nesting
VALUES: list[bytes] = [
    b"null", b"true", b"false", b"0", b"-1", b"1", b"2147483648", b"-9223372036854775809", b"1e308", b"-1e-308",
    b"0.5", b"NaN", b'""', b'"x"', b'"' + b"x" * 2000 + b'"', b"[]", b"{}", b"[1, 2]", b'{"a": 1}', b"[[[]]]",
    b'"\\u0000"', b'"\\ud800"', b'"cmd.abort"', b'"stim.ping"', b'"after_block"', b'"normal"', b'"script"',
    b'{"__nd__": 0, "dtype": "<f4", "shape": [2]}', b'{"__nd__": 5, "dtype": "|O", "shape": [-1]}',
]


class _Hang(BaseException):
    """Raised by the timer inside a case that runs too long (BaseException: targets don't catch it)."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang()


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """``data`` with 1-8 random mutations."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(12)
        at = rng.randint(0, len(b))
        if op >= 10 and b:                                  # swap a value after ':' or '=' (stays parseable)
            m = _KEY_END.search(b, rng.randrange(len(b))) or _KEY_END.search(b)
            if m is not None:
                end = _VALUE_END.search(b, m.end())
                b[m.end(): end.start() if end else len(b)] = b" " + rng.choice(VALUES)
        elif op == 0 and b:                                 # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:                                 # set an interesting byte
            b[rng.randrange(len(b))] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x22, 0x5B, 0x7B, 0x5C, 0x0A, 0x3A, 0x2A])
        elif op == 2 and b:                                 # delete a chunk
            n = rng.randint(1, max(1, min(64, len(b) - at)))
            del b[at: at + n]
        elif op == 3:                                       # insert random bytes
            b[at:at] = rng.randbytes(rng.randint(1, 32))
        elif op == 4:                                       # insert a token
            b[at:at] = rng.choice(TOKENS)
        elif op == 5 and b:                                 # duplicate a chunk (maybe many times)
            start = rng.randrange(len(b))
            chunk = bytes(b[start: start + rng.randint(1, 32)])
            b[at:at] = chunk * rng.choice([1, 2, 10, 100])
        elif op == 6 and b:                                 # truncate
            del b[rng.randint(0, len(b)):]
        elif op == 7 and corpus:                            # splice with another seed
            other = rng.choice(corpus)
            cut = rng.randint(0, len(other))
            b = b[:at] + bytearray(other[cut:])
        elif op == 8 and b:                                 # replace a digit run by a huge number
            i = rng.randrange(len(b))
            if chr(b[i]).isdigit():
                b[i: i + 1] = rng.choice([b"9" * 5000, b"1" * 400, b"-1", b"1e309", b"0.0000000001"])
        else:                                               # wrap in nesting
            depth = rng.choice([2, 50, 200, 2000])
            open_, close = rng.choice([(b"[", b"]"), (b"{\"a\":", b"}"), (b"{a: ", b"}"), (b"- ", b"")])
            b = bytearray(open_ * depth) + b + bytearray(close * depth)
    return bytes(b[: 1 << 20])


def make_case(rng: random.Random, corpus: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.1 or not corpus:
        return rng.randbytes(rng.randint(0, 2048))
    if r < 0.15:
        return rng.choice(corpus)
    return mutate(rng.choice(corpus), rng, corpus)


def case(seed: int, name: str, i: int, corpus: list[bytes]) -> bytes:
    """Case ``i`` of target ``name``: the same bytes on every run with the same seed (so a case
    can be made again by the supervisor, and a worker can resume at any index)."""
    return make_case(random.Random(f"{seed}:{name}:{i}"), corpus)


@dataclass
class Result:
    name: str
    cases: int = 0
    seconds: float = 0.0
    crashes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)   # key -> (count, message, example)
    hangs: list[tuple[float, bytes]] = field(default_factory=list)
    skipped: str | None = None

    @property
    def n_crashes(self) -> int:
        return sum(c for c, _, _ in self.crashes.values())


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return "?"
    frame = tb[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def load(target: Target) -> tuple[Callable[[bytes], None], list[bytes]] | str:
    try:
        mod = importlib.import_module(target.module)
    except ModuleNotFoundError as exc:
        if target.optional and exc.name is not None and target.module.startswith(exc.name):
            return f"{target.module} not found (not written yet)"
        raise
    fn = getattr(mod, target.function)
    seeds = list(getattr(mod, target.seeds)()) if target.seeds else []
    return fn, seeds


def _worker(target: Target, start: int, stop: int, seed: int, hang_s: float, current: Any, conn: Any) -> None:
    """Run cases ``start..stop-1`` of ``target`` in this (worker) process, each under a SIGALRM
    timer; ``current`` holds the index of the case running; crashes and hangs go to ``conn``."""
    import logging

    logging.disable(logging.CRITICAL)
    loaded = load(target)
    assert not isinstance(loaded, str)
    fn, corpus = loaded
    use_timer = hasattr(signal, "setitimer")
    if use_timer:
        signal.signal(signal.SIGALRM, _alarm)
    for i in range(start, stop):
        data = case(seed, target.name, i, corpus)
        current.value = i
        t0 = time.perf_counter()
        try:
            if use_timer:
                signal.setitimer(signal.ITIMER_REAL, hang_s)
            try:
                fn(data)
            finally:
                if use_timer:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _Hang:
            conn.send(("hang", time.perf_counter() - t0, data))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a crash: anything the target does not expect
            key = f"{type(exc).__module__}.{type(exc).__qualname__} at {_where(exc)}"
            conn.send(("crash", key, f"{type(exc).__name__}: {str(exc)[:300]}", data))
        else:
            elapsed = time.perf_counter() - t0
            if elapsed > hang_s:  # slower than the limit, in code the timer could not interrupt
                conn.send(("hang", elapsed, data))
    current.value = stop
    conn.send(("done",))


def run_target(target: Target, n: int, seed: int, hang_s: float, deadline: float | None,
               save_dir: Path | None, stuck_s: float = 30.0) -> Result:
    """Run ``n`` cases of ``target`` in a worker process, supervised: a case that does not return
    within ``stuck_s`` (stuck in C code, where no timer reaches: the worker holds the GIL) is a
    hang; the worker is killed and a new one goes on with the next case."""
    res = Result(target.name)
    loaded = load(target)
    if isinstance(loaded, str):
        res.skipped = loaded
        return res
    corpus = loaded[1]
    ctx: Any = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    t_start = time.perf_counter()
    next_case, shown = 0, 0

    def record(msg: tuple[Any, ...]) -> None:
        if msg[0] == "crash":
            _, key, text, data = msg
            count, first, example = res.crashes.get(key, (0, text, data))
            if count == 0:
                _save(save_dir, target.name, "crash", len(res.crashes) + 1, data)
            res.crashes[key] = (count + 1, first, example)
        elif msg[0] == "hang":
            res.hangs.append((msg[1], msg[2]))
            _save(save_dir, target.name, "hang", len(res.hangs), msg[2])

    while next_case < n:
        current = ctx.Value("q", next_case, lock=False)
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(target, next_case, n, seed, hang_s, current, child), daemon=True)
        proc.start()
        child.close()
        seen, since = next_case, time.perf_counter()
        outcome: str | None = None            # done | died | stuck | deadline
        while outcome is None:
            if parent.poll(0.2):
                try:
                    msg = parent.recv()
                except EOFError:
                    outcome = "died"
                    continue
                if msg[0] == "done":
                    outcome = "done"
                else:
                    record(msg)
                continue
            now = time.perf_counter()
            if current.value != seen:
                seen, since = current.value, now
                if seen // 5000 > shown:
                    shown = seen // 5000
                    print(f"    {target.name}: {seen:,} cases, {now - t_start:.0f} s", file=sys.stderr, flush=True)
            elif not proc.is_alive():
                outcome = "died"
            elif now - since > stuck_s:
                outcome = "stuck"
            if outcome is None and deadline is not None and now > deadline:
                outcome = "deadline"
        if outcome in ("stuck", "deadline"):
            proc.kill()
        proc.join()
        while outcome != "done" and parent.poll(0):
            try:
                msg = parent.recv()
            except EOFError:
                break
            if msg[0] == "done":
                outcome = "done"
            else:
                record(msg)
        parent.close()
        at = int(current.value)
        if outcome == "done":
            next_case = n
        elif outcome == "deadline":
            res.cases = at
            res.seconds = time.perf_counter() - t_start
            return res
        elif outcome == "stuck":
            stuck_for = time.perf_counter() - since
            record(("hang", stuck_for, case(seed, target.name, at, corpus)))
            print(f"    {target.name}: case {at} stuck for {stuck_for:.0f} s in code no timer reaches "
                  f"(worker killed; going on)", file=sys.stderr, flush=True)
            next_case = at + 1
        else:  # the worker died inside a case (a segfault, an abort in C, os._exit): a crash
            record(("crash", f"worker died (exit code {proc.exitcode})", "the process ended during the case",
                    case(seed, target.name, at, corpus)))
            next_case = at + 1
    res.cases = n
    res.seconds = time.perf_counter() - t_start
    return res


def _save(save_dir: Path | None, name: str, kind: str, i: int, data: bytes) -> None:
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / f"{name}-{kind}-{i}.bin").write_bytes(data)


def _show(data: bytes, limit: int = 160) -> str:
    text = repr(data[:limit])
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


def report(results: list[Result], hang_s: float) -> int:
    bad = 0
    total = sum(r.cases for r in results)
    seconds = sum(r.seconds for r in results)
    print(f"{'target':<15} {'cases':>9} {'crashes':>8} {'hangs':>6} {'cases/s':>9}")
    for r in results:
        if r.skipped:
            print(f"{r.name:<15} {'skipped':>9}  ({r.skipped})")
            continue
        rate = r.cases / r.seconds if r.seconds else 0.0
        print(f"{r.name:<15} {r.cases:>9,} {r.n_crashes:>8,} {len(r.hangs):>6} {rate:>9,.0f}")
    print(f"{'total':<15} {total:>9,} {sum(r.n_crashes for r in results):>8,} "
          f"{sum(len(r.hangs) for r in results):>6} {total / seconds if seconds else 0:>9,.0f}"
          f"   ({seconds:.0f} s; a case over {hang_s:g} s is a hang)")
    for r in results:
        for key, (count, msg, example) in r.crashes.items():
            bad += 1
            print(f"\nCRASH {r.name}: {key} ({count}x)\n  {msg}\n  example: {_show(example)}")
        for elapsed, data in r.hangs[:3]:
            bad += 1
            print(f"\nHANG {r.name}: {elapsed:.1f} s\n  example: {_show(data)}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="cases in total, split evenly over the targets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=2.0, help="a case running longer is a hang")
    ap.add_argument("--stuck-s", type=float, default=30.0,
                    help="a case not returning for this long (stuck in C code) is a hang; its worker is replaced")
    ap.add_argument("--only", nargs="*", default=None, help="target names to run (default: all)")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop each target's share of this budget early")
    ap.add_argument("--save-dir", type=Path, default=None, help="write each crash/hang example here")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.CRITICAL)  # decoders log what they skip; a fuzz run would drown in it
    targets = [t for t in TARGETS if args.only is None or t.name in args.only]
    runnable = [t for t in targets if not isinstance(load(t), str)]
    per = args.cases // max(1, len(runnable))
    extra = args.cases - per * len(runnable)
    results = []
    budget_each = args.max_seconds / max(1, len(runnable)) if args.max_seconds else None
    for t in targets:
        n = per + (1 if extra > 0 and t in runnable else 0)
        if t in runnable:
            extra -= 1
        deadline = time.perf_counter() + budget_each if budget_each else None
        res = run_target(t, n, args.seed, args.hang_s, deadline, args.save_dir, args.stuck_s)
        print(f"  {t.name}: {res.cases:,} cases in {res.seconds:.0f} s" if not res.skipped else
              f"  {t.name}: skipped", file=sys.stderr, flush=True)
        results.append(res)
    return report(results, args.hang_s)


if __name__ == "__main__":
    sys.exit(main())
