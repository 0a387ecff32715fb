#!/usr/bin/env bash
# Two-hop CPU per request through transparent interception versus the
# explicit per-upstream listener, in one run, in a network namespace with
# real nftables rules from `mesh redirect-traffic` (as root).
#   wrk -> 10.78.0.2:8080 (the app's real address) -> redirected to agent A's
#          outbound intercept listener -> agent B inbound -> upstream
#   wrk -> 127.0.0.1:9191 (A's per-upstream listener) -> agent B -> upstream
# Both agents run as uid 15999 (excluded from redirection), pinned to CPU 0
# with GOMAXPROCS=1, wrk -t1 on CPU 1; CPU = utime+stime of both agents
# from /proc/<pid>/stat per request, halved (per hop). wrk opens its
# connections once, so the figure is the steady state per request; the
# per-connection cost of interception (SO_ORIGINAL_DST, detection) is
# measured separately with one new connection per request (ab-style: wrk
# with Connection: close).
#   bench/intercept.sh            # 10s per run, 2 alternations
#   DURATION=5s ROUNDS=3 bench/intercept.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-32}
UID_AGENT=15999
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespace, nftables)" >&2; exit 1; }
for tool in wrk taskset setpriv ip nft curl; do
	command -v "$tool" >/dev/null || { echo "bench: $tool missing" >&2; exit 1; }
done
if [ ! -x bin/mesh ] || [ ! -x bin/consul ]; then echo "bench: run 'make build consul' first" >&2; exit 1; fi

NS=meshbench-$$
work=$(mktemp -d /tmp/mesh-intercept.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
	ip netns del "$NS" 2>/dev/null || true
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }
bg() { in_ns "$@" >"$work/$(basename "$1")-$RANDOM.log" 2>&1 & pids+=($!); }

ip netns add "$NS"
in_ns ip link set lo up
# Two local non-loopback addresses (a veth pair: the dummy driver may be
# missing); traffic between them stays on lo.
in_ns ip link add mb0 type veth peer name mb1
in_ns ip addr add 10.78.0.1/24 dev mb0
in_ns ip addr add 10.78.0.2/24 dev mb0
in_ns ip link set mb0 up
in_ns ip link set mb1 up

go build -o "$work/upstream" ./bench/upstream
cp bin/mesh "$work/mesh"
bg bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -data-dir "$work/consul"
until in_ns curl -fs http://127.0.0.1:8500/v1/status/leader | grep -q 127; do sleep 0.2; done

GOMAXPROCS=1 bg taskset -c 0 "$work/upstream" -addr 10.78.0.2:8080
agent() { # name ip admin-ip extra...
	local svc=$1 ip=$2 adm=$3; shift 3
	mkdir -p "$work/$svc" && chown "$UID_AGENT" "$work/$svc"
	GOMAXPROCS=1 in_ns setpriv --reuid $UID_AGENT --regid $UID_AGENT --clear-groups taskset -c 0 "$work/mesh" agent \
		--service "$svc" --advertise-addr "$ip" --inbound-addr "$ip:15006" --outbound-addr "$adm:15001" \
		--admin-addr "$adm:15000" --node "bench-$svc" --consul-addr 127.0.0.1:8500 --cache-dir "$work/$svc" \
		--drain-period 0s --log-level warn "$@" >"$work/$svc.log" 2>&1 &
	# ip netns exec may fork: the agent is the process running its binary
	# for this service (the path is this run's own).
	local pid=""
	until pid=$(pgrep -f "^$work/mesh agent --service $svc " | head -1) && [ -n "$pid" ]; do sleep 0.1; done
	echo "$pid"
}
B_PID=$(agent cpu-b 10.78.0.2 127.0.0.2 --app-address 10.78.0.2 --app-port 8080 --app-protocol http1)
cat >"$work/a.yaml" <<YAML
agent:
  interception: {enabled: true}
