#!/usr/bin/env python3
"""Real Python AMQP clients against `warren serve` (or any AMQP 0-9-1 broker).

Runs RabbitMQ's pika tutorials 1-6 (plus direct reply-to, confirms and
mandatory returns), a kombu producer / consumer, and oslo.messaging's rabbit
driver (RPC call / cast / fanout and a notification round trip).

    python3 tests/python/run_clients.py                 # builds and starts warren-wire's `serve` example
    python3 tests/python/run_clients.py --server-cmd "cargo run --release -- serve --listen {addr}"
    python3 tests/python/run_clients.py --url amqp://guest:guest@127.0.0.1:5673/%2F   # e.g. RabbitMQ

The clients live in a virtualenv under a build folder (default
`target/python-clients-venv`), created and filled with pip on first use.
Exits non-zero if any scenario fails.
"""

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PACKAGES = ["pika", "kombu", "oslo.messaging"]
TIMEOUT = 20.0


# --------------------------------------------------------------------------
# virtualenv bootstrap
# --------------------------------------------------------------------------

def ensure_venv(venv):
    """Re-executes this script inside `venv`, creating it if needed."""
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        print("creating virtualenv %s" % venv, flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    check = subprocess.run(
        [python, "-c", "import pika, kombu, oslo_messaging"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if check.returncode != 0:
        print("installing %s" % " ".join(PACKAGES), flush=True)
        subprocess.check_call([python, "-m", "pip", "install", "-q"] + PACKAGES)
    os.execv(python, [python] + sys.argv)


# --------------------------------------------------------------------------
# the server under test
# --------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for_port(host, port, proc, deadline):
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not listen on %s:%d" % (host, port))


def start_server(cmd_template):
    port = free_port()
    addr = "127.0.0.1:%d" % port
    env = dict(os.environ, WARREN_LISTEN=addr)
    cmd = cmd_template.format(addr=addr)
    print("starting: %s" % cmd, flush=True)
    proc = subprocess.Popen(cmd, shell=True, cwd=ROOT, env=env,
                            start_new_session=True)
    # building may take a while the first time
    wait_for_port("127.0.0.1", port, proc, time.time() + 900)
    return proc, "amqp://guest:guest@%s/%%2F" % addr


def stop_server(proc):
    if proc is None or proc.poll() is not None:
        return
    import signal
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------

SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def pika_conn(url):
    import pika
    params = pika.URLParameters(url)
    params.blocked_connection_timeout = TIMEOUT
    return pika.BlockingConnection(params)


def consume_n(ch, queue, n, auto_ack=True, on_message=None):
    """Consumes n messages from `queue` on a blocking channel."""
    got = []
    deadline = time.time() + TIMEOUT
    for method, props, body in ch.consume(queue, auto_ack=auto_ack,
                                          inactivity_timeout=1):
        if method is None:
            if time.time() > deadline:
                break
            continue
        if on_message:
            on_message(ch, method, props, body)
        got.append(body)
        if len(got) == n:
            break
    ch.cancel()
    return got


@scenario
def pika_1_hello_world(url):
    conn = pika_conn(url)
    ch = conn.channel()
    q = unique("hello")
    ch.queue_declare(queue=q)
    ch.basic_publish(exchange="", routing_key=q, body=b"Hello World!")
    assert consume_n(ch, q, 1) == [b"Hello World!"]
    conn.close()


@scenario
def pika_2_work_queues(url):
    import pika
    q = unique("task_queue")
    conn = pika_conn(url)
    ch = conn.channel()
    ch.queue_declare(queue=q, durable=True)
    tasks = [("task %d" % i).encode() for i in range(20)]
    for t in tasks:
        ch.basic_publish(exchange="", routing_key=q, body=t,
                         properties=pika.BasicProperties(
                             delivery_mode=pika.DeliveryMode.Persistent))
    done = []
    lock = threading.Lock()

    def worker():
        c = pika_conn(url)
        wch = c.channel()
        wch.basic_qos(prefetch_count=1)

        def on_message(chan, method, props, body):
            with lock:
                done.append(body)
            chan.basic_ack(delivery_tag=method.delivery_tag)

        deadline = time.time() + TIMEOUT
        for method, props, body in wch.consume(q, inactivity_timeout=0.5):
            if method is None:
                with lock:
                    if len(done) >= len(tasks) or time.time() > deadline:
                        break
                continue
            on_message(wch, method, props, body)
        wch.cancel()
        c.close()

    workers = [threading.Thread(target=worker) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIMEOUT * 2)
    assert sorted(done) == sorted(tasks), done
    ch.queue_delete(queue=q)
    conn.close()


@scenario
def pika_3_publish_subscribe(url):
    x = unique("logs")
    subs = []
    for _ in range(2):
        c = pika_conn(url)
        ch = c.channel()
        ch.exchange_declare(exchange=x, exchange_type="fanout")
        r = ch.queue_declare(queue="", exclusive=True)
        assert r.method.queue.startswith("amq.gen-"), r.method.queue
        ch.queue_bind(exchange=x, queue=r.method.queue)
        subs.append((c, ch, r.method.queue))
    pc = pika_conn(url)
    pc.channel().basic_publish(exchange=x, routing_key="", body=b"info: hi")
    for c, ch, q in subs:
        assert consume_n(ch, q, 1) == [b"info: hi"]
        c.close()
    pc.close()


@scenario
def pika_4_routing(url):
    x = unique("direct_logs")
    c = pika_conn(url)
    ch = c.channel()
    ch.exchange_declare(exchange=x, exchange_type="direct")
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    for severity in ("warning", "error"):
        ch.queue_bind(exchange=x, queue=q, routing_key=severity)
    for severity in ("info", "warning", "error"):
        ch.basic_publish(exchange=x, routing_key=severity,
                         body=severity.encode())
    assert consume_n(ch, q, 2) == [b"warning", b"error"]
    c.close()


@scenario
def pika_5_topics(url):
    x = unique("topic_logs")
    c = pika_conn(url)
    ch = c.channel()
    ch.exchange_declare(exchange=x, exchange_type="topic")
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    for key in ("*.orange.*", "*.*.rabbit", "lazy.#"):
        ch.queue_bind(exchange=x, queue=q, routing_key=key)
    sent = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox",
            "lazy.brown.fox", "lazy.pink.rabbit", "quick.brown.fox",
            "orange", "quick.orange.male.rabbit", "lazy.orange.male.rabbit"]
    for key in sent:
        ch.basic_publish(exchange=x, routing_key=key, body=key.encode())
    want = [b"quick.orange.rabbit", b"lazy.orange.elephant", b"quick.orange.fox",
            b"lazy.brown.fox", b"lazy.pink.rabbit", b"lazy.orange.male.rabbit"]
    assert consume_n(ch, q, len(want)) == want
    c.close()


def rpc_server(url, queue, ready, stop):
    import pika
    c = pika_conn(url)
    ch = c.channel()
    ch.queue_declare(queue=queue)
    ch.basic_qos(prefetch_count=1)

    def fib(n):
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a

    def on_request(chan, method, props, body):
        response = fib(int(body))
        chan.basic_publish(exchange="", routing_key=props.reply_to,
                           properties=pika.BasicProperties(
                               correlation_id=props.correlation_id),
                           body=str(response).encode())
        chan.basic_ack(delivery_tag=method.delivery_tag)

    ch.basic_consume(queue=queue, on_message_callback=on_request)
    ready.set()
    while not stop.is_set():
        c.process_data_events(time_limit=0.2)
    c.close()


@scenario
def pika_6_rpc(url):
    import pika
    q = unique("rpc_queue")
    ready, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=rpc_server, args=(url, q, ready, stop))
    t.start()
    try:
        assert ready.wait(TIMEOUT)
        c = pika_conn(url)
        ch = c.channel()
        callback = ch.queue_declare(queue="", exclusive=True).method.queue
        responses = {}

        def on_response(chan, method, props, body):
            responses[props.correlation_id] = body

        ch.basic_consume(queue=callback, on_message_callback=on_response,
                         auto_ack=True)
        for n, want in ((10, b"55"), (30, b"832040")):
            corr = str(uuid.uuid4())
            ch.basic_publish(exchange="", routing_key=q,
                             properties=pika.BasicProperties(
                                 reply_to=callback, correlation_id=corr),
                             body=str(n).encode())
            deadline = time.time() + TIMEOUT
            while corr not in responses and time.time() < deadline:
                c.process_data_events(time_limit=0.2)
            assert responses.get(corr) == want, responses
        c.close()
    finally:
        stop.set()
        t.join(TIMEOUT)


@scenario
def pika_6_rpc_direct_reply_to(url):
    import pika
    q = unique("rpc_drt")
    ready, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=rpc_server, args=(url, q, ready, stop))
    t.start()
    try:
        assert ready.wait(TIMEOUT)
        c = pika_conn(url)
        ch = c.channel()
        responses = {}

        def on_response(chan, method, props, body):
            responses[props.correlation_id] = body

        ch.basic_consume(queue="amq.rabbitmq.reply-to",
                         on_message_callback=on_response, auto_ack=True)
        corr = str(uuid.uuid4())
        ch.basic_publish(exchange="", routing_key=q,
                         properties=pika.BasicProperties(
                             reply_to="amq.rabbitmq.reply-to",
                             correlation_id=corr),
                         body=b"20")
        deadline = time.time() + TIMEOUT
        while corr not in responses and time.time() < deadline:
            c.process_data_events(time_limit=0.2)
        assert responses.get(corr) == b"6765", responses
        c.close()
    finally:
        stop.set()
        t.join(TIMEOUT)


