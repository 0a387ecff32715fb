#!/bin/sh
# A package upgrade under steady load loses no request (as root; the last
# step of `make test-packaging`, or alone: `make test-packaging-upgrade`).
#
# Four "VMs" on loopback addresses, all traffic on 127.0.66.0/24:
#   127.0.66.1   a Debian root booted with systemd-nspawn on the host's
#                network, with an OLDER mesh package installed (built here
#                from the same tree, version 0.0.0~upgradetest):
#                orders-app.service (the app) and mesh-agent@orders.service;
#   127.0.66.2   on the host: the second orders app and its `mesh agent`;
#   127.0.66.3   on the host: a caller's `mesh agent` that discovers orders
#                in Consul, and load.py (the caller app) calling orders
#                through it;
#   127.0.66.4   the same, but the agent gets endpoints and policies over
#                xDS from `mesh control` (127.0.66.9): endpoint changes reach
#                it later (debounce, push), which the drain must cover;
#   127.0.66.10  a Consul dev agent on the host.
# Both callers retry on connect-failure, refused-stream, reset, unavailable.
# Under that load, `dpkg -i` of the package under test inside the booted
# root; its postinst restarts mesh-agent@orders. Asserted: no request
# failed; the old process logged shutdown, deregistration, drain and stop,
# in that order, and exited cleanly, before the new one started; the unit
# runs the new binary (/config_dump version, Consul's mesh_version meta);
# both instances serve afterwards.
# Usage: upgrade.sh [DEB]   (default: the one dist/mesh_*.deb)
# shellcheck disable=SC2016 # ${...} in single quotes are dpkg-query formats
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test/lib.sh
. "$here/lib.sh"
cd "$here/../.."
[ "$(id -u)" = 0 ] || fail "run as root: the test boots a Debian root with systemd-nspawn"
need systemd-container:systemd-nspawn curl:curl python3:python3

if [ $# -eq 0 ]; then
	set -- dist/mesh_*.deb
	if [ $# -ne 1 ] || [ ! -f "$1" ]; then fail "want exactly one dist/mesh_*.deb (make package), got: $*"; fi
fi
deb=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -f "$deb" ] || fail "no package $deb"
for f in bin/consul bin/nfpm; do
	[ -x "$f" ] || fail "$f is missing: make consul package"
done
start=$(date +%s)
tarball=$(packaging/test/rootfs.sh)
mkdir -p .cache/packaging
work=$(mktemp -d "$PWD/.cache/packaging/upgrade.XXXXXX")

C=127.0.66.10           # Consul
consul=http://$C:28500  # its HTTP API
vm1=127.0.66.1 vm2=127.0.66.2 vm3=127.0.66.3 vm4=127.0.66.4
cp=127.0.66.9 # mesh control
app_port=28080
inbound=25006 outbound=25001 admin=25000

nspawn='' init='' loads='' pids=''
cleanup() {
	# shellcheck disable=SC2086 # word splitting wanted
	for p in $loads; do kill "$p" 2>/dev/null || true; done
	# Power the root off (nspawn forwards SIGTERM as a shutdown: the agent
	# drains), stop the host agents the same way, then Consul and the apps.
	# shellcheck disable=SC2086
	for p in $nspawn $pids; do kill "$p" 2>/dev/null || true; done
	for _ in $(seq 150); do
		alive=
		# shellcheck disable=SC2086
		for p in $nspawn $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ -z "$alive" ] && break
		sleep 0.1
	done
	# shellcheck disable=SC2086
	for p in $nspawn $pids; do kill -KILL "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

# bg LOG CMD...: run CMD in the background, remember its PID for cleanup.
bg() {
	log=$1
	shift
	"$@" >"$log" 2>&1 </dev/null &
	pids="$pids $!"
}
# retry N CMD...: run CMD every 0.2s until it succeeds, at most N times.
retry() {
	n=$1
	shift
	i=0
	until "$@"; do
		i=$((i + 1))
		[ "$i" -lt "$n" ] || return 1
		sleep 0.2
	done
}
http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true; }
is_200() { [ "$(http_code "$1")" = 200 ]; }
# json URL EXPR: EXPR (Python, over the decoded body `j`) printed.
json() {
	curl -s -m 2 "$1" | python3 -c 'import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))' "$2" 2>/dev/null || true
}
passing() { json "$consul/v1/health/service/$1?passing" 'len(j)'; }
has_passing() { [ "$(passing "$1")" = "$2" ]; }
in_root() {
	r=$1
	shift
	chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"
}
in_boot() { nsenter -t "$init" -m -p -u -i -n env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }
# agent_yaml IP SERVICE NODE: an agent config for the "VM" at IP.
agent_yaml() {
	cat <<YAML
log: {level: info, format: json}
consul: {addr: "$C:28500"}
agent:
  service: $2
  node: $3
  app_address: $1
  app_port: $app_port
  app_health: /healthz
  health_interval: 2s
  inbound_addr: "$1:$inbound"
  outbound_addr: "$1:$outbound"
  admin_addr: "$1:$admin"
YAML
}
# app DIR NAME: the files a python3 http.server app serves: / says NAME.
app() {
	mkdir -p "$1"
	printf %s "$2" >"$1/index.html"
	printf ok >"$1/healthz"
}

