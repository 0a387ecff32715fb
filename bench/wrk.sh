#!/usr/bin/env bash
# wrk benchmark of the mesh data path against direct and nginx, in one run.
# Every server is pinned to CPU 0 (GOMAXPROCS=1, nginx one worker), wrk to
# CPU 1. Prints a markdown table for docs/benchmarks.md.
#   bench/wrk.sh            # 10s per case
#   DURATION=20s bench/wrk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
for tool in wrk nginx taskset; do
	command -v "$tool" >/dev/null || { echo "bench: $tool missing (apt-get install -y wrk nginx util-linux)" >&2; exit 1; }
done
[ -x bin/mesh ] && [ -x bin/consul ] || { echo "bench: run 'make build consul' first" >&2; exit 1; }

work=$(mktemp -d /tmp/mesh-bench.XXXXXX)
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

# Consul on its own ports, for registration and discovery.
CP=18500
bg bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $CP -grpc-port 18502 -dns-port 18600 \
	-serf-lan-port 18301 -serf-wan-port 18302 -server-port 18300 -data-dir "$work/consul"
until curl -fs "http://127.0.0.1:$CP/v1/status/leader" | grep -q 127; do sleep 0.2; done

# The upstream app on "VM B" (127.0.0.52), pinned like every server.
GOMAXPROCS=1 bg taskset -c 0 "$work/upstream" -addr 127.0.0.52:8080

agent() { # ip service app-port extra...
	local ip=$1 svc=$2 port=$3; shift 3
	GOMAXPROCS=1 bg taskset -c 0 bin/mesh agent --service "$svc" --app-address "$ip" --app-port "$port" \
		--inbound-addr "$ip:15006" --outbound-addr "$ip:15001" --admin-addr "$ip:15000" --advertise-addr "$ip" \
		--node "bench-$svc" --consul-addr "127.0.0.1:$CP" --cache-dir "$work/$svc" --drain-period 0s --log-level warn "$@"
	echo $!
}
B_PID=$(agent 127.0.0.52 bench-b 8080)
A_PID=$(agent 127.0.0.51 bench-a 9 --upstream bench-b=127.0.0.51:9191)
pids+=("$A_PID" "$B_PID")

# Two more pairs for observability on versus off, same app: "min" has no
# access log and no tracing (metrics are always on); "on" logs every
# request to a file and traces 1% of requests over OTLP/gRPC to a
# collector that is not there (spans are built, queued and dropped).
cat >"$work/obs-min.yaml" <<YAML
observability:
  access_log: {enabled: false}
  tracing: {exporter: none}
YAML
cat >"$work/obs-on.yaml" <<YAML
observability:
  access_log: {enabled: true, output: $work/access.log}
  tracing: {exporter: otlp-grpc, endpoint: 127.0.0.1:14317, sample_ratio: 0.01, propagators: [${OBS_PROPAGATORS:-w3c}]}
YAML
BMIN=$(agent 127.0.0.62 bench-b-min 8080 --app-address 127.0.0.52 --config "$work/obs-min.yaml")
AMIN=$(agent 127.0.0.61 bench-a-min 9 --config "$work/obs-min.yaml")
BON=$(agent 127.0.0.72 bench-b-on 8080 --app-address 127.0.0.52 --config "$work/obs-on.yaml")
AON=$(agent 127.0.0.71 bench-a-on 9 --config "$work/obs-on.yaml")
pids+=("$BMIN" "$AMIN" "$BON" "$AON")
for ip in 127.0.0.51 127.0.0.52 127.0.0.61 127.0.0.62 127.0.0.71 127.0.0.72; do
	until curl -fs "http://$ip:15000/ready" >/dev/null; do sleep 0.2; done
