#!/bin/bash
# A quick same-run A/B of two trees of this server, for a change on the request path:
#   git worktree add /tmp/old <commit>; OLD=/tmp/old bench/ab_quick.sh
# Rounds alternate the two servers (ORDER="new:7402 old:7401" to start with the new one);
# each row is wrk -t1 -c100 -d${DUR:-5}s. Pinning as make bench: the servers on CPU 0, wrk
# and one Redis (no persistence) on CPU 1. Rows: admission (stock 10^12) one URL and
# distinct users, a 100,000-unit sale bought by distinct users (~1 s of admission, then
# sold out), sold out with distinct users.
# Each line: req/s, then the server's CPU time per request over the run (from /proc: less
# moved by other load on the machine than req/s; compare that too).
# ROW=grow: instead, make bench's (a) distinct-users row as it runs there: Redis with AOF
# everysec, ONE 10^12-unit sale per server bought by distinct users over all the rounds
# (DUR=10), so it grows as the buyer index does over make bench's three runs.
set -u
NEW=${NEW:-$(cd "$(dirname "$0")/.." && pwd)}
OLD=${OLD:?set OLD to a worktree of the commit to compare with}
ORDER=${ORDER:-old:7401 new:7402}
PY=${PY:-$NEW/.venv/bin/python}
RS=$NEW/.venv/bin/redis-server
CLI=$NEW/.venv/bin/redis-cli
pkill -f "redis-server 127.0.0.1:7399" 2>/dev/null
if [ "${ROW:-}" = grow ]; then
  PERSIST="--appendonly yes --appendfsync everysec --dir $(mktemp -d)"
else
  PERSIST="--appendonly no"
fi
taskset -c 1 $RS --port 7399 --bind 127.0.0.1 --save '' $PERSIST --daemonize yes --logfile ${TMPDIR:-/tmp}/redis.log
sleep 0.5
start() { # tree port
  (cd $1 && taskset -c 0 $PY seckill_server.py --port $2 --redis redis://127.0.0.1:7399 --no-demo > ${TMPDIR:-/tmp}/srv$2.log 2>&1 &)
  for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$2/healthz && return; sleep 0.1; done
}
start $OLD 7401
start $NEW 7402
mk() { (cd $NEW && $PY seckill_server.py create $1 --stock $2 --redis redis://127.0.0.1:7399 >/dev/null); }
cpu() { # the server's CPU time so far, in clock ticks (utime + stime of the process on port $1)
  awk '{print $14 + $15}' /proc/$(pgrep -f "seckill_server.py --port $1" | head -1)/stat
}
run() { # label port path script: "label req/s", and the server's CPU per request (less noisy)
  local before=$(cpu $2)
  local out=$(taskset -c 1 wrk -t1 -c100 -d${DUR:-5}s --latency ${4:+-s $NEW/bench/users.lua} http://127.0.0.1:$2$3 2>&1)
  local ticks=$(( $(cpu $2) - before ))
  echo "$out" | awk -v l="$1" -v t=$ticks -v hz=$(getconf CLK_TCK) \
    '/requests in/{n=$1} /Requests\/sec/{r=$2} END{printf "%s %s  (server CPU %.2f us/req)\n", l, r, t / hz * 1e6 / n}'
}
if [ "${ROW:-}" = grow ]; then
  for v in $ORDER; do mk grow${v%%:*} 1000000000000; done
fi
for r in 1 2 3; do
  for v in $ORDER; do
    n=${v%%:*}; p=${v##*:}
    if [ "${ROW:-}" = grow ]; then
      run "$n admission-distinct-growing(round $r)" $p /seckill/grow$n users
      continue
    fi
    mk big$n$r 1000000000000
    run "$n admission-one-url" $p /seckill/big$n$r
    mk bigu$n$r 1000000000000
    run "$n admission-distinct" $p /seckill/bigu$n$r users
    mk real$n$r 100000
    run "$n realistic-100k-distinct(5s: ~1s admission then sold out)" $p /seckill/real$n$r users
    mk so$n$r 0
    run "$n soldout-distinct" $p /seckill/so$n$r users
  done
done
pkill -f "seckill_server.py --port 740" ; $CLI -p 7399 shutdown nosave
