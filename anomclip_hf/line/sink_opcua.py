"""The OPC UA sink (asyncua's client): each verdict written to the PLC's nodes the config names -- score
(a number), decision (text: anomalous / normal / error) and count (the verdict's place in this sink's stream:
1, 2, 3 ...), in one Write request, count last so a PLC that watches the count reads a complete verdict.

The count comes from the journal, so a verdict written again after a crash writes the same three values:
the PLC sees a repeated write, never a skipped or doubled count.
"""

from __future__ import annotations

from typing import Sequence

from .delivery import Sink, SinkError
from .journal import Delivery

ROLE_ORDER = ("score", "decision", "count")


class OpcUaSink(Sink):
    def __init__(self, config):
        super().__init__(config)
        self._client = None
        self._nodes: list = []  # (role, node, variant type)

    def _connect(self):
        from asyncua.sync import Client

        client = Client(self.config.url, timeout=self.config.timeout)
        try:
            client.connect()
        except Exception as error:
            _quietly(client.disconnect)
            raise SinkError(f"cannot connect to OPC UA server {self.config.url}: {error or type(error).__name__}") \
                from None
        try:
            nodes = []
            for role in ROLE_ORDER:
                if role in self.config.nodes:
                    node = client.get_node(self.config.nodes[role])
                    nodes.append((role, node, node.read_data_type_as_variant_type()))
        except Exception as error:
            _quietly(client.disconnect)
            raise SinkError(f"OPC UA server {self.config.url}: node {self.config.nodes.get(role)!r} ({role}) cannot "
                            f"be used: {error}") from None
        self._client, self._nodes = client, nodes

    def values(self, delivery: Delivery) -> dict:
        verdict = delivery.verdict
        return {"score": float("nan") if verdict["score"] is None else verdict["score"],
                "decision": verdict["decision"] or ("error" if verdict["error"] else ""),
                "count": delivery.ordinal}

    def send(self, deliveries: Sequence[Delivery]) -> int:
        from asyncua import ua

        if self._client is None:
            self._connect()
        confirmed = 0
        for delivery in deliveries:
            values = self.values(delivery)
            try:
                self._client.write_values([node for _, node, _ in self._nodes],
                                          [ua.DataValue(ua.Variant(_typed(values[role], kind), kind))
                                           for role, _, kind in self._nodes])
            except Exception as error:
                failure = SinkError(f"OPC UA write to {self.config.url} failed: {error or type(error).__name__}")
                failure.confirmed = confirmed
                raise failure from None
            confirmed += 1
        return confirmed

    def reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _quietly(client.disconnect)


def _typed(value, kind):
    from asyncua import ua

    if kind in (ua.VariantType.Double, ua.VariantType.Float):
        return float(value)
    if kind == ua.VariantType.String:
        return str(value)
    if kind == ua.VariantType.Boolean:  # a decision node as a flag: True = anomalous
        return value == "anomalous"
    return int(value) if isinstance(value, (int, float)) and value == value else 0


def _quietly(action):
    try:
        action()
    except Exception:  # closing a connection that already broke
        pass