done
for svc in bench-b bench-b-min bench-b-on; do
	until [ "$(curl -fs "http://127.0.0.1:$CP/v1/health/service/$svc?passing" | grep -o '"ServiceID"' | wc -l)" -ge 1 ]; do sleep 0.2; done
done

# nginx, one worker on CPU 0, upstream keepalive: hop 1 on :8081 -> app, hop 2 on :8082 -> :8081.
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
	access_log off;
	upstream app { server 127.0.0.52:8080; keepalive 256; }
	upstream hop1 { server 127.0.0.53:8081; keepalive 256; }
	server { listen 127.0.0.53:8081; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
	server { listen 127.0.0.53:8082; location / { proxy_pass http://hop1; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
until curl -fs http://127.0.0.53:8082/ >/dev/null; do sleep 0.2; done

run() { # name conns url [host]
	local name=$1 c=$2 url=$3 host=${4:-}
	local hdr=()
	[ -n "$host" ] && hdr=(-H "Host: $host")
	curl -fs "${hdr[@]}" "$url" >/dev/null || { echo "bench: $name: $url does not answer" >&2; exit 1; }
	taskset -c 1 wrk -t1 -c"$c" -d2s "${hdr[@]}" "$url" >/dev/null # warm-up
	local out
	out=$(taskset -c 1 wrk -t1 -c"$c" -d"$DURATION" --latency "${hdr[@]}" "$url")
	local rps p50 p99
	rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
	p50=$(awk '$1=="50%" {print $2}' <<<"$out")
	p99=$(awk '$1=="99%" {print $2}' <<<"$out")
	printf '%s|%s|%s|%s|%s\n' "$name" "$c" "$rps" "$p50" "$p99"
}

results=()
# OBS_ONLY=1 runs only the observability rows.
conns_list="32 1"
[ -n "${OBS_ONLY:-}" ] && conns_list=""
for c in $conns_list; do
	results+=("$(run direct "$c" http://127.0.0.52:8080/)")
	results+=("$(run "nginx 1 hop" "$c" http://127.0.0.53:8081/)")
	results+=("$(run "nginx 2 hops" "$c" http://127.0.0.53:8082/)")
	results+=("$(run "mesh 1 hop (inbound)" "$c" http://127.0.0.52:15006/)")
	results+=("$(run "mesh 2 hops (outbound, Host)" "$c" http://127.0.0.51:15001/ bench-b)")
	results+=("$(run "mesh 2 hops (upstream listener)" "$c" http://127.0.0.51:9191/)")
done
# Observability on versus off, alternated twice to even out drift.
for round in 1 2; do
	results+=("$(run "obs min, 2 hops #$round" 32 http://127.0.0.61:15001/ bench-b-min)")
	results+=("$(run "obs on (log + 1% traces), 2 hops #$round" 32 http://127.0.0.71:15001/ bench-b-on)")
done
rss() { awk '/VmHWM/ {printf "%.1f MB", $2/1024}' "/proc/$1/status"; }

rps_of() {
	local r n c v
	for r in "${results[@]}"; do
		IFS='|' read -r n c v _ <<<"$r"
		if [ "$n" = "$1" ] && [ "$c" = "$2" ]; then echo "$v"; fi
	done
	return 0
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "-" }'; }

echo "| path | conns | req/s | p50 | p99 | vs direct | vs nginx same hops (obs rows: vs obs min) |"
echo "|---|---|---|---|---|---|---|"
for r in "${results[@]}"; do
	IFS='|' read -r name c v p50 p99 <<<"$r"
	ref=""
	case "$name" in
		"obs on"*) ref=$(rps_of "obs min, 2 hops #${name##*#}" "$c") ;;
		"obs min"*) ref=$v ;;
		"mesh 1 hop"*) ref=$(rps_of "nginx 1 hop" "$c") ;;
		"mesh 2 hops"*) ref=$(rps_of "nginx 2 hops" "$c") ;;
		"nginx"*|direct) ref=$v ;;
	esac
	echo "| $name | $c | $v | $p50 | $p99 | $(ratio "$v" "$(rps_of direct "$c")") | $(ratio "$v" "$ref") |"
done
echo
echo "Peak RSS (VmHWM): agent A (outbound) $(rss "$A_PID"), agent B (inbound) $(rss "$B_PID")"
echo "wrk -t1 on CPU 1, $DURATION per case; servers on CPU 0 with GOMAXPROCS=1; nginx 1 worker; 100-byte responses."
