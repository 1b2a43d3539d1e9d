#!/usr/bin/env python3
"""An oslo.messaging service for warren-rpc's interop tests.

Runs RPC servers (one per name in --servers) on a topic, and/or a
notification listener, over oslo.messaging's rabbit driver, and reports on
stdout, one JSON object per line:

    {"event": "ready"}                                   once everything listens
    {"event": "cast", "server": ..., "method": ..., "args": ..., "ctx": ...}
    {"event": "notification", "priority": ..., "publisher_id": ...,
     "event_type": ..., "payload": ..., "ctx": ..., "metadata": ...}

It stops when its stdin closes (or on SIGTERM / SIGINT).

RPC endpoint (target version 2.3, no namespace):
    echo(**kwargs)     -> {"args": kwargs, "ctx": ctxt, "server": name}
    whoami()           -> the server's name
    add(a, b)          -> a + b
    fail(volume_id)    -> raises cinder.exception.VolumeNotFound(volume_id=...)
    record(**kwargs)   -> reports a "cast" event, returns None
    slow(seconds)      -> reports a "slow" event, sleeps that long, returns
                          "slept" (for call-monitor heartbeats)
A second endpoint in namespace "baremetal" (version 1.0) has whoami.

    python oslo_server.py --url rabbit://guest:guest@127.0.0.1:5673/ \
        --topic volume --servers host1,host2 [--notify-topic notes [--pool p]]
"""

import argparse
import json
import signal
import sys
import threading
import time

import oslo_messaging
from oslo_config import cfg

_print_lock = threading.Lock()


def emit(obj):
    with _print_lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


class VolumeNotFound(Exception):
    """What cinder raises; reported with cinder's module name."""

    def __init__(self, volume_id=None):
        self.kwargs = {"volume_id": volume_id}
        super().__init__("Volume %s could not be found." % volume_id)


VolumeNotFound.__module__ = "cinder.exception"


class Endpoint:
    target = oslo_messaging.Target(version="2.3")

    def __init__(self, name):
        self.name = name

    def echo(self, ctxt, **kwargs):
        return {"args": kwargs, "ctx": ctxt, "server": self.name}

    def whoami(self, ctxt):
        return self.name

    def add(self, ctxt, a, b):
        return a + b

    def fail(self, ctxt, volume_id):
        raise VolumeNotFound(volume_id=volume_id)

    def record(self, ctxt, **kwargs):
        emit({"event": "cast", "server": self.name, "method": "record",
              "args": kwargs, "ctx": ctxt})

    def slow(self, ctxt, seconds):
        emit({"event": "slow", "server": self.name, "seconds": seconds})
        time.sleep(seconds)
        return "slept"


class BaremetalEndpoint:
    target = oslo_messaging.Target(namespace="baremetal", version="1.0")

    def __init__(self, name):
        self.name = name

    def whoami(self, ctxt):
        return "baremetal:" + self.name


class NotificationEndpoint:
    def _report(self, priority, ctxt, publisher_id, event_type, payload,
                metadata):
        emit({"event": "notification", "priority": priority,
              "publisher_id": publisher_id, "event_type": event_type,
              "payload": payload, "ctx": ctxt, "metadata": metadata})
        return oslo_messaging.NotificationResult.HANDLED


for _p in ("audit", "debug", "info", "warn", "error", "critical", "sample"):
    def _method(self, ctxt, publisher_id, event_type, payload, metadata,
                _p=_p):
        return self._report(_p, ctxt, publisher_id, event_type, payload,
                            metadata)
    setattr(NotificationEndpoint, _p, _method)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--topic")
    ap.add_argument("--servers", default="",
                    help="comma-separated server names, one RPC server each")
    ap.add_argument("--exchange", default=None)
    ap.add_argument("--notify-topic", default=None)
    ap.add_argument("--pool", default=None)
    opts = ap.parse_args()

    cfg.CONF([], project="warren-interop")
    servers = []
    listeners = []
    rpc_transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=opts.url)
    for name in [s for s in opts.servers.split(",") if s]:
        target = oslo_messaging.Target(topic=opts.topic, server=name,
                                       exchange=opts.exchange)
        server = oslo_messaging.get_rpc_server(
            rpc_transport, target,
            [Endpoint(name), BaremetalEndpoint(name)],
            executor="threading")
        server.start()
        servers.append(server)
    if opts.notify_topic:
        n_transport = oslo_messaging.get_notification_transport(
            cfg.CONF, url=opts.url)
        listener = oslo_messaging.get_notification_listener(
            n_transport,
            [oslo_messaging.Target(topic=opts.notify_topic,
                                   exchange=opts.exchange)],
            [NotificationEndpoint()], executor="threading", pool=opts.pool)
        listener.start()
        listeners.append(listener)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def watch_stdin():
        try:
            while sys.stdin.read(1024):
                pass
        finally:
            done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    emit({"event": "ready"})
    done.wait()
    for s in servers + listeners:
        s.stop()
    for s in servers + listeners:
        s.wait()
    emit({"event": "stopped"})


if __name__ == "__main__":
    main()
