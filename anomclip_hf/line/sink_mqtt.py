"""The MQTT sink (paho-mqtt): each verdict published with QoS 1 (or 2) to a topic from a template; it counts as
delivered once the broker acknowledged it (PUBACK / PUBCOMP). TLS with mqtts:// (ca_file, or the system's
CAs); user name and password from the environment variables the config names."""

from __future__ import annotations

import os
import threading
import time
from typing import Sequence
from urllib.parse import urlparse

from .delivery import Sink, SinkError
from .journal import Delivery
from .schema import encode

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class MqttSink(Sink):
    def __init__(self, config):
        super().__init__(config)
        url = urlparse(config.url)
        self.host, self.port = url.hostname, url.port or DEFAULT_PORTS[url.scheme]
        self.tls = url.scheme == "mqtts"
        self._client = None
        self._connected = threading.Event()
        self._refused = None

    def topic(self, verdict: dict) -> str:
        fields = {key: verdict[key] for key in ("source", "category", "input_id")}
        return self.config.topic.format(decision=verdict["decision"] or ("error" if verdict["error"] else "none"),
                                        **fields)

    def _connect(self):
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"anomclip-{self.name}-{os.getpid()}",
                             protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(max(20, self.config.batch))
        client.max_queued_messages_set(0)
        user = os.environ.get(self.config.username_env)
        if user:
            client.username_pw_set(user, os.environ.get(self.config.password_env))
        if self.tls:
            client.tls_set(ca_certs=self.config.ca_file)
        self._connected.clear()
        self._refused = None

        def on_connect(client, userdata, flags, reason, properties):
            if reason.is_failure:
                self._refused = str(reason)
            self._connected.set()

        def on_disconnect(client, userdata, flags, reason, properties):
            self._connected.clear()

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.connect_timeout = self.config.timeout
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as error:
            raise SinkError(f"cannot reach the MQTT broker {self.host}:{self.port}: {error}") from None
        client.loop_start()
        if not self._connected.wait(self.config.timeout) or self._refused:
            client.loop_stop()
            client.disconnect()
            raise SinkError(f"MQTT broker {self.host}:{self.port} refused the connection: "
                            f"{self._refused or 'no CONNACK in time'}")
        self._client = client

    def send(self, deliveries: Sequence[Delivery]) -> int:
        if self._client is None or not self._connected.is_set():
            self.reset()
            self._connect()
        infos = [self._client.publish(self.topic(item.verdict), encode(item.verdict), qos=self.config.qos)
                 for item in deliveries]
        deadline, confirmed = time.monotonic() + self.config.timeout, 0
        for info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                break
            if not info.is_published():
                break
            confirmed += 1
        if confirmed < len(infos):
            error = SinkError(f"MQTT broker {self.host}:{self.port} acknowledged {confirmed} of {len(infos)} "
                              f"verdicts within {self.config.timeout:g} s")
            error.confirmed = confirmed
            raise error
        return confirmed

    def reset(self) -> None:
        # A fresh client after a failure: paho would otherwise re-send its own in-flight copies on reconnect,
        # next to the journal's.
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