# --- the older package ---------------------------------------------------------
# The same tree, its binary stamped with an older version, so that both the
# package and `mesh version` tell old from new (MESH_TEST_OLD_DEB: one
# built by the caller, slow.sh).
newv=$(dpkg-deb -f "$deb" Version)
if [ -n "${MESH_TEST_OLD_DEB:-}" ]; then
	olddeb=$MESH_TEST_OLD_DEB
else
	olddeb=$(old_deb "$deb" 0.0.0~upgradetest "$work/stage")
fi
oldv=$(dpkg-deb -f "$olddeb" Version)
oldv=${oldv%-*} # the binary's version: the package's without its release
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/mesh >"$work/mesh-new"
chmod +x "$work/mesh-new"
newbin=$("$work/mesh-new" version | cut -d' ' -f2)
[ "$newbin" != "$oldv" ] || fail "the package under test has the old binary's version"
ok "old package $(basename "$olddeb") built ($(($(date +%s) - start))s)"

# --- Consul and the host's "VMs" -------------------------------------------------
bg "$work/consul.log" bin/consul agent -dev -bind "$C" -client "$C" -node upgrade-test -data-dir "$work/consul" \
	-http-port 28500 -grpc-port 28502 -dns-port 28600 -serf-lan-port 28301 -serf-wan-port 28302 \
	-server-port 28300 -hcl 'check_update_interval = "0s"' -hcl 'ports { grpc_tls = 28503 }'
leader() { [ -n "$(json "$consul/v1/status/leader" 'j')" ]; }
retry 150 leader || { tail -n 20 "$work/consul.log"; fail "consul on $C: no leader"; }

app "$work/app2" orders-2
app "$work/app3" web
bg "$work/app2.log" python3 -m http.server "$app_port" --bind "$vm2" --directory "$work/app2"
bg "$work/app3.log" python3 -m http.server "$app_port" --bind "$vm3" --directory "$work/app3"
agent_yaml "$vm2" orders vm2 >"$work/orders-2.yaml"
echo "  cache_dir: $work/cache2" >>"$work/orders-2.yaml"
policies='policies:
  default:
    retries:
      attempts: 2
      retry_on: [connect-failure, refused-stream, reset, unavailable]'
{
	agent_yaml "$vm3" web vm3
	echo "  cache_dir: $work/cache3"
	echo "$policies"
} >"$work/web.yaml"
{
	agent_yaml "$vm4" web vm4
	echo "  cache_dir: $work/cache4"
	echo "  control_plane: [\"$cp:28000\"]"
} >"$work/web-xds.yaml"
cat >"$work/control.yaml" <<YAML
log: {level: info, format: json}
consul: {addr: "$C:28500"}
control: {xds_addr: "$cp:28000", admin_addr: "$cp:29000"}
$policies
YAML
"$work/mesh-new" config validate --role control "$work/control.yaml" >/dev/null || fail "control.yaml does not validate"
bg "$work/control.log" "$work/mesh-new" control --config "$work/control.yaml"
retry 150 is_200 "http://$cp:29000/ready" || { tail -n 20 "$work/control.log"; fail "mesh control: /ready is not 200"; }
mkdir -p "$work/cache2" "$work/cache3" "$work/cache4"
for f in orders-2 web web-xds; do
	"$work/mesh-new" config validate --role agent "$work/$f.yaml" >/dev/null || fail "$f.yaml does not validate"
	bg "$work/$f.agent.log" "$work/mesh-new" agent --config "$work/$f.yaml"
done

