#!/usr/bin/env bash
# CPU cost per request per hop and req/s of the two-hop HTTP/1.1 path
# with mTLS between the agents against the same path in plain text, in
# one run, the two alternated (method of bench/cpu.sh: utime+stime of the
# four agents from /proc/<pid>/stat before and after each wrk run,
# divided by the requests served). Two pairs of agents run side by side:
# plain (A 127.0.0.91 -> B 127.0.0.92) and mTLS strict (A 127.0.0.93 -> B
# 127.0.0.94, identities from files made with openssl); each B fronts
# its own upstream app. Also counts the mTLS handshakes during the runs
# (keep-alive: near zero).
#   bench/mtls.sh                      # 10s per run, 3 alternations
#   DURATION=5s ROUNDS=4 bench/mtls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
for tool in wrk taskset openssl curl; do
	command -v "$tool" >/dev/null || { echo "bench: $tool missing" >&2; exit 1; }
done
[ -x bin/mesh ] && [ -x bin/consul ] || { echo "bench: run 'make build consul' first" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

work=$(mktemp -d /tmp/mesh-mtls.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
	wait 2>/dev/null || true
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# A root and one SVID per mTLS agent (spiffe://mesh.local/ns/default/svc/NAME).
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key" 2>/dev/null
openssl req -x509 -new -key "$work/ca.key" -subj "/CN=bench root" -days 2 -out "$work/ca.pem" \
	-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
svid() { # name
	local n=$1
	mkdir -p "$work/$n-tls"
	openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$work/$n-tls/key.pem"
	openssl req -new -key "$work/$n-tls/key.pem" -subj "/CN=$n" -out "$work/$n.csr" 2>/dev/null
	printf 'subjectAltName=URI:spiffe://mesh.local/ns/default/svc/%s\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$n" >"$work/$n.ext"
	openssl x509 -req -in "$work/$n.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
		-extfile "$work/$n.ext" -out "$work/$n-tls/cert.pem" 2>/dev/null
	cp "$work/ca.pem" "$work/$n-tls/bundle.pem"
	cat >"$work/$n.yaml" <<YAML
agent:
  tls:
    cert_file: $work/$n-tls/cert.pem
    key_file: $work/$n-tls/key.pem
    bundle_file: $work/$n-tls/bundle.pem
control:
  mtls:
    default_mode: strict
YAML
}
svid mt-a
svid mt-b
printf 'log:\n  level: warn\n' >"$work/plain.yaml"

go build -o "$work/upstream" ./bench/upstream
bg() { "$@" >"$work/$(basename "$1")-$$-$RANDOM.log" 2>&1 & pids+=($!); }

CP=18530
bg bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port $CP -grpc-port 18532 -dns-port 18630 \
	-serf-lan-port 18331 -serf-wan-port 18332 -server-port 18330 -data-dir "$work/consul"
until curl -fs "http://127.0.0.1:$CP/v1/status/leader" | grep -q 127; do sleep 0.2; done

GOMAXPROCS=1 bg taskset -c 0 "$work/upstream" -addr 127.0.0.92:8080
GOMAXPROCS=1 bg taskset -c 0 "$work/upstream" -addr 127.0.0.94:8080
agent() { # config ip service app-port extra...
	local cfg=$1 ip=$2 svc=$3 port=$4; shift 4
	GOMAXPROCS=1 bg taskset -c 0 bin/mesh agent --config "$cfg" --service "$svc" --app-address "$ip" --app-port "$port" \
		--inbound-addr "$ip:15006" --outbound-addr "$ip:15001" --admin-addr "$ip:15000" --advertise-addr "$ip" \
		--node "mtls-$svc" --consul-addr "127.0.0.1:$CP" --cache-dir "$work/$svc" --drain-period 0s --log-level warn "$@"
	echo $!
}
PB=$(agent "$work/plain.yaml" 127.0.0.92 pl-b 8080)
PA=$(agent "$work/plain.yaml" 127.0.0.91 pl-a 9)
MB=$(agent "$work/mt-b.yaml" 127.0.0.94 mt-b 8080)
MA=$(agent "$work/mt-a.yaml" 127.0.0.93 mt-a 9)
pids+=("$PA" "$PB" "$MA" "$MB")
for ip in 127.0.0.91 127.0.0.92 127.0.0.93 127.0.0.94; do
	until curl -fs "http://$ip:15000/ready" >/dev/null; do sleep 0.2; done
done
for s in pl-b mt-b; do
	until [ "$(curl -fs "http://127.0.0.1:$CP/v1/health/service/$s?passing" | grep -o '"ServiceID"' | wc -l)" -ge 1 ]; do sleep 0.2; done
done
# The mTLS pair really is mTLS: a plaintext client is refused by mt-b.
if curl -fs -m 2 -H "Host: mt-b" http://127.0.0.94:15006/ >/dev/null 2>&1; then
	echo "bench: mt-b served a plaintext client: not in strict mode" >&2; exit 1
fi

ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
wrk_run() { # url host -> "requests rps p50 p99"
	local out
	out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Host: $2" "$1")
	awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /Non-2xx/ {bad=$4} END {print n, r, p50, p99}' <<<"$out"
	if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "bench: errors in a run: $out" >&2; exit 1; fi
}
handshakes() { curl -fs "http://$1:15000/metrics" | awk '/^mesh_tls_handshakes_total\{.*result="ok"/ {s += $2} END {print s + 0}'; }

taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H "Host: pl-b" http://127.0.0.91:15001/ >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H "Host: mt-b" http://127.0.0.93:15001/ >/dev/null

rows=() plain_cpu=() mtls_cpu=() plain_rps=() mtls_rps=()
hs0=$(handshakes 127.0.0.94) mreq=0
[ "$hs0" -gt 0 ] || { echo "bench: no mTLS handshake at mt-b after the warm-up: the hop is not mTLS" >&2; exit 1; }
for round in $(seq 1 "$ROUNDS"); do
	for kind in plain mtls; do
		if [ $kind = plain ]; then a=$PA b=$PB url=http://127.0.0.91:15001/ host=pl-b; else a=$MA b=$MB url=http://127.0.0.93:15001/ host=mt-b; fi
		t0=$(ticks "$a" "$b")
		read -r n rps p50 p99 < <(wrk_run "$url" "$host")
		t1=$(ticks "$a" "$b")
		cpu=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz * 1e6 / n / 2 }')
		if [ $kind = plain ]; then plain_cpu+=("$cpu") plain_rps+=("$rps"); else mtls_cpu+=("$cpu") mtls_rps+=("$rps") mreq=$((mreq + n)); fi
		rows+=("| $kind 2 hops #$round | $CONNS | $rps | $p50 | $p99 | $cpu |")
	done
done
hs1=$(handshakes 127.0.0.94)

avg() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.1f", s / NR }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "-" }'; }
pc=$(avg "${plain_cpu[@]}") mc=$(avg "${mtls_cpu[@]}") pr=$(avg "${plain_rps[@]}") mr=$(avg "${mtls_rps[@]}")
echo "| run | conns | req/s | p50 | p99 | CPU µs per request per hop |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "| measure | plain | mTLS | mTLS / plain (target) |"
echo "|---|---|---|---|"
echo "| CPU per request per hop (mean of $ROUNDS) | $pc µs | $mc µs | $(ratio "$mc" "$pc") (<= 1.15) |"
echo "| two-hop req/s, $CONNS conns (mean of $ROUNDS) | $pr | $mr | $(ratio "$mr" "$pr") |"
echo "| mTLS handshakes at B during the runs | | $((hs1 - hs0)) for $mreq requests | |"
echo
echo "wrk -t1 on CPU 1, $DURATION per run, alternated; the four agents on CPU 0 with GOMAXPROCS=1; 100-byte responses; default observability. Load: $(uptime | sed 's/.*load average/load average/')"
