#!/usr/bin/env bash
# Benchmark (e) of docs/benchmarks.md: redis-benchmark against a real
# redis-server directly, and through two agents (a tcp upstream listener
# on agent A, an app_protocol tcp inbound on agent B), alternated twice in
# one run. Servers (redis, both agents) are pinned to CPU 0 with
# GOMAXPROCS=1, redis-benchmark to CPU 1. Also reads each agent's CPU time
# (utime+stime from /proc/<pid>/stat) per request. Prints a markdown table.
#   bench/redis.sh                 # 20000 requests per test, 50 clients
#   N=100000 bench/redis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
for tool in redis-server redis-benchmark taskset curl; do
	command -v "$tool" >/dev/null || { echo "bench: $tool missing (apt-get install -y redis-server redis-tools)" >&2; exit 1; }
done
[ -x bin/mesh ] && [ -x bin/consul ] || { echo "bench: run 'make build consul' first" >&2; exit 1; }

work=$(mktemp -d /tmp/mesh-redis-bench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
bg() { "$@" >"$work/$(basename "$1")-$RANDOM.log" 2>&1 & pids+=($!); }

CP=18510
bg bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $CP -grpc-port 18512 -dns-port 18610 \
	-serf-lan-port 18311 -serf-wan-port 18312 -server-port 18310 -data-dir "$work/consul"
until curl -fs "http://127.0.0.1:$CP/v1/status/leader" | grep -q 127; do sleep 0.2; done

# Redis on "VM B" (127.0.0.152).
taskset -c 0 redis-server --bind 127.0.0.152 --port 6379 --save '' --appendonly no --daemonize no \
	--protected-mode no --dir "$work" --loglevel warning >"$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -h 127.0.0.152 -p 6379 ping 2>/dev/null | grep -q PONG; do sleep 0.1; done

agent() { # ip service app-port extra...
	local ip=$1 svc=$2 port=$3; shift 3
	GOMAXPROCS=1 taskset -c 0 bin/mesh agent --service "$svc" --app-address "$ip" --app-port "$port" \
		--inbound-addr "$ip:15006" --outbound-addr "$ip:15001" --admin-addr "$ip:15000" --advertise-addr "$ip" \
		--node "bench-$svc" --consul-addr "127.0.0.1:$CP" --cache-dir "$work/$svc" --drain-period 0s --log-level warn "$@" \
		>"$work/agent-$svc.log" 2>&1 &
	echo $!
}
B_PID=$(agent 127.0.0.152 redis 6379 --app-protocol tcp)
A_PID=$(agent 127.0.0.151 bench-client 9 --app-protocol tcp --upstream redis=127.0.0.151:6380,tcp)
pids+=("$A_PID" "$B_PID")
for ip in 127.0.0.151 127.0.0.152; do until curl -fs "http://$ip:15000/ready" >/dev/null; do sleep 0.2; done; done
until [ "$(curl -fs "http://127.0.0.1:$CP/v1/health/service/redis?passing" | grep -o '"ServiceID"' | wc -l)" -ge 1 ]; do sleep 0.2; done
until redis-cli -h 127.0.0.151 -p 6380 ping 2>/dev/null | grep -q PONG; do sleep 0.2; done

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; } # utime+stime, clock ticks
HZ=$(getconf CLK_TCK)
run() { # name host port -> "name|SET rps|GET rps|agent CPU µs per request (A+B)"
	local a0 b0 out
	a0=$(ticks "$A_PID"); b0=$(ticks "$B_PID")
	out=$(taskset -c 1 redis-benchmark -h "$2" -p "$3" -t set,get -n "$N" -q 2>/dev/null | tr '\r' '\n')
	local set get
	set=$(echo "$out" | awk '/^SET:/ {print $2}' | tail -1)
	get=$(echo "$out" | awk '/^GET:/ {print $2}' | tail -1)
	local cpu=$(( $(ticks "$A_PID") - a0 + $(ticks "$B_PID") - b0 ))
	awk -v n="$1" -v s="$set" -v g="$get" -v c="$cpu" -v hz="$HZ" -v reqs="$((2 * N))" \
		'BEGIN { printf "%s|%s|%s|%.1f\n", n, s, g, c / hz * 1e6 / reqs }'
}
results=()
for round in 1 2; do
	results+=("$(run direct 127.0.0.152 6379)")
	results+=("$(run mesh 127.0.0.151 6380)")
done
avg() { # name column
	printf '%s\n' "${results[@]}" | awk -F'|' -v n="$1" -v c="$2" '$1 == n { s += $c; k++ } END { if (k) printf "%.0f", s / k }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "-" }'; }
echo "| path | SET req/s | GET req/s | vs direct (SET / GET) | agents' CPU per request (A+B) |"
echo "|---|---|---|---|---|"
for r in "${results[@]}"; do
	IFS='|' read -r name set get cpu <<<"$r"
	cpucol="-"
	[ "$name" = mesh ] && cpucol="${cpu} µs"
	echo "| $name | $set | $get | $(ratio "$set" "$(avg direct 2)") / $(ratio "$get" "$(avg direct 3)") | $cpucol |"
done
echo
echo "redis-benchmark -t set,get -n $N -q (50 clients) on CPU 1; redis-server and both agents on CPU 0, GOMAXPROCS=1; rounds alternated."
