"""Topic names and payload validation (wire.topics)."""

from __future__ import annotations

import pytest

from controller.bus import acl_for, mosquitto_acl, topic_matches
from controller.bus.access import BusUser
from wire.errors import DecodeError
from wire.topics import (
    AbortCommand,
    BlockStatus,
    ModelProgress,
    PauseCommand,
    SessionStatus,
    Topics,
    TrialStatus,
    decode_command,
    decode_status,
    encode_payload,
)


def test_topic_names() -> None:
    t = Topics("rig1")
    assert t.status == "cortexloop/rig1/session/status"
    assert t.block == "cortexloop/rig1/session/block" and t.trial == "cortexloop/rig1/session/trial"
    assert t.model_progress == "cortexloop/rig1/model/progress"
    assert t.command("abort") == "cortexloop/rig1/cmd/abort" and t.commands == "cortexloop/rig1/cmd/+"
    assert t.for_message(BlockStatus(block_id="b", state="running", n_trials=3)) == t.block
    assert t.for_message(TrialStatus(block_id="b", index=0, image_id="x")) == t.trial
    assert t.for_message(ModelProgress(task="retrain", fraction=0.5)) == t.model_progress
    assert t.retained(SessionStatus(rig="rig1", state="idle"))
    with pytest.raises(DecodeError):
        Topics("rig/1")
    with pytest.raises(DecodeError):
        Topics("+")
    with pytest.raises(DecodeError):
        t.command("selfdestruct")


def test_decode_command() -> None:
    t = Topics("rig1")
    cmd = PauseCommand(reason="r", when="after_trial")
    assert decode_command(t.command("pause"), encode_payload(cmd), "rig1") == cmd
    assert isinstance(decode_command(t.command("abort"), b"", "rig1"), AbortCommand)      # empty: defaults
    assert decode_command(t.command("resume"), b'{"reason": "the \\"kind\\" one"}', "rig1").reason == 'the "kind" one'

    bad = [
        (t.command("pause"), b"{not json"),
        (t.command("pause"), b"[1, 2]"),
        (t.command("pause"), b'{"when": "never"}'),
        (t.command("pause"), b'{"extra": 1}'),
        (t.command("pause"), encode_payload(AbortCommand())),   # kind does not match the topic
        ("cortexloop/rig2/cmd/pause", b""),                      # another rig
        ("cortexloop/rig1/cmd/reboot", b""),
    ]
    for topic, payload in bad:
        with pytest.raises(DecodeError):
            decode_command(topic, payload, "rig1")


def test_decode_status() -> None:
    msg = ModelProgress(task="retrain", fraction=0.25, epoch=3, loss=0.5)
    assert decode_status("cortexloop/r/model/progress", encode_payload(msg), "r") == msg
    with pytest.raises(DecodeError):
        decode_status("cortexloop/r/session/status", encode_payload(msg), "r")
    with pytest.raises(DecodeError):
        decode_status("cortexloop/r/cmd/pause", b"{}", "r")


def test_acl_and_topic_matching() -> None:
    assert topic_matches("a/+/c", "a/b/c") and topic_matches("a/#", "a/b/c") and not topic_matches("a/+", "a/b/c")
    publish, subscribe = acl_for("operator")
    assert publish == ["cortexloop/+/cmd/#"] and "cortexloop/+/session/#" in subscribe
    assert acl_for("viewer")[0] == []
    text = mosquitto_acl([BusUser("ctl", "x", "controller", rig="rig1")])
    assert "user ctl\ntopic write cortexloop/rig1/session/#" in text and "topic read cortexloop/rig1/cmd/#" in text
    with pytest.raises(ValueError):
        BusUser("a:b", "x", "viewer")
