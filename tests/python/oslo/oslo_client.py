#!/usr/bin/env python3
"""An oslo.messaging client for warren-rpc's interop tests.

Runs the steps given as a JSON list (--steps, or stdin with --steps -) over
oslo.messaging's rabbit driver and prints one JSON list of results on
stdout, in the same order.

Steps:
    {"op": "call" | "cast", "topic": ..., "method": ..., "args": {...},
     "server": ..., "fanout": false, "version": "2.0", "namespace": ...,
     "timeout": 10, "call_monitor_timeout": 2, "ctx": {...}, "exchange": ...}
    {"op": "notify", "topic": ..., "priority": "info", "publisher_id": ...,
     "event_type": ..., "payload": ..., "ctx": {...}}
    {"op": "bench", "topic": ..., "server": ..., "method": ..., "args": {...},
     "count": 1000, "warmup": 100}     # sequential calls, latencies in us

Results:
    {"ok": true, "result": ...}
    {"ok": false, "error": {"class": ..., "module": ..., "exc_type": ...,
     "value": ..., "kwargs": ..., "str": ...}}
    {"ok": true, "latencies_us": [...sorted...]}            # bench

Remote exceptions from oslo_messaging.rpc.dispatcher (NoSuchMethod,
UnsupportedVersion) are rebuilt as their classes (allowed_remote_exmods);
any other module's come back as oslo_messaging.RemoteError.

    python oslo_client.py --url rabbit://guest:guest@127.0.0.1:5673/ \
        --steps '[{"op": "call", "topic": "volume", "method": "echo", "args": {"x": 1}}]'
"""

import argparse
import json
import sys
import time

import oslo_messaging
from oslo_config import cfg
from oslo_context import context

ALLOWED = ["oslo_messaging.rpc.dispatcher"]


def describe(e):
    # Rebuilt remote exceptions are subclasses named "<class>_Remote" in
    # "<module>_Remote": report the class and module they stand for.
    cls, mod = type(e).__name__, type(e).__module__
    remote = cls.endswith("_Remote")
    return {
        "class": cls[:-len("_Remote")] if remote else cls,
        "module": mod[:-len("_Remote")] if remote else mod,
        "rebuilt": remote,
        "exc_type": getattr(e, "exc_type", None),
        "value": getattr(e, "value", None),
        "kwargs": {k: v for k, v in getattr(e, "kwargs", {}).items()
                   if isinstance(v, (str, int, float, bool, type(None)))},
        "str": str(e),
    }


def rpc_client(transport, step):
    target = oslo_messaging.Target(topic=step["topic"],
                                   exchange=step.get("exchange"))
    client = oslo_messaging.get_rpc_client(transport, target)
    prepare = {}
    for key in ("server", "fanout", "version", "namespace", "timeout",
                "call_monitor_timeout"):
        if step.get(key) is not None:
            prepare[key] = step[key]
    if "timeout" not in prepare:
        prepare["timeout"] = 20
    return client.prepare(**prepare)


def run(step, rpc_transport, notifiers):
    op = step["op"]
    ctx = step.get("ctx", {})
    if op == "call":
        client = rpc_client(rpc_transport, step)
        return {"ok": True,
                "result": client.call(ctx, step["method"],
                                      **step.get("args", {}))}
    if op == "cast":
        client = rpc_client(rpc_transport, step)
        client.cast(ctx, step["method"], **step.get("args", {}))
        return {"ok": True, "result": None}
    if op == "notify":
        key = (step["topic"], step.get("publisher_id", "python.interop"))
        if key not in notifiers:
            transport = oslo_messaging.get_notification_transport(
                cfg.CONF, url=URL)
            notifiers[key] = oslo_messaging.Notifier(
                transport, publisher_id=key[1], driver="messagingv2",
                topics=[step["topic"]])
        notifier = notifiers[key]
        # oslo's notifier drops a plain dict context (it sends only what a
        # RequestContext's redacted_copy() gives): send a RequestContext.
        rctx = context.RequestContext.from_dict(ctx)
        getattr(notifier, step.get("priority", "info"))(
            rctx, step["event_type"], step.get("payload"))
        return {"ok": True, "result": None}
    if op == "bench":
        client = rpc_client(rpc_transport, step)
        args = step.get("args", {})
        for _ in range(step.get("warmup", 100)):
            client.call(ctx, step["method"], **args)
        lat = []
        for _ in range(step.get("count", 1000)):
            t = time.perf_counter()
            client.call(ctx, step["method"], **args)
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        return {"ok": True, "latencies_us": lat}
    raise ValueError("unknown op %r" % op)


URL = None


def main():
    global URL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--steps", required=True,
                    help="a JSON list of steps, or - to read it from stdin")
    opts = ap.parse_args()
    URL = opts.url
    steps = json.loads(sys.stdin.read() if opts.steps == "-" else opts.steps)

    cfg.CONF([], project="warren-interop")
    rpc_transport = oslo_messaging.get_rpc_transport(
        cfg.CONF, url=URL, allowed_remote_exmods=ALLOWED)
    notifiers = {}
    results = []
    for step in steps:
        try:
            results.append(run(step, rpc_transport, notifiers))
        except Exception as e:  # noqa: BLE001 - reported to the test
            results.append({"ok": False, "error": describe(e)})
    sys.stdout.write(json.dumps(results) + "\n")
    sys.stdout.flush()
    rpc_transport.cleanup()
    for n in notifiers.values():
        n.transport.cleanup()


if __name__ == "__main__":
    main()