@scenario
def pika_confirms_and_mandatory(url):
    import pika
    c = pika_conn(url)
    ch = c.channel()
    ch.confirm_delivery()
    q = unique("confirmed")
    ch.queue_declare(queue=q)
    ch.basic_publish(exchange="", routing_key=q, body=b"ok", mandatory=True)
    try:
        ch.basic_publish(exchange="", routing_key=unique("nowhere"),
                         body=b"lost", mandatory=True)
        raise AssertionError("expected UnroutableError")
    except pika.exceptions.UnroutableError as e:
        assert e.messages[0].method.reply_code == 312
    ch.queue_delete(queue=q)
    c.close()


@scenario
def pika_channel_error_codes(url):
    import pika
    c = pika_conn(url)
    ch = c.channel()
    try:
        ch.queue_declare(queue=unique("missing"), passive=True)
        raise AssertionError("expected a channel close")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        assert e.reply_text.startswith("NOT_FOUND - no queue"), e
    assert c.is_open
    ch = c.channel()
    q = unique("ineq")
    ch.queue_declare(queue=q)
    try:
        ch.queue_declare(queue=q, durable=True)
        raise AssertionError("expected a channel close")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 406, e
        assert "inequivalent arg 'durable'" in e.reply_text, e
    c.close()


@scenario
def pika_bad_login(url):
    import pika
    bad = url.replace("guest:guest@", "guest:wrong@")
    try:
        pika.BlockingConnection(pika.URLParameters(bad))
        raise AssertionError("expected a refused login")
    except pika.exceptions.ProbableAuthenticationError:
        pass


