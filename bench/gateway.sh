#!/usr/bin/env bash
# HTTPS through mesh gateway into the mesh (gateway -> the app's agent ->
# the app) against nginx terminating TLS and proxying to the same app, in
# one run: req/s and CPU time per request (utime+stime from
# /proc/<pid>/stat before and after each wrk run, divided by the requests
# served), with keep-alive connections and with a new TLS connection per
# request (Connection: close). Servers on CPU 0 (GOMAXPROCS=1, nginx one
# worker), wrk -t1 on CPU 1, 100-byte responses, ECDSA P-256 certificates,
# the gateway's default observability (access log to a file).
#   bench/gateway.sh                  # 10s per run, 2 alternations
#   DURATION=5s ROUNDS=1 bench/gateway.sh
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-32}
for tool in wrk nginx taskset openssl; do
	command -v "$tool" >/dev/null || { echo "bench: $tool missing (apt-get install -y wrk nginx util-linux openssl)" >&2; exit 1; }
done
[ -x bin/mesh ] && [ -x bin/consul ] || { echo "bench: run 'make build consul' first" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

work=$(mktemp -d /tmp/mesh-gwbench.XXXXXX)
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

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=shop.bench \
	-addext subjectAltName=DNS:shop.bench -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

CP=18710
bg bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $CP -grpc-port 18712 -dns-port 18810 \
	-serf-lan-port 18711 -serf-wan-port 18713 -server-port 18714 -data-dir "$work/consul"
until curl -fs "http://127.0.0.1:$CP/v1/status/leader" | grep -q 127; do sleep 0.2; done

APP=127.0.0.92:8080
GOMAXPROCS=1 bg taskset -c 0 "$work/upstream" -addr "$APP"
GOMAXPROCS=1 bg taskset -c 0 bin/mesh agent --service gwbench-app --app-address 127.0.0.92 --app-port 8080 \
	--app-protocol http1 --inbound-addr 127.0.0.92:15006 --outbound-addr 127.0.0.92:15001 --admin-addr 127.0.0.92:15000 \
	--advertise-addr 127.0.0.92 --node gwbench-b --consul-addr "127.0.0.1:$CP" --cache-dir "$work/b" --drain-period 0s --log-level warn
AGENT_PID=$!
until curl -fs http://127.0.0.92:15000/ready >/dev/null; do sleep 0.2; done
until [ "$(curl -fs "http://127.0.0.1:$CP/v1/health/service/gwbench-app?passing" | grep -o '"ServiceID"' | wc -l)" -ge 1 ]; do sleep 0.2; done

cat >"$work/control.yaml" <<YAML
consul: {addr: 127.0.0.1:$CP}
control:
  xds_addr: 127.0.0.1:18720
  admin_addr: 127.0.0.1:18721
  ca: {dir: $work/ca}
  gateway:
    routes:
      - {path_prefix: /, service: gwbench-app}
YAML
bg bin/mesh control --config "$work/control.yaml" --log-level warn
until curl -fs http://127.0.0.1:18721/ready >/dev/null; do sleep 0.2; done

cat >"$work/gateway.yaml" <<YAML
consul: {addr: 127.0.0.1:$CP}
observability: {access_log: {output: $work/gateway-access.log}}
gateway:
  https_addr: 127.0.0.91:8443
  http_addr: ""
  admin_addr: 127.0.0.91:15000
  control_plane: [127.0.0.1:18720]
  cache_dir: $work/gw
  drain_period: 0s
  tls: {certificates: [{cert_file: $work/tls.crt, key_file: $work/tls.key}]}
YAML
mkdir -p "$work/gw"
GOMAXPROCS=1 bg taskset -c 0 bin/mesh gateway --config "$work/gateway.yaml" --log-level warn
GW_PID=$!
for _ in $(seq 150); do curl -fsk https://127.0.0.91:8443/ >/dev/null && break; sleep 0.2; done
curl -fsk https://127.0.0.91:8443/ >/dev/null || { echo "bench: the gateway does not route" >&2; cat "$work"/mesh-*.log >&2; exit 1; }

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 1;
worker_rlimit_nofile 65536;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 8192; }
http {
	access_log off;
	upstream app { server $APP; keepalive 256; }
	server {
		listen 127.0.0.93:8443 ssl http2;
		ssl_certificate $work/tls.crt;
		ssl_certificate_key $work/tls.key;
		ssl_protocols TLSv1.2 TLSv1.3;
		location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
	}
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
for _ in $(seq 100); do curl -fsk https://127.0.0.93:8443/ >/dev/null && break; sleep 0.2; done
curl -fsk https://127.0.0.93:8443/ >/dev/null || { echo "bench: nginx does not answer; $(cat "$work/nginx-error.log")" >&2; exit 1; }
NGINX_WORKER=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)

ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
# wrk_run conns url [header] -> "requests rps p50 p99"
wrk_run() {
	local c=$1 url=$2 hdr=()
	[ -n "${3:-}" ] && hdr=(-H "$3")
	taskset -c 1 wrk -t1 -c"$c" -d"$DURATION" --latency "${hdr[@]}" "$url" |
		awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print n, r, p50, p99}'
}
per() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'; }
taskset -c 1 wrk -t1 -c"$CONNS" -d2s https://127.0.0.91:8443/ >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d2s https://127.0.0.93:8443/ >/dev/null

