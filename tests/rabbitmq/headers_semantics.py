#!/usr/bin/env python3
"""Headers-exchange semantics, observed on a real RabbitMQ.

This script is the reference that `crates/warren-core/src/headers.rs` is
checked against: each case binds a queue to a fresh headers exchange with a
typed argument table, publishes one message with typed headers, and records
whether the message was routed (or, for bind cases, what error the bind got).
Every case carries the outcome warren implements (`expect`); the script prints
a table and exits non-zero when RabbitMQ disagrees.

How to run (RabbitMQ listening on 127.0.0.1:5672, guest/guest):

    apt-get install -y rabbitmq-server && rabbitmq-server -detached
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pika
    /tmp/venv/bin/python tests/rabbitmq/headers_semantics.py [--markdown]
    rabbitmqctl stop

Last run: RabbitMQ 3.10.8 (Erlang/OTP 25), pika 1.4.4: all cases agree.

pika's own encoder has no float kind and picks `I`/`l` for ints by size, so
values are wrapped in `T(tag, value)` and encoded here byte-exact by AMQP
0-9-1 field tag, with RabbitMQ's dialect (`s` = signed 16-bit int, `l` / `L` =
signed 64-bit int, `x` = byte array). Plain `str` stays pika's `S`, and plain
dicts / lists become `F` / `A` in insertion order.
"""

import struct
import sys

import pika
import pika.data
import pika.exceptions

HOST = "127.0.0.1"


class T:
    """A field value with an explicit AMQP type tag."""

    def __init__(self, tag, value=None):
        self.tag = tag
        self.value = value

    def __repr__(self):
        if self.tag == "V":
            return "V"
        if self.tag == "D":
            return "D%r" % (self.value,)
        return "%s:%r" % (self.tag, self.value)


_FIXED = {
    "b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
    "l": ">q", "L": ">q", "T": ">Q", "f": ">f", "d": ">d",
}
_orig_encode_value = pika.data.encode_value


def _encode_value(pieces, value):
    if not isinstance(value, T):
        return _orig_encode_value(pieces, value)
    tag = value.tag
    if tag in _FIXED:
        piece = tag.encode() + struct.pack(_FIXED[tag], value.value)
    elif tag == "t":
        piece = b"t" + struct.pack(">B", 1 if value.value else 0)
    elif tag == "D":
        scale, unscaled = value.value
        piece = b"D" + struct.pack(">BI", scale, unscaled)
    elif tag in ("S", "x"):
        raw = value.value.encode() if isinstance(value.value, str) else value.value
        piece = tag.encode() + struct.pack(">I", len(raw)) + raw
    elif tag == "V":
        piece = b"V"
    else:
        raise ValueError("unknown tag %r" % tag)
    pieces.append(piece)
    return len(piece)


# encode_table and the list branch look encode_value up as a module global.
pika.data.encode_value = _encode_value

NO_HEADERS = object()  # publish with no headers property at all


def I(v):  # noqa: E743 - AMQP's tag name
    return T("I", v)


V = T("V")

