#!/usr/bin/env bash
# Starts / stops a private RabbitMQ node for warren-rpc's AMQP tests, on its
# own ports and data directory so that it never touches a system instance.
#
#   tests/python/oslo/rabbitmq.sh start    # starts it, waits until it answers
#   tests/python/oslo/rabbitmq.sh stop
#   tests/python/oslo/rabbitmq.sh status
#   tests/python/oslo/rabbitmq.sh url      # prints the AMQP URL to use
#   tests/python/oslo/rabbitmq.sh close-connections [TEXT]
#       closes the client connections whose client properties contain TEXT
#       (e.g. a connection name), or all of them
#
# Settings (environment): WARREN_RMQ_PORT (5673), WARREN_RMQ_DIST_PORT (25673),
# WARREN_RMQ_NODENAME (warren-test@localhost), WARREN_RMQ_BASE (/tmp/warren-rmq-test).
# The user guest/guest of the default vhost is RabbitMQ's default (loopback only).
set -euo pipefail

PORT="${WARREN_RMQ_PORT:-5673}"
DIST_PORT="${WARREN_RMQ_DIST_PORT:-25673}"
NODE="${WARREN_RMQ_NODENAME:-warren-test@localhost}"
BASE="${WARREN_RMQ_BASE:-/tmp/warren-rmq-test}"

export RABBITMQ_NODE_PORT="$PORT"
export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_DIST_PORT="$DIST_PORT"
export RABBITMQ_MNESIA_BASE="$BASE/mnesia"
export RABBITMQ_LOG_BASE="$BASE/log"
export RABBITMQ_PID_FILE="$BASE/$NODE.pid"
# No management / prometheus listeners on fixed ports: nothing else to collide.
export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"
export RABBITMQ_CONFIG_FILE="$BASE/rabbitmq"

ctl() { rabbitmqctl -n "$NODE" "$@"; }

case "${1:-}" in
start)
    if ctl status >/dev/null 2>&1; then
        echo "rabbitmq.sh: $NODE already running on port $PORT"
        exit 0
    fi
    mkdir -p "$BASE/mnesia" "$BASE/log"
    echo "[]." > "$RABBITMQ_ENABLED_PLUGINS_FILE"
    # Debian's wrapper runs the node as the `rabbitmq` user: it must own
    # its directories.
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq:rabbitmq "$BASE"
    fi
    # Loopback only.
    rm -f "$BASE/rabbitmq.conf"
    cat > "$BASE/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$PORT
loopback_users.guest = true
CONF
    rabbitmq-server -detached
    # await_startup gives up after its own timeout; retry until the node
    # exists at all (it takes a moment before rabbitmqctl can reach it).
    for _ in $(seq 1 60); do
        if ctl await_startup --timeout 60 >/dev/null 2>&1; then
            echo "rabbitmq.sh: $NODE up on 127.0.0.1:$PORT"
            exit 0
        fi
        sleep 1
    done
    echo "rabbitmq.sh: $NODE did not start; log follows" >&2
    tail -n 50 "$BASE"/log/*.log >&2 || true
    exit 1
    ;;
stop)
    if ctl status >/dev/null 2>&1; then
        ctl stop >/dev/null
        echo "rabbitmq.sh: $NODE stopped"
    else
        echo "rabbitmq.sh: $NODE not running"
    fi
    ;;
status)
    ctl status
    ;;
url)
    echo "amqp://guest:guest@127.0.0.1:$PORT/%2F"
    ;;
close-connections)
    if [ -z "${2:-}" ]; then
        ctl close_all_connections "closed by warren's fault test"
    else
        ctl list_connections pid client_properties --no-table-headers -q |
            grep -F -- "$2" | cut -f1 |
            while read -r pid; do
                ctl close_connection "$pid" "closed by warren's fault test" >/dev/null </dev/null
                echo "closed $pid"
            done
    fi
    ;;
*)
    echo "usage: $0 start|stop|status|url|close-connections" >&2
    exit 2
    ;;
esac
