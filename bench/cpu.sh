#!/usr/bin/env bash
# CPU cost per request per hop of the mesh's two-hop HTTP/1.1 path against
# nginx doing the same two hops, in one run, robust to a shared machine:
# the servers' CPU time (utime+stime from /proc/<pid>/stat) is read before
# and after each wrk run and divided by the requests served.
# Pinning: every server on CPU 0 (GOMAXPROCS=1, nginx one worker), wrk -t1
# on CPU 1; 100-byte responses; default observability.
#   bench/cpu.sh                 # 10s per run, 2 alternations
#   DURATION=5s ROUNDS=3 bench/cpu.sh
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-32}
MANY=${MANY:-1000}
for tool in wrk nginx taskset; do
	command -v "$tool" >/dev/null || { echo "bench: $tool missing (apt-get install -y wrk nginx util-linux)" >&2; exit 1; }
done
[ -x bin/mesh ] && [ -x bin/consul ] || { echo "bench: run 'make build consul' first" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

work=$(mktemp -d /tmp/mesh-cpu.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
	[ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
	wait 2>/dev/null || true
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/upstream" ./bench/upstream
bg() { "$@" >"$work/$(basename "$1")-$$-$RANDOM.log" 2>&1 & pids+=($!); }

CP=18510
bg bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $CP -grpc-port 18512 -dns-port 18610 \
	-serf-lan-port 18311 -serf-wan-port 18312 -server-port 18310 -data-dir "$work/consul"
until curl -fs "http://127.0.0.1:$CP/v1/status/leader" | grep -q 127; do sleep 0.2; done

GOMAXPROCS=1 bg taskset -c 0 "$work/upstream" -addr 127.0.0.82:8080
agent() { # ip service app-port extra...
	local ip=$1 svc=$2 port=$3; shift 3
	GOMAXPROCS=1 bg taskset -c 0 bin/mesh agent --service "$svc" --app-address "$ip" --app-port "$port" \
		--inbound-addr "$ip:15006" --outbound-addr "$ip:15001" --admin-addr "$ip:15000" --advertise-addr "$ip" \
		--node "cpu-$svc" --consul-addr "127.0.0.1:$CP" --cache-dir "$work/$svc" --drain-period 0s --log-level warn "$@"
	echo $!
}
B_PID=$(agent 127.0.0.82 cpu-b 8080)
A_PID=$(agent 127.0.0.81 cpu-a 9 --upstream cpu-b=127.0.0.81:9191)
pids+=("$A_PID" "$B_PID")
for ip in 127.0.0.81 127.0.0.82; do
	until curl -fs "http://$ip:15000/ready" >/dev/null; do sleep 0.2; done
done
until [ "$(curl -fs "http://127.0.0.1:$CP/v1/health/service/cpu-b?passing" | grep -o '"ServiceID"' | wc -l)" -ge 1 ]; do sleep 0.2; done

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 1;
worker_rlimit_nofile 65536;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 8192; }
http {
	access_log off;
	upstream app { server 127.0.0.82:8080; keepalive 256; }
	upstream hop1 { server 127.0.0.83:8081; keepalive 256; }
	server { listen 127.0.0.83:8081; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
	server { listen 127.0.0.83:8082; location / { proxy_pass http://hop1; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
until curl -fs http://127.0.0.83:8082/ >/dev/null; do sleep 0.2; done
NGINX_WORKER=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)

ticks() { # pids... -> utime+stime in clock ticks
	local t=0 p
	for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
	echo "$t"
}
HZ=$(getconf CLK_TCK)
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
anon_kb() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; } # without the binary's file pages

# wrk_run name conns url [host] -> "requests rps p50 p99"
wrk_run() {
	local c=$1 url=$2 host=${3:-} hdr=()
	[ -n "$host" ] && hdr=(-H "Host: $host")
	local out
	out=$(taskset -c 1 wrk -t1 -c"$c" -d"$DURATION" --latency "${hdr[@]}" "$url")
	awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print n, r, p50, p99}' <<<"$out"
}
us() { # wrk latency (e.g. 210.00us, 1.20ms) -> microseconds
	awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}

warm() { taskset -c 1 wrk -t1 -c"$1" -d2s ${3:+-H "Host: $3"} "$2" >/dev/null; }
warm "$CONNS" http://127.0.0.81:15001/ cpu-b
warm "$CONNS" http://127.0.0.83:8082/

if [ -n "${PROFILE:-}" ]; then # CPU profiles of both agents under load, into $PROFILE/
	mkdir -p "$PROFILE"
	taskset -c 1 wrk -t1 -c"$CONNS" -d6s -H "Host: cpu-b" http://127.0.0.81:15001/ >/dev/null &
	prof=($!)
	curl -fs "http://127.0.0.81:15000/debug/pprof/profile?seconds=5" >"$PROFILE/a.pprof" &
	prof+=($!)
	curl -fs "http://127.0.0.82:15000/debug/pprof/profile?seconds=5" >"$PROFILE/b.pprof"
	wait "${prof[@]}" # not the servers
fi

rows=()
mesh_cpu=() nginx_cpu=() mesh_rps=() nginx_rps=()
for round in $(seq 1 "$ROUNDS"); do
	t0=$(ticks "$A_PID" "$B_PID")
	read -r n rps p50 p99 < <(wrk_run "$CONNS" http://127.0.0.81:15001/ cpu-b)
	t1=$(ticks "$A_PID" "$B_PID")
	cpu=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz * 1e6 / n / 2 }')
	mesh_cpu+=("$cpu") mesh_rps+=("$rps")
	rows+=("| mesh 2 hops (A outbound -> B inbound) #$round | $CONNS | $rps | $p50 | $p99 | $cpu |")

	t0=$(ticks "$NGINX_WORKER")
	read -r n rps p50 p99 < <(wrk_run "$CONNS" http://127.0.0.83:8082/)
	t1=$(ticks "$NGINX_WORKER")
	cpu=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz * 1e6 / n / 2 }')
	nginx_cpu+=("$cpu") nginx_rps+=("$rps")
	rows+=("| nginx 2 hops #$round | $CONNS | $rps | $p50 | $p99 | $cpu |")
done

# Latency added per hop at one connection: (two hops - direct) / 2.
read -r _ _ d50 d99 < <(wrk_run 1 http://127.0.0.82:8080/)
read -r _ _ m50 m99 < <(wrk_run 1 http://127.0.0.81:15001/ cpu-b)
read -r _ _ n50 n99 < <(wrk_run 1 http://127.0.0.83:8082/)
added() { awk -v a="$(us "$1")" -v d="$(us "$2")" 'BEGIN { printf "%.0f", (a - d) / 2 }'; }

# Memory per connection: agent A's RSS while MANY connections are open
# against its RSS before.
rss0=$(rss_kb "$A_PID") anon0=$(anon_kb "$A_PID")
taskset -c 1 wrk -t1 -c"$MANY" -d"$DURATION" -H "Host: cpu-b" http://127.0.0.81:15001/ >"$work/many.txt" &
wpid=$!
sleep "$(awk -v d="${DURATION%s}" 'BEGIN { print d * 0.7 }')"
rss1=$(rss_kb "$A_PID") anon1=$(anon_kb "$A_PID")
rssB=$(rss_kb "$B_PID")
wait "$wpid"
nrss0=$(rss_kb "$NGINX_WORKER")

avg() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.1f", s / NR }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "-" }'; }
mc=$(avg "${mesh_cpu[@]}") nc=$(avg "${nginx_cpu[@]}")
mr=$(avg "${mesh_rps[@]}") nr=$(avg "${nginx_rps[@]}")

echo "| run | conns | req/s | p50 | p99 | CPU µs per request per hop |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "| measure | mesh | nginx | ratio (target) |"
echo "|---|---|---|---|"
echo "| CPU per request per hop (mean of $ROUNDS) | $mc µs | $nc µs | $(ratio "$mc" "$nc") (<= 1.6) |"
echo "| two-hop req/s, $CONNS conns (mean of $ROUNDS) | $mr | $nr | $(ratio "$mr" "$nr") (>= 0.7) |"
echo "| p50 added per hop, 1 conn (direct p50 $d50) | $(added "$m50" "$d50") µs | $(added "$n50" "$d50") µs | $(ratio "$(added "$m50" "$d50")" "$(added "$n50" "$d50")") (<= 2) |"
echo "| p99 added per hop, 1 conn (direct p99 $d99) | $(added "$m99" "$d99") µs | $(added "$n99" "$d99") µs | |"
echo "| agent A RSS at $MANY conns vs idle | $((rss0 / 1024)) -> $((rss1 / 1024)) MB: $(( (rss1 - rss0) / MANY )) KB/conn (anonymous memory: $(( (anon1 - anon0) / MANY )) KB/conn) | worker $((nrss0 / 1024)) MB | (<= 30 KB) |"
echo
echo "Agent B RSS at $MANY conns through A: $((rssB / 1024)) MB. wrk -t1 on CPU 1, $DURATION per run; servers on CPU 0 with GOMAXPROCS=1; nginx 1 worker; 100-byte responses; default observability. Load: $(uptime | sed 's/.*load average/load average/')"