@scenario
def kombu_producer_consumer(url):
    from kombu import Connection, Consumer, Exchange, Producer, Queue
    x = Exchange(unique("kombu-x"), type="direct")
    q = Queue(unique("kombu-q"), exchange=x, routing_key="video")
    got = []
    with Connection(url) as conn:
        with conn.channel() as ch:
            producer = Producer(ch)
            producer.publish({"name": "/tmp/lolcat1.avi", "size": 1301013},
                             exchange=x, routing_key="video",
                             declare=[q], serializer="json")

        def on_message(body, message):
            got.append(body)
            message.ack()

        with Consumer(conn, queues=[q], callbacks=[on_message]):
            deadline = time.time() + TIMEOUT
            while not got and time.time() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except socket.timeout:
                    pass
    assert got == [{"name": "/tmp/lolcat1.avi", "size": 1301013}], got


@scenario
def kombu_simple_queue(url):
    from kombu import Connection
    name = unique("simple")
    with Connection(url) as conn:
        sq = conn.SimpleQueue(name)
        for i in range(5):
            sq.put({"n": i})
        got = [sq.get(block=True, timeout=TIMEOUT) for _ in range(5)]
        for m in got:
            m.ack()
        assert [m.payload["n"] for m in got] == list(range(5))
        sq.close()