# --- VM1: the booted root with the old package --------------------------------
root=$work/vm1
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
cp "$olddeb" "$root/root/mesh-old.deb"
cp "$deb" "$root/root/mesh-new.deb"
in_root "$root" dpkg -i /root/mesh-old.deb >"$work/dpkg-old.log" 2>&1 || { cat "$work/dpkg-old.log"; fail "dpkg -i the old package"; }
app "$root/srv/orders" orders-1
cat >"$root/etc/systemd/system/orders-app.service" <<UNIT
[Unit]
Description=orders app (test)
Before=mesh-agent@orders.service
[Service]
ExecStart=/usr/bin/python3 -m http.server $app_port --bind $vm1 --directory /srv/orders
[Install]
WantedBy=multi-user.target
UNIT
agent_yaml "$vm1" orders vm1 >"$root/etc/mesh/agent-orders.yaml"
in_root "$root" chown root:mesh /etc/mesh/agent-orders.yaml
chmod 0640 "$root/etc/mesh/agent-orders.yaml"
in_root "$root" mesh config validate --role agent /etc/mesh/agent-orders.yaml >/dev/null || fail "agent-orders.yaml"
# No control plane on this VM; it would take ports on the host's network.
in_root "$root" systemctl disable mesh-control.service >/dev/null 2>&1
in_root "$root" systemctl enable orders-app.service mesh-agent@orders.service >/dev/null 2>&1
systemd-nspawn -q -D "$root" --boot --register=no --keep-unit >"$work/nspawn.log" 2>&1 </dev/null &
nspawn=$!
for _ in $(seq 100); do
	init=$(pgrep -P "$nspawn" -x systemd || true)
	[ -n "$init" ] && break
	sleep 0.1
done
[ -n "$init" ] || { cat "$work/nspawn.log"; fail "systemd did not boot in the root"; }
agent_log() { in_boot journalctl -u mesh-agent@orders.service -o cat --no-pager; }
retry 150 is_200 "http://$vm1:$admin/ready" || { agent_log | tail -n 20; fail "mesh-agent@orders in the root: /ready is not 200"; }
got=$(json "http://$vm1:$admin/config_dump" 'j["version"]')
[ "$got" = "$oldv" ] || fail "mesh-agent@orders runs version '$got' before the upgrade, want $oldv"
for f in orders-2 web web-xds; do
	retry 150 is_200 "http://$(sed -n 's/^  admin_addr: "\(.*\)"$/\1/p' "$work/$f.yaml")/ready" ||
		{ tail -n 20 "$work/$f.agent.log"; fail "host agent $f: /ready is not 200"; }
done
retry 150 has_passing orders 2 || fail "orders: $(passing orders) passing instances in Consul, want 2"
ok "booted: mesh-agent@orders $oldv in the root ($vm1), orders on the host ($vm2), callers on $vm3 and $vm4 (xDS) ($(($(date +%s) - start))s)"

# --- the upgrade under load --------------------------------------------------------
# One caller app per caller agent: Consul-direct (direct) and xDS (xds).
callers="direct xds"
for c in $callers; do
	if [ "$c" = xds ]; then ip=$vm4; else ip=$vm3; fi
	: >"$work/load-$c.log"
	python3 packaging/test/load.py --url "http://$ip:$outbound/" --host orders --stop-file "$work/stop" \
		--max-seconds 150 >>"$work/load-$c.log" 2>"$work/load-$c.err" &
	loads="$loads $!"
done
lines() { wc -l <"$work/load-$1.log"; }
# served_since CALLER LINE NAME: a request of CALLER after line LINE of its
# load log was answered by NAME.
served_since() { tail -n +"$(($2 + 1))" "$work/load-$1.log" | grep -qx "ok $3"; }
# both_since LINES: every caller reached both instances after its line in
# LINES ("direct=N xds=M").
both_since() {
	for cl in $1; do
		served_since "${cl%%=*}" "${cl#*=}" orders-1 && served_since "${cl%%=*}" "${cl#*=}" orders-2 || return 1
	done
}
marks() { for c in $callers; do printf '%s=%s ' "$c" "$(lines "$c")"; done; }
retry 100 both_since "direct=0 xds=0" || { tail -n 3 "$work"/load-*.log; fail "under load before the upgrade: not both instances answer each caller"; }

oldpid=$(in_boot systemctl show -P MainPID mesh-agent@orders.service)
l0=$(marks)
t0=$(date +%s%N)
in_boot dpkg -i /root/mesh-new.deb >"$work/dpkg-new.log" 2>&1 || { cat "$work/dpkg-new.log"; fail "dpkg -i the new package in the booted root"; }
t1=$(date +%s%N)
during=
for c in $callers; do
	n=$(($(lines "$c") - $(echo "$l0" | tr ' ' '\n' | sed -n "s/^$c=//p")))
	[ "$n" -ge 20 ] || fail "only $n requests of caller $c during the upgrade: the load did not cover it"
	during="$during $c $n,"
