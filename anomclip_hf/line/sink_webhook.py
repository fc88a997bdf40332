"""The webhook sink: each verdict POSTed as JSON (the schema's bytes), with

    Idempotency-Key: <input_id>                       the same for a re-sent verdict
    X-Anomclip-Signature: sha256=<hex HMAC-SHA256>     of the body, keyed by the secret in `secret_env` (if set)

Any 2xx answer confirms it. Each request has a timeout (a receiver that hangs costs `timeout` seconds, no more);
a failed request is retried `retries` times with back-off (0.2 s, 0.4 s, ...) before the sink waits and tries
again later, still in order.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import urllib.error
import urllib.request
from typing import Sequence

from .delivery import Sink, SinkError
from .journal import Delivery
from .schema import encode

SIGNATURE_HEADER = "X-Anomclip-Signature"


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink(Sink):
    def __init__(self, config):
        super().__init__(config)
        secret = os.environ.get(config.secret_env) if config.secret_env else None
        self.secret = secret.encode("utf-8") if secret else None

    def post(self, verdict: dict) -> None:
        body = encode(verdict)
        headers = {"Content-Type": "application/json", "Idempotency-Key": verdict["input_id"],
                   "User-Agent": "anomclip-watch"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.config.timeout) as answer:
            answer.read(65536)
            if not 200 <= answer.status < 300:
                raise SinkError(f"webhook {self.config.url} answered {answer.status}")

    def send(self, deliveries: Sequence[Delivery]) -> int:
        confirmed = 0
        for delivery in deliveries:
            for attempt in range(self.config.retries):
                try:
                    self.post(delivery.verdict)
                    break
                except (OSError, SinkError, urllib.error.HTTPError) as error:  # URLError, timeouts, 4xx/5xx
                    last = error
                    if attempt + 1 < self.config.retries:
                        time.sleep(0.2 * 2 ** attempt)
            else:
                failure = SinkError(f"webhook {self.config.url}: {last}")
                failure.confirmed = confirmed
                raise failure
            confirmed += 1
        return confirmed