# (name, binding arguments, message headers, expected: True routed / False not)
ROUTE_CASES = [
    # x-match modes and the empty pattern
    ("no x-match, no args, no headers -> all matches everything", {}, NO_HEADERS, True),
    ("all, no args, no headers", {"x-match": "all"}, NO_HEADERS, True),
    ("all, no args, empty headers", {"x-match": "all"}, {}, True),
    ("any, no args, no headers", {"x-match": "any"}, NO_HEADERS, False),
    ("any, no args, some headers", {"x-match": "any"}, {"a": I(1)}, False),
    ("no x-match = all: a=1 vs a=1", {"a": I(1)}, {"a": I(1)}, True),
    ("no x-match = all: a=1,b=2 vs a=1", {"a": I(1), "b": I(2)}, {"a": I(1)}, False),
    ("all a=1 vs a=2", {"x-match": "all", "a": I(1)}, {"a": I(2)}, False),
    ("all a=1 vs no headers", {"x-match": "all", "a": I(1)}, NO_HEADERS, False),
    ("all a=1 vs a=1 plus extra c", {"x-match": "all", "a": I(1)}, {"a": I(1), "c": "z"}, True),
    ("all a=1,b=2 vs both", {"x-match": "all", "a": I(1), "b": I(2)}, {"b": I(2), "a": I(1)}, True),
    ("all b=1,a=1 (unsorted binding) vs a=1,b=1", {"x-match": "all", "b": I(1), "a": I(1)},
     {"a": I(1), "b": I(1)}, True),
    ("any a=1,b=2 vs a=1 only", {"x-match": "any", "a": I(1), "b": I(2)}, {"a": I(1)}, True),
    ("any a=1,b=2 vs a=9,b=2", {"x-match": "any", "a": I(1), "b": I(2)}, {"a": I(9), "b": I(2)}, True),
    ("any a=1,b=2 vs c=1", {"x-match": "any", "a": I(1), "b": I(2)}, {"c": I(1)}, False),
    ("any a=1 vs no headers", {"x-match": "any", "a": I(1)}, NO_HEADERS, False),
    # x- arguments
    ("all ignores x-foo: x-foo=bar vs no headers", {"x-match": "all", "x-foo": "bar"}, NO_HEADERS, True),
    ("all ignores x-foo: x-foo=bar,a=1 vs a=1", {"x-match": "all", "x-foo": "bar", "a": I(1)},
     {"a": I(1)}, True),
    ("any ignores x-foo: x-foo=bar vs x-foo=bar", {"x-match": "any", "x-foo": "bar"},
     {"x-foo": "bar"}, False),
    ("all-with-x x-foo=bar vs x-foo=bar", {"x-match": "all-with-x", "x-foo": "bar"},
     {"x-foo": "bar"}, True),
    ("all-with-x x-foo=bar vs x-foo=baz", {"x-match": "all-with-x", "x-foo": "bar"},
     {"x-foo": "baz"}, False),
    ("all-with-x x-foo=bar vs no headers", {"x-match": "all-with-x", "x-foo": "bar"}, NO_HEADERS, False),
    ("any-with-x x-foo=bar,a=1 vs x-foo=bar", {"x-match": "any-with-x", "x-foo": "bar", "a": I(1)},
     {"x-foo": "bar"}, True),
    ("any-with-x x-foo=bar vs a=1", {"x-match": "any-with-x", "x-foo": "bar"}, {"a": I(1)}, False),
    ("all-with-x: x-match not counted (no headers)", {"x-match": "all-with-x"}, NO_HEADERS, True),
    ("all-with-x: x-match not counted, a=1 vs a=1", {"x-match": "all-with-x", "a": I(1)},
     {"a": I(1)}, True),
    ("any-with-x: x-match not counted (header x-match=any-with-x)", {"x-match": "any-with-x"},
     {"x-match": "any-with-x"}, False),
    # void
    ("void binding: a=V vs a='anything'", {"a": V}, {"a": "anything"}, True),
    ("void binding: a=V vs a=V", {"a": V}, {"a": V}, True),
    ("void binding: a=V vs a=I 0", {"a": V}, {"a": I(0)}, True),
    ("void binding: a=V vs b=1", {"a": V}, {"b": I(1)}, False),
    ("void binding: a=V vs no headers", {"a": V}, NO_HEADERS, False),
    ("any void: a=V,b=1 vs a=T 5", {"x-match": "any", "a": V, "b": I(1)}, {"a": T("T", 5)}, True),
    ("void header: a=I 1 vs a=V", {"a": I(1)}, {"a": V}, False),
    ("void header: a='' vs a=V", {"a": ""}, {"a": V}, False),
    # numbers across kinds
    ("I 1 vs l 1", {"a": I(1)}, {"a": T("l", 1)}, True),
    ("I 1 vs L 1", {"a": I(1)}, {"a": T("L", 1)}, True),
    ("I 1 vs b 1", {"a": I(1)}, {"a": T("b", 1)}, True),
    ("I 1 vs B 1", {"a": I(1)}, {"a": T("B", 1)}, True),
    ("I 1 vs s 1", {"a": I(1)}, {"a": T("s", 1)}, True),
    ("I 1 vs u 1", {"a": I(1)}, {"a": T("u", 1)}, True),
    ("I 1 vs i 1", {"a": I(1)}, {"a": T("i", 1)}, True),
    ("I 1 vs d 1.0", {"a": I(1)}, {"a": T("d", 1.0)}, True),
    ("I 1 vs f 1.0", {"a": I(1)}, {"a": T("f", 1.0)}, True),
    ("I 1 vs T 1", {"a": I(1)}, {"a": T("T", 1)}, True),
    ("d 1.0 vs T 1", {"a": T("d", 1.0)}, {"a": T("T", 1)}, True),
    ("T 1 vs l 1", {"a": T("T", 1)}, {"a": T("l", 1)}, True),
    ("b -1 vs l -1", {"a": T("b", -1)}, {"a": T("l", -1)}, True),
    ("B 255 vs b -1", {"a": T("B", 255)}, {"a": T("b", -1)}, False),
    ("I 1 vs d 1.5", {"a": I(1)}, {"a": T("d", 1.5)}, False),
    ("d 0.0 vs d -0.0", {"a": T("d", 0.0)}, {"a": T("d", -0.0)}, True),
    ("I 0 vs d -0.0", {"a": I(0)}, {"a": T("d", -0.0)}, True),
    ("l 2^53+1 vs d 2^53", {"a": T("l", 2**53 + 1)}, {"a": T("d", float(2**53))}, False),
    ("l 2^53 vs d 2^53", {"a": T("l", 2**53)}, {"a": T("d", float(2**53))}, True),
    ("T 2^64-1 vs l -1", {"a": T("T", 2**64 - 1)}, {"a": T("l", -1)}, False),
    ("T 2^64-1 vs T 2^64-1", {"a": T("T", 2**64 - 1)}, {"a": T("T", 2**64 - 1)}, True),
    ("T 2^64-1 vs d 2^64", {"a": T("T", 2**64 - 1)}, {"a": T("d", float(2**64))}, False),
    ("f 0.1 vs d 0.1", {"a": T("f", 0.1)}, {"a": T("d", 0.1)}, False),
    ("f 0.1 vs f 0.1", {"a": T("f", 0.1)}, {"a": T("f", 0.1)}, True),
    ("d 0.1 vs d 0.1", {"a": T("d", 0.1)}, {"a": T("d", 0.1)}, True),
    ("f 0.5 vs d 0.5", {"a": T("f", 0.5)}, {"a": T("d", 0.5)}, True),
    ("f 0.1 vs d (double)(float)0.1", {"a": T("f", 0.1)},
     {"a": T("d", struct.unpack(">f", struct.pack(">f", 0.1))[0])}, True),
    # non-numbers
    ("t true vs I 1", {"a": T("t", True)}, {"a": I(1)}, False),
    ("t false vs I 0", {"a": T("t", False)}, {"a": I(0)}, False),
    ("t true vs t true", {"a": T("t", True)}, {"a": T("t", True)}, True),
    ("t true vs t false", {"a": T("t", True)}, {"a": T("t", False)}, False),
    ("D(0,1) vs I 1", {"a": T("D", (0, 1))}, {"a": I(1)}, False),
    ("D(1,10) vs d 1.0", {"a": T("D", (1, 10))}, {"a": T("d", 1.0)}, False),
    ("D(1,10) vs D(0,1)", {"a": T("D", (1, 10))}, {"a": T("D", (0, 1))}, False),
    ("D(1,10) vs D(1,10)", {"a": T("D", (1, 10))}, {"a": T("D", (1, 10))}, True),
    ("S '1' vs I 1", {"a": "1"}, {"a": I(1)}, False),
    ("S 'a' vs x 'a'", {"a": "a"}, {"a": T("x", b"a")}, True),
    ("x 'a' vs S 'a'", {"a": T("x", b"a")}, {"a": "a"}, True),
    ("x 'a' vs x 'a'", {"a": T("x", b"a")}, {"a": T("x", b"a")}, True),
    ("S 'a' vs S 'A'", {"a": "a"}, {"a": "A"}, False),
    ("S '' vs S ''", {"a": ""}, {"a": ""}, True),
    # arrays: kinds and order matter
    ("A[I 1,S a] vs A[I 1,S a]", {"a": [I(1), "a"]}, {"a": [I(1), "a"]}, True),
    ("A[I 1,S a] vs A[l 1,S a]", {"a": [I(1), "a"]}, {"a": [T("l", 1), "a"]}, False),
    ("A[I 1,S a] vs A[d 1.0,S a]", {"a": [I(1), "a"]}, {"a": [T("d", 1.0), "a"]}, False),
    ("A[I 1,S a] vs A[I 1,x a]", {"a": [I(1), "a"]}, {"a": [I(1), T("x", b"a")]}, False),
    ("A[I 1,S a] vs A[S a,I 1]", {"a": [I(1), "a"]}, {"a": ["a", I(1)]}, False),
    ("A[I 1,S a] vs A[I 1]", {"a": [I(1), "a"]}, {"a": [I(1)]}, False),
    ("A[V] vs A[V]", {"a": [V]}, {"a": [V]}, True),
    ("A[V] vs A[I 1] (void is no wildcard inside)", {"a": [V]}, {"a": [I(1)]}, False),
    ("A[d 0.0] vs A[d -0.0]", {"a": [T("d", 0.0)]}, {"a": [T("d", -0.0)]}, True),
    ("A[A[I 1]] vs A[A[I 1]]", {"a": [[I(1)]]}, {"a": [[I(1)]]}, True),
    ("A[] vs A[]", {"a": []}, {"a": []}, True),
    ("I 1 vs A[I 1]", {"a": I(1)}, {"a": [I(1)]}, False),
    # nested tables: kinds and order matter
    ("F{a:1,b:2} vs F{a:1,b:2}", {"t": {"a": I(1), "b": I(2)}}, {"t": {"a": I(1), "b": I(2)}}, True),
    ("F{a:1,b:2} vs F{b:2,a:1}", {"t": {"a": I(1), "b": I(2)}}, {"t": {"b": I(2), "a": I(1)}}, False),
    ("F{a:I 1} vs F{a:l 1}", {"t": {"a": I(1)}}, {"t": {"a": T("l", 1)}}, False),
    ("F{a:V} vs F{a:I 1} (void is no wildcard inside)", {"t": {"a": V}}, {"t": {"a": I(1)}}, False),
    ("F{a:I 1} vs F{a:I 1,b:I 2}", {"t": {"a": I(1)}}, {"t": {"a": I(1), "b": I(2)}}, False),
    ("F{} vs F{}", {"t": {}}, {"t": {}}, True),
    # top level, Erlang sees an empty array and an empty table as the same []
    ("A[] vs F{}", {"a": []}, {"a": {}}, True),
    ("F{} vs A[]", {"a": {}}, {"a": []}, True),
    ("A[] vs S ''", {"a": []}, {"a": ""}, False),
]

