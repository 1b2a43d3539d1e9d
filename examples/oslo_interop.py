#!/usr/bin/env python3
"""The Python side of examples/oslo_interop.rs: an oslo.messaging client
calling the Rust volume service, and listening to its notifications.

    cargo run --example oslo_interop --features rpc-amqp -- amqp://guest:guest@127.0.0.1:5672/%2F
    python3 examples/oslo_interop.py rabbit://guest:guest@127.0.0.1:5672/

Needs oslo.messaging (pip install oslo.messaging). This is ordinary
oslo.messaging code: nothing in it knows the service is written in Rust.
"""

import sys
import threading

import oslo_messaging
from oslo_config import cfg
from oslo_context import context


class Notifications:
    """Collects the service's notifications."""

    def __init__(self):
        self.seen = threading.Event()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        print("notification %s from %s: %s" % (event_type, publisher_id,
                                                payload))
        self.seen.set()


def main():
    url = sys.argv[1] if len(sys.argv) > 1 else \
        "rabbit://guest:guest@127.0.0.1:5672/"
    cfg.CONF([], project="oslo-interop-example")

    notifications = Notifications()
    listener = oslo_messaging.get_notification_listener(
        oslo_messaging.get_notification_transport(cfg.CONF, url=url),
        [oslo_messaging.Target(topic="notifications")],
        [notifications], executor="threading", pool="oslo-interop-example")
    listener.start()

    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="volume", version="3.0"))
    ctxt = context.RequestContext(user_id="alice", project_id="demo").to_dict()
    ctxt["user"] = "alice"

    volume = client.prepare(timeout=10).call(
        ctxt, "create_volume", name="data", size_gb=10)
    print("created:", volume)

    on_host = client.prepare(server=volume["host"], timeout=10)
    print("get:", on_host.call(ctxt, "get_volume", volume_id=volume["id"]))

    try:
        on_host.call(ctxt, "get_volume", volume_id="vol-missing")
    except oslo_messaging.RemoteError as e:
        # The Rust handler's error type and message, as for a Python one.
        print("get missing: %s: %s" % (e.exc_type, e.value))

    on_host.cast(ctxt, "delete_volume", volume_id=volume["id"])
    print("delete cast sent")

    if not notifications.seen.wait(10):
        print("no notification seen")
    listener.stop()
    listener.wait()
    transport.cleanup()


if __name__ == "__main__":
    main()
