"""The MQTT bus: status and events out to dashboards/operators, pause/resume/abort/reward in.

- :class:`Bus`: the interface (async context manager; ``publish``; ``commands()``).
- :class:`MqttBus` / :class:`MqttOperator`: aiomqtt implementations (controller / operator side).
- :class:`FakeBroker` / :class:`FakeBus` / :class:`FakeOperator`: in-process, for unit tests.
- :func:`open_bus` / :class:`BusConfig`: the configured bus (embedded broker when no host is set).
- :class:`EmbeddedBroker`: amqtt in this process when no broker is configured;
  :class:`MosquittoBroker`: runs a real mosquitto with a generated config.

Topics and payloads: :mod:`wire.topics`; users and ACL: :mod:`controller.bus.access`.
"""

from controller.bus.access import BusUser, acl_for, mosquitto_acl, new_password
from controller.bus.base import Bus, Command, topic_matches
from controller.bus.broker import (
    EmbeddedBroker,
    MosquittoBroker,
    free_port,
    mosquitto_binary,
    write_amqtt_password_file,
    write_mosquitto_config,
)
from controller.bus.config import BusConfig, add_user, open_bus, read_users
from controller.bus.fake import FakeBroker, FakeBus, FakeOperator
from controller.bus.mqtt import MqttBus, MqttOperator

__all__ = [
    "Bus", "BusConfig", "BusUser", "Command", "EmbeddedBroker", "FakeBroker", "FakeBus", "FakeOperator", "MosquittoBroker",
    "MqttBus", "MqttOperator", "acl_for", "add_user", "free_port", "mosquitto_acl", "mosquitto_binary", "new_password",
    "open_bus", "read_users", "topic_matches", "write_amqtt_password_file", "write_mosquitto_config",
]