YAML
chmod 644 "$work/a.yaml"
pids+=("$B_PID")
A_PID=$(agent cpu-a 10.78.0.1 127.0.0.1 --app-port 9 --app-protocol http1 --upstream cpu-b=127.0.0.1:9191 --config "$work/a.yaml")
pids+=("$A_PID")
# A's app (port 9) does not exist, so A is never /ready: wait for its admin.
for adm in 127.0.0.1 127.0.0.2; do
	until in_ns curl -fs "http://$adm:15000/metrics" >/dev/null 2>&1; do sleep 0.2; done
done
until [ "$(in_ns curl -fs 'http://127.0.0.1:8500/v1/health/service/cpu-b?passing' | grep -o '"ServiceID"' | wc -l)" -ge 1 ]; do sleep 0.2; done
in_ns "$work/mesh" redirect-traffic --proxy-uid $UID_AGENT --no-inbound >/dev/null
# The intercepted path works before it is measured.
until in_ns curl -fs http://10.78.0.2:8080/ >/dev/null; do sleep 0.2; done
in_ns curl -fs http://127.0.0.1:9191/ >/dev/null

ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
wrk_run() { # conns url extra... -> "requests rps p50"
	local c=$1 url=$2; shift 2
	in_ns taskset -c 1 wrk -t1 -c"$c" -d"$DURATION" --latency "$@" "$url" |
		awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} $1=="50%" {p50=$2} END {print n, r, p50}'
}
measure() { # label url extra...
	local label=$1 url=$2; shift 2
	local t0 t1 n rps p50 cpu
	t0=$(ticks "$A_PID" "$B_PID")
	read -r n rps p50 < <(wrk_run "$CONNS" "$url" "$@")
	t1=$(ticks "$A_PID" "$B_PID")
	cpu=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz * 1e6 / n / 2 }')
	echo "$label|$rps|$p50|$cpu"
}
in_ns taskset -c 1 wrk -t1 -c"$CONNS" -d2s http://10.78.0.2:8080/ >/dev/null
in_ns taskset -c 1 wrk -t1 -c"$CONNS" -d2s http://127.0.0.1:9191/ >/dev/null

declare -A sum cnt
rows=()
for round in $(seq 1 "$ROUNDS"); do
	for c in "intercepted|http://10.78.0.2:8080/" "explicit|http://127.0.0.1:9191/" \
		"intercepted, new connection per request|http://10.78.0.2:8080/|close" "explicit, new connection per request|http://127.0.0.1:9191/|close"; do
		IFS='|' read -r label url close <<<"$c"
		extra=()
		[ -n "$close" ] && extra=(-H "Connection: close")
		IFS='|' read -r l rps p50 cpu < <(measure "$label" "$url" "${extra[@]}")
		rows+=("| $l #$round | $rps | $p50 | $cpu |")
		sum[$l]=$(awk -v a="${sum[$l]:-0}" -v b="$cpu" 'BEGIN { print a + b }')
		cnt[$l]=$(( ${cnt[$l]:-0} + 1 ))
	done
done
mean() { awk -v s="${sum[$1]}" -v n="${cnt[$1]}" 'BEGIN { printf "%.1f", s / n }'; }
echo "| run | req/s | p50 | CPU µs per request per hop (agents A+B / 2) |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
i=$(mean intercepted) e=$(mean explicit)
ic=$(mean "intercepted, new connection per request") ec=$(mean "explicit, new connection per request")
echo "| path | intercepted | explicit | ratio |"
echo "|---|---|---|---|"
echo "| keep-alive, $CONNS conns (mean of $ROUNDS) | $i µs | $e µs | $(awk -v a="$i" -v b="$e" 'BEGIN { printf "%.2f", a / b }') |"
echo "| new connection per request (mean of $ROUNDS) | $ic µs | $ec µs | $(awk -v a="$ic" -v b="$ec" 'BEGIN { printf "%.2f", a / b }') |"
echo
echo "wrk -t1 on CPU 1, $DURATION per run; agents on CPU 0, GOMAXPROCS=1, default observability; 100-byte responses. Load: $(uptime | sed 's/.*load average/load average/')"
