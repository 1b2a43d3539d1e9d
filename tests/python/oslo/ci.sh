#!/usr/bin/env bash
# CI step: warren-rpc's AMQP transport against a real RabbitMQ, and against
# Python oslo.messaging (interop both ways). Called from .ci/run as
#
#     bash tests/python/oslo/ci.sh
#
# 1. installs rabbitmq-server if missing (apt-get); if it cannot be
#    installed, says so and skips this step (exit 0): nothing else depends
#    on it;
# 2. makes a venv with oslo.messaging under target/ci-venv (pip, PyPI); if
#    that fails, the Python interop tests are skipped (they say so) and the
#    rest runs;
# 3. runs `cargo test -p warren-rpc --features amqp` (the behaviour suite on
#    both transports, and the Python interop both ways) against `warren serve`;
# 4. starts a private RabbitMQ node on 127.0.0.1:5673
#    (tests/python/oslo/rabbitmq.sh), runs the same against it, and
#    warren-wire's differential test (same method sequences to warren and to
#    RabbitMQ, answers compared), then stops it.
#
# Settings: OSLO_MESSAGING_VERSION (default 18.3.1, the version warren-rpc's
# wire format is checked against), WARREN_RMQ_PORT (5673).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT="$PWD"
start=$(date +%s)
say() { echo "== warren-rpc over AMQP: $* ($(($(date +%s) - start))s)"; }

VENV="$ROOT/target/ci-venv"
OSLO="${OSLO_MESSAGING_VERSION:-18.3.1}"
python_ok=0
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import oslo_messaging" 2>/dev/null; then
    python_ok=1
else
    say "python venv with oslo.messaging==$OSLO ($VENV)"
    if python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install -q --disable-pip-version-check "oslo.messaging==$OSLO"; then
        python_ok=1
    else
        echo "could not make the venv; the oslo.messaging interop tests will be skipped"
    fi
fi

# --- 1. against `warren serve` (always) ---------------------------------
cargo build --bin warren
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/warren serve --listen "127.0.0.1:$port" &
WARREN_PID=$!
trap 'kill $WARREN_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
if [ "$python_ok" = 1 ]; then export WARREN_TEST_PYTHON="$VENV/bin/python"; fi
say "cargo test -p warren-rpc --features amqp against warren serve (127.0.0.1:$port, python ${WARREN_TEST_PYTHON:-none})"
WARREN_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2F" cargo test -p warren-rpc --features amqp
kill $WARREN_PID 2>/dev/null || true
trap - EXIT

# --- 2. against RabbitMQ (when it installs) ------------------------------
have_rabbitmq() { command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1; }

if ! have_rabbitmq; then
    say "installing rabbitmq-server"
    if command -v apt-get >/dev/null 2>&1; then
        (
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
        ) || echo "apt-get could not install rabbitmq-server"
    else
        echo "no apt-get here"
    fi
fi
if ! have_rabbitmq; then
    say "SKIPPED: RabbitMQ is not installed and could not be; the AMQP and oslo.messaging tests of warren-rpc did NOT run"
    exit 0
fi


say "starting RabbitMQ"
tests/python/oslo/rabbitmq.sh start
trap 'tests/python/oslo/rabbitmq.sh stop || true' EXIT

export WARREN_TEST_AMQP_URL="$(tests/python/oslo/rabbitmq.sh url)"
export WARREN_TEST_AMQP_KILL_CMD="$ROOT/tests/python/oslo/rabbitmq.sh close-connections"
if [ "$python_ok" = 1 ]; then
    export WARREN_TEST_PYTHON="$VENV/bin/python"
fi

say "cargo test -p warren-rpc --features amqp (broker $WARREN_TEST_AMQP_URL, python ${WARREN_TEST_PYTHON:-none})"
cargo test -p warren-rpc --features amqp

say "warren-wire's differential test against RabbitMQ"
WARREN_RABBITMQ_ADDR=127.0.0.1:"${WARREN_RMQ_PORT:-5673}" cargo test -p warren-wire --test differential

say "done"