class Endpoint(object):
    def __init__(self):
        self.casts = []
        self.lock = threading.Lock()

    def add(self, ctxt, a, b):
        return a + b

    def record(self, ctxt, value):
        with self.lock:
            self.casts.append(value)

    def boom(self, ctxt):
        raise ValueError("kaboom")


class NotifyEndpoint(object):
    def __init__(self):
        self.events = []

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.events.append((publisher_id, event_type, payload))


def oslo_url(url):
    """oslo.messaging's spelling: rabbit://user:pass@host:port/vhost."""
    rest = url.split("://", 1)[1]
    if rest.endswith("/%2F") or rest.endswith("/%2f"):
        rest = rest[:-4] + "/"
    return "rabbit://" + rest


_CONF = []


def oslo_config(url):
    # The global config: some oslo.messaging options (tracing) are registered
    # only there.
    from oslo_config import cfg
    if not _CONF:
        cfg.CONF([], project="warren-test")
        _CONF.append(cfg.CONF)
    return _CONF[0]


def wait_until(pred, what):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


@scenario
def oslo_messaging_rpc(url):
    import oslo_messaging
    conf = oslo_config(url)
    transport = oslo_messaging.get_rpc_transport(conf, url=oslo_url(url))
    topic = unique("topic")
    endpoints = [Endpoint(), Endpoint()]
    servers = []
    for i, ep in enumerate(endpoints):
        target = oslo_messaging.Target(topic=topic, server="server%d" % i)
        s = oslo_messaging.get_rpc_server(transport, target, [ep],
                                          executor="threading")
        s.start()
        servers.append(s)
    try:
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=topic), timeout=TIMEOUT)
        assert client.call({}, "add", a=2, b=3) == 5
        direct = client.prepare(server="server1")
        assert direct.call({}, "add", a=40, b=2) == 42
        try:
            client.call({}, "boom")
            raise AssertionError("expected a remote error")
        except ValueError as e:
            assert "kaboom" in str(e)
        client.cast({}, "record", value="cast")
        client.prepare(fanout=True).cast({}, "record", value="fanout")
        wait_until(lambda: sum(len(e.casts) for e in endpoints) == 3,
                   "cast and fanout")
        assert all("fanout" in e.casts for e in endpoints)
    finally:
        for s in servers:
            s.stop()
            s.wait()
        transport.cleanup()


@scenario
def oslo_messaging_notifications(url):
    import oslo_messaging
    conf = oslo_config(url)
    transport = oslo_messaging.get_notification_transport(conf, url=oslo_url(url))
    topic = unique("notifications")
    ep = NotifyEndpoint()
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=topic)], [ep],
        executor="threading")
    listener.start()
    try:
        notifier = oslo_messaging.Notifier(transport, publisher_id="compute.host1",
                                           driver="messagingv2", topics=[topic])
        notifier.info({}, "compute.instance.create.end", {"id": 7})
        wait_until(lambda: ep.events, "a notification")
        assert ep.events[0] == ("compute.host1", "compute.instance.create.end",
                                {"id": 7}), ep.events
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="use this running broker instead of starting one")
    ap.add_argument("--server-cmd",
                    default="cargo run -q -p warren-wire --example serve",
                    help="command starting the server; {addr} and $WARREN_LISTEN "
                         "give the address to listen on")
    ap.add_argument("--venv", default=os.path.join(ROOT, "target", "python-clients-venv"))
    ap.add_argument("-k", dest="only", help="run only scenarios whose name contains this")
    args = ap.parse_args()
    ensure_venv(args.venv)

    import logging
    logging.basicConfig(level=logging.CRITICAL)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.server_cmd)
    failed = []
    try:
        for fn in SCENARIOS:
            if args.only and args.only not in fn.__name__:
                continue
            start = time.time()
            try:
                fn(url)
                print("ok    %-32s %.2fs" % (fn.__name__, time.time() - start), flush=True)
            except Exception:
                failed.append(fn.__name__)
                print("FAIL  %s" % fn.__name__, flush=True)
                traceback.print_exc()
    finally:
        stop_server(proc)
    if failed:
        print("%d failed: %s" % (len(failed), ", ".join(failed)))
        sys.exit(1)
    print("all passed")


if __name__ == "__main__":
    main()
