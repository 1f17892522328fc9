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
