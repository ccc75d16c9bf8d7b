# Sourced by dev/test and bench/run before `dev/env up` (needs $REPO and a
# `say` function).
# A fresh checkout on a machine where another checkout's dev env (or anything
# else) holds the default ports gets free ports of its own.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the kernel's ephemeral range, which outgoing connections draw from.
free_port() {
  python3 -c '
import random, socket
for p in random.sample(range(20000, 32000), 12000):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
'
}
STATE_DIR=${PGPIPE_DEV_DIR:-$REPO/.dev}
if [ -f "$STATE_DIR/env.sh" ]; then
  # Keep the ports an earlier run of this checkout chose.
  saved_pg=$(sed -n 's|.*PGPIPE_TEST_PG_URL=postgres://[^@]*@127.0.0.1:\([0-9]*\)/.*|\1|p' "$STATE_DIR/env.sh")
  saved_ch=$(sed -n 's|.*PGPIPE_TEST_CH_URL=http://127.0.0.1:\([0-9]*\).*|\1|p' "$STATE_DIR/env.sh")
  # (if, not &&: a false test must not be this file's status under set -e)
  if [ -z "${PGPIPE_DEV_PG_PORT:-}" ] && [ -n "$saved_pg" ]; then
    export PGPIPE_DEV_PG_PORT=$saved_pg
  fi
  if [ -z "${PGPIPE_DEV_CH_PORT:-}" ] && [ -n "$saved_ch" ]; then
    export PGPIPE_DEV_CH_PORT=$saved_ch
  fi
elif [ ! -d "$STATE_DIR" ]; then
  if [ -z "${PGPIPE_DEV_PG_PORT:-}" ] && port_busy 54329; then
    export PGPIPE_DEV_PG_PORT=$(free_port)
    say "port 54329 is taken; using $PGPIPE_DEV_PG_PORT for Postgres"
  fi
  if [ -z "${PGPIPE_DEV_CH_PORT:-}" ] && port_busy 18123; then
    export PGPIPE_DEV_CH_PORT=$(free_port)
    say "port 18123 is taken; using $PGPIPE_DEV_CH_PORT for ClickHouse"
  fi
fi
true