rows=()
declare -A sum
for round in $(seq 1 "$ROUNDS"); do
	for mode in keepalive newconn; do
		extra=""
		[ "$mode" = newconn ] && extra="Connection: close"
		g0=$(ticks "$GW_PID") a0=$(ticks "$AGENT_PID")
		read -r n rps p50 p99 < <(wrk_run "$CONNS" https://127.0.0.91:8443/ "$extra")
		g1=$(ticks "$GW_PID") a1=$(ticks "$AGENT_PID")
		gcpu=$(per $((g1 - g0)) "$n") acpu=$(per $((a1 - a0)) "$n")
		rows+=("| gateway -> agent -> app, $mode #$round | $rps | $p50 | $p99 | $gcpu | $acpu |")
		sum[gw_$mode]=$(awk -v a="${sum[gw_$mode]:-0}" -v b="$gcpu" 'BEGIN{print a+b}')
		sum[gwr_$mode]=$(awk -v a="${sum[gwr_$mode]:-0}" -v b="$rps" 'BEGIN{print a+b}')
		n0=$(ticks "$NGINX_WORKER")
		read -r n rps p50 p99 < <(wrk_run "$CONNS" https://127.0.0.93:8443/ "$extra")
		n1=$(ticks "$NGINX_WORKER")
		ncpu=$(per $((n1 - n0)) "$n")
		rows+=("| nginx TLS -> app, $mode #$round | $rps | $p50 | $p99 | $ncpu | - |")
		sum[ng_$mode]=$(awk -v a="${sum[ng_$mode]:-0}" -v b="$ncpu" 'BEGIN{print a+b}')
		sum[ngr_$mode]=$(awk -v a="${sum[ngr_$mode]:-0}" -v b="$rps" 'BEGIN{print a+b}')
	done
done
echo "| run | req/s | p50 | p99 | edge CPU µs/req (gateway or nginx) | agent CPU µs/req |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "| measure (mean of $ROUNDS) | gateway | nginx | ratio (target <= 1.5) |"
echo "|---|---|---|---|"
for mode in keepalive newconn; do
	awk -v g="${sum[gw_$mode]}" -v n="${sum[ng_$mode]}" -v gr="${sum[gwr_$mode]}" -v nr="${sum[ngr_$mode]}" -v r="$ROUNDS" -v m="$mode" 'BEGIN {
		printf "| edge CPU per request, %s | %.1f µs | %.1f µs | %.2f |\n", m, g/r, n/r, (n > 0 ? g/n : 0)
		printf "| req/s, %s | %.0f | %.0f | %.2f |\n", m, gr/r, nr/r, (nr > 0 ? gr/nr : 0) }'
done
echo
echo "wrk -t1 -c$CONNS on CPU 1, $DURATION per run; servers on CPU 0 (GOMAXPROCS=1, nginx 1 worker); the mesh path has a second hop (the app's agent), nginx's none. Load: $(uptime | sed 's/.*load average/load average/')"