# (name, binding arguments, expected error text or None for "bind accepted")
BIND_CASES = [
    ("x-match all", {"x-match": "all"}, None),
    ("x-match any-with-x", {"x-match": "any-with-x"}, None),
    ("x-match 'foo'", {"x-match": "foo"},
     "PRECONDITION_FAILED - Invalid x-match field value <<\"foo\">>; "
     "expected all, any, all-with-x, or any-with-x"),
    ("x-match 'ALL'", {"x-match": "ALL"},
     "PRECONDITION_FAILED - Invalid x-match field value <<\"ALL\">>; "
     "expected all, any, all-with-x, or any-with-x"),
    ("x-match ''", {"x-match": ""},
     "PRECONDITION_FAILED - Invalid x-match field value <<>>; "
     "expected all, any, all-with-x, or any-with-x"),
    ("x-match I 1", {"x-match": I(1)},
     "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr"),
    ("x-match l 1", {"x-match": T("l", 1)},
     "PRECONDITION_FAILED - Invalid x-match field type long (value 1); expected longstr"),
    ("x-match x 'all'", {"x-match": T("x", b"all")},
     "PRECONDITION_FAILED - Invalid x-match field type binary (value <<\"all\">>); expected longstr"),
    ("x-match t true", {"x-match": T("t", True)},
     "PRECONDITION_FAILED - Invalid x-match field type bool (value true); expected longstr"),
    ("x-match V", {"x-match": V},
     "PRECONDITION_FAILED - Invalid x-match field type void (value undefined); expected longstr"),
    ("x-match d 1.5", {"x-match": T("d", 1.5)},
     "PRECONDITION_FAILED - Invalid x-match field type double (value 1.5); expected longstr"),
    ("x-match D(2,150)", {"x-match": T("D", (2, 150))},
     "PRECONDITION_FAILED - Invalid x-match field type decimal (value {2,150}); expected longstr"),
    ("x-match A[S all]", {"x-match": ["all"]},
     "PRECONDITION_FAILED - Invalid x-match field type array (value [{longstr,<<\"all\">>}]); "
     "expected longstr"),
    ("x-match F{k:I 1}", {"x-match": {"k": I(1)}},
     "PRECONDITION_FAILED - Invalid x-match field type table (value [{<<\"k\">>,signedint,1}]); "
     "expected longstr"),
]