done
ok "dpkg -i $(basename "$deb") in the booted root under load: $(((t1 - t0) / 1000000)) ms; requests meanwhile:${during%,}"

[ "$(in_boot dpkg-query -W -f='${Version}' mesh)" = "$newv" ] || fail "mesh $newv is not installed after the upgrade"
prop() { in_boot systemctl show -P "$1" mesh-agent@orders.service; }
newpid=$(prop MainPID)
[ "$(prop ActiveState)" = active ] || fail "mesh-agent@orders is '$(prop ActiveState)' after the upgrade"
if [ "$newpid" = "$oldpid" ] || [ "$newpid" = 0 ]; then
	fail "postinst did not restart mesh-agent@orders (main PID $oldpid, now $newpid)"
fi
[ "$(prop NRestarts)" = 0 ] || fail "mesh-agent@orders was restarted by systemd after a failure"
# The old process: SIGTERM, deregistered, drained, stopped, exited cleanly.
in_boot journalctl _PID="$oldpid" -o cat --no-pager >"$work/old.log"
want="shutting down: deregistering, then draining|deregistered from consul|draining: still serving|\"stopped\""
echo "$want" | tr '|' '\n' | while read -r m; do
	grep -nF -- "$m" "$work/old.log" | head -n1 | cut -d: -f1
done >"$work/order"
if [ "$(wc -l <"$work/order")" != 4 ] || ! sort -nc "$work/order" 2>/dev/null; then
	cat "$work/old.log"
	fail "old mesh-agent@orders (pid $oldpid) did not log shutdown, deregister, drain, stop in order"
fi
agent_log >"$work/unit.log"
grep -q 'mesh-agent@orders.service: Deactivated successfully' "$work/unit.log" ||
	{ tail -n 20 "$work/unit.log"; fail "old mesh-agent@orders did not exit cleanly"; }
if grep -qE 'timed out|Killing|Failed with result' "$work/unit.log"; then
	tail -n 20 "$work/unit.log"
	fail "mesh-agent@orders stop was not clean"
fi
ok "postinst restart: pid $oldpid deregistered, drained, stopped and exited 0; pid $newpid started"

got=$(json "http://$vm1:$admin/config_dump" 'j["version"]')
[ "$got" = "$newbin" ] || fail "mesh-agent@orders runs version '$got' after the upgrade, want $newbin"
# The wait of the rolling upgrade in docs/operations.md: the host's Consul
# agent answers 200 once every orders instance it holds passes its check
# (here both instances are registered with the one Consul agent).
local_passing() { [ "$(http_code "$consul/v1/agent/health/service/name/orders")" = 200 ]; }
retry 150 local_passing || fail "orders: the Consul agent does not report it passing after the upgrade"
t2=$(date +%s%N)
has_passing orders 2 || fail "orders: $(passing orders) passing instances in Consul after the upgrade, want 2"
ok "orders on $vm1 passing again $(((t2 - t1) / 1000000)) ms after dpkg returned"
got=$(json "$consul/v1/catalog/service/orders" "[s['ServiceMeta']['mesh_version'] for s in j if s['ServiceAddress'] == '$vm1']")
[ "$got" = "['$newbin']" ] || fail "Consul's mesh_version of the $vm1 instance: $got, want $newbin"
retry 100 both_since "$(marks)" || { tail -n 3 "$work"/load-*.log; fail "after the upgrade: not both instances answer each caller"; }
sleep 1
touch "$work/stop"
# shellcheck disable=SC2086
for p in $loads; do wait "$p" || true; done
loads=''
summary=
bad=
for c in $callers; do
	log=$work/load-$c.log
	total=$(wc -l <"$log")
	failed=$(grep -c '^fail' "$log" || true)
	if [ "$failed" != 0 ]; then
		echo "caller $c: $failed of $total requests failed:"
		grep '^fail' "$log" | sort | uniq -c | sort -rn | head -n 10
		bad=1
	fi
	summary="$summary $c: $total ($(grep -cx 'ok orders-1' "$log" || true) by orders-1, $(grep -cx 'ok orders-2' "$log" || true) by orders-2),"
done
[ -z "$bad" ] || fail "requests failed during the package upgrade"
ok "mesh-agent@orders runs $newbin; both instances serve; requests, none failed:${summary%,}"
echo "package upgrade under load: passed in $(($(date +%s) - start))s"
