"""The cortexloop command line: help lists subcommands; smoke and inspect work end to end."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from controller.cli import app

runner = CliRunner()


def test_help_lists_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("smoke", "inspect", "keys", "version"):
        assert name in result.output


def test_smoke_writes_a_session_that_inspect_reads(tmp_path: Path) -> None:
    result = runner.invoke(app, ["smoke", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "16 images read back" in result.output
    (session,) = tmp_path.glob("smoke-*.h5")
    result = runner.invoke(app, ["inspect", str(session)])
    assert result.exit_code == 0, result.output
    assert "image" in result.output and "16" in result.output


def test_inspect_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope.h5")])
    assert result.exit_code != 0
    assert "no session file" in str(result.exception)


def test_keys_generate(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "generate", str(tmp_path), "rig1"])
    assert result.exit_code == 0
    assert (tmp_path / "rig1.key").is_file() and (tmp_path / "rig1.key_secret").is_file()


CHECK = """
protocol: script
title: rig check
steps:
  - kind: present_block
    block_id: check-0
    repeats: 2
    on_frames: 3
    off_frames: 3
    images:
      - {source: normal, n_images: 8, condition: normal, seed: 11}
      - {source: gaudy, n_images: 8}
  - kind: wait_for_counts
    block_id: check-0
  - kind: analyse
    analysis: percent_change
    name: gaudy_vs_normal
    blocks: [check-0]
    conditions: [gaudy]
    baseline: normal
"""


def test_run_a_protocol_on_embedded_defaults(tmp_path: Path) -> None:
    from controller.store import SessionReader
    from wire.documents import ResponseDoc, StepDoc

    proto = tmp_path / "check.yaml"
    proto.write_text(CHECK)
    result = runner.invoke(app, ["run", str(proto), "--out", str(tmp_path / "out"), "--session-id", "s1"])
    assert result.exit_code == 0, result.output
    assert "success: 32 trials with counts" in result.output
    with SessionReader(tmp_path / "out" / "s1.h5") as r:
        docs = list(r.documents())
    assert sum(isinstance(d, ResponseDoc) for d in docs) == 32
    analysis = next(d for d in docs if isinstance(d, StepDoc) and d.step["kind"] == "analyse")
    assert analysis.result["comparisons"][0]["condition"] == "gaudy"
    assert (tmp_path / "out" / "bus-operator.json").stat().st_mode & 0o077 == 0
    report = runner.invoke(app, ["report", str(tmp_path / "out" / "s1.h5"), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert "s1-causal.png" in page and "timing.png" in page and "gaudy" in page
    assert (tmp_path / "report" / "s1-causal.png").stat().st_size > 1000
    again = runner.invoke(app, ["run", str(proto), "--out", str(tmp_path / "out"), "--session-id", "s1"])
    assert again.exit_code != 0 and "--resume" in str(again.exception)


def test_simulate_prints_steps(tmp_path: Path) -> None:
    proto = tmp_path / "check.yaml"
    proto.write_text(CHECK)
    result = runner.invoke(app, ["simulate", str(proto)])
    assert result.exit_code == 0, result.output
    assert "present_block" in result.output or "check-0" in result.output


def test_run_reports_every_protocol_problem(tmp_path: Path) -> None:
    proto = tmp_path / "bad.yaml"
    proto.write_text("protocol: script\nsteps:\n  - kind: present_block\n    block_id: ''\n    repeats: 0\n")
    result = runner.invoke(app, ["run", str(proto), "--out", str(tmp_path)])
    assert result.exit_code != 0
    text = str(result.exception)
    assert "3 problem(s)" in text and "bad.yaml:5:5: steps[0].repeats" in text


async def test_pause_and_status_commands_over_an_embedded_broker(tmp_path: Path) -> None:
    import asyncio

    from controller.bus.access import BusUser
    from controller.bus.broker import EmbeddedBroker
    from controller.bus.mqtt import MqttBus
    from wire.topics import PauseCommand, SessionStatus

    ctl, op = BusUser("controller", "pw-c", "controller", "rig7"), BusUser("operator", "pw-o", "operator", "rig7")
    async with EmbeddedBroker.for_users(tmp_path, [ctl, op]) as broker:
        creds = tmp_path / "bus-operator.json"
        creds.write_text(f'{{"broker": "{broker.host}:{broker.port}", "rig": "rig7", "username": "operator", '
                         f'"password": "pw-o"}}')
        async with MqttBus("rig7", broker.host, broker.port, username="controller", password="pw-c") as bus:
            await bus.publish(SessionStatus(rig="rig7", state="running", session_id="s9"))
            result = await asyncio.to_thread(runner.invoke, app, ["status", "--credentials", str(creds)])
            assert result.exit_code == 0, result.output
            assert '"state": "running"' in result.output and "s9" in result.output
            result = await asyncio.to_thread(runner.invoke, app, ["pause", "--credentials", str(creds),
                                                                  "--reason", "fix the juice line"])
            assert result.exit_code == 0, result.output
            cmd = await asyncio.wait_for(anext(aiter(bus.commands())), 10)
            assert isinstance(cmd, PauseCommand) and cmd.reason == "fix the juice line"


def test_import_replay_export_chain(tmp_path: Path) -> None:
    """import-v4 -> replay (identical counts, no modelserver needed) -> export --nwb (nwbinspector clean)."""
    from tests.controller.test_replay import fake_v4

    fake_v4(tmp_path / "v4", "s9", raw=True)
    result = runner.invoke(app, ["import-v4", "s9", "--data", str(tmp_path / "v4"), "--out", str(tmp_path / "imp")])
    assert result.exit_code == 0, result.output
    session = tmp_path / "imp" / "v4-s9.h5"
    result = runner.invoke(app, ["replay", str(session), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "18 (18 identical)" in result.output
    replayed = tmp_path / "rep" / "v4-s9.replay.h5"
    assert (tmp_path / "rep" / "v4-s9.replay.comparison.json").is_file()
    result = runner.invoke(app, ["export", str(replayed), "--nwb"])
    assert result.exit_code == 0, result.output
    assert "no violations" in result.output and replayed.with_suffix(".nwb").is_file()
    result = runner.invoke(app, ["export", str(replayed), "--nwb"])  # never overwrites unasked
    assert result.exit_code != 0 and "exists" in str(result.exception)
    result = runner.invoke(app, ["replay", str(session), "--out", str(tmp_path / "rep"), "--policy", "greedy"])
    assert result.exit_code != 0 and "unknown policy" in str(result.exception)