def fmt(table):
    if table is NO_HEADERS:
        return "(none)"
    return "{" + ", ".join("%s: %r" % kv for kv in table.items()) + "}"


class Broker:
    def __init__(self):
        self.conn = pika.BlockingConnection(pika.ConnectionParameters(host=HOST))
        self.ch = None
        self.reopen()

    def reopen(self):
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def fresh(self, n):
        ex, q = "warren.hx.%d" % n, "warren.hq.%d" % n
        self.ch.exchange_delete(ex)
        self.ch.queue_delete(q)
        self.ch.exchange_declare(ex, exchange_type="headers")
        self.ch.queue_declare(q)
        return ex, q

    def cleanup(self, ex, q):
        self.ch.queue_delete(q)
        self.ch.exchange_delete(ex)


def run():
    broker = Broker()
    rows, bad = [], 0
    for n, (name, args, headers, expect) in enumerate(ROUTE_CASES):
        ex, q = broker.fresh(n)
        try:
            broker.ch.queue_bind(q, ex, routing_key="", arguments=args)
            props = pika.BasicProperties(headers=None if headers is NO_HEADERS else headers)
            broker.ch.basic_publish(ex, "", b"m", properties=props)
            # Count instead of basic_get: pika cannot decode some of the headers
            # it is asked to send (a timestamp past time_t, for one).
            got = broker.ch.queue_declare(q, passive=True).method.message_count == 1
        except pika.exceptions.AMQPChannelError as e:
            got = "error: %s" % (e,)
            broker.reopen()
        broker.cleanup(ex, q)
        ok = got == expect
        bad += not ok
        rows.append(("route", name, fmt(args), fmt(headers), expect, got, ok))
    for n, (name, args, expect) in enumerate(BIND_CASES, start=1000):
        ex, q = broker.fresh(n)
        try:
            broker.ch.queue_bind(q, ex, routing_key="", arguments=args)
            got = None
        except pika.exceptions.ChannelClosedByBroker as e:
            got = e.reply_text if e.reply_code == 406 else "%d %s" % (e.reply_code, e.reply_text)
            broker.reopen()
        broker.cleanup(ex, q)
        ok = got == expect
        bad += not ok
        rows.append(("bind", name, fmt(args), "", expect or "accepted", got or "accepted", ok))
    broker.conn.close()
    return rows, bad


def main():
    rows, bad = run()
    if "--markdown" in sys.argv:
        print("| kind | case | binding | headers | warren | RabbitMQ | same |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(str(c).replace("|", "\\|") for c in r[:6])
                  + " | " + ("yes" if r[6] else "**NO**") + " |")
    else:
        for kind, name, args, headers, expect, got, ok in rows:
            print("%-4s %-5s %-60s expect=%s got=%s" % ("ok" if ok else "DIFF", kind, name, expect, got))
    print("%d cases, %d differ" % (len(rows), bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
