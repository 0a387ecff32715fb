#!/bin/sh
# mesh-redirect@ under a real systemd (as root; ~1 minute once the Debian
# root of rootfs.sh is cached), run by `make test-packaging-redirect`: the
# freshly built binary and the repository's units in that root, a Consul dev
# agent and mesh-agent@demo with agent.interception enabled, booted with
# systemd-nspawn (private network). The rules are read with the host's nft in
# the container's network namespace. Checked, as docs/operations.md says:
#   - starting mesh-agent@demo pulls in mesh-redirect@demo, which installs
#     table inet mesh before the agent starts;
#   - the agent killed (SIGKILL): the rules stay, unchanged; systemd restarts
#     the agent, which is ready again;
#   - systemctl stop mesh-agent@demo: mesh-redirect@demo stops too and the
#     table is gone (the ruleset is empty again, as before the first start);
#   - systemctl start, and restart: the table is back.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test/lib.sh
. "$here/lib.sh"
cd "$here/../.."
[ "$(id -u)" = 0 ] || fail "run as root: the test uses chroot and systemd-nspawn"
need systemd-container:systemd-nspawn nftables:nft
[ -x bin/consul ] || fail "bin/consul is missing: make consul"
GO=${GO:-go}

tarball=$(packaging/test/rootfs.sh)
mkdir -p .cache/packaging
work=$(mktemp -d "$PWD/.cache/packaging/redirect.XXXXXX")
nspawn=
cleanup() {
	if [ -n "$nspawn" ]; then
		kill "$nspawn" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$nspawn" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$nspawn" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

r=$work/root
mkdir -p "$r"
tar -C "$r" -xf "$tarball"
in_root() { chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }
CGO_ENABLED=0 "$GO" build -trimpath -o "$r/usr/bin/mesh" . || fail "go build"
cp systemd/mesh-agent@.service systemd/mesh-redirect@.service "$r/etc/systemd/system/"
cp bin/consul "$r/usr/local/bin/consul"
cat >"$r/etc/systemd/system/consul.service" <<'UNIT'
[Unit]
Description=Consul dev agent (test)
[Service]
ExecStart=/usr/local/bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1
[Install]
WantedBy=multi-user.target
UNIT
in_root groupadd --system mesh
in_root useradd --system --gid mesh --home-dir /var/lib/mesh --no-create-home --shell /usr/sbin/nologin mesh
mkdir -p "$r/etc/mesh"
cat >"$r/etc/mesh/agent-demo.yaml" <<'YAML'
consul: {addr: 127.0.0.1:8500}
agent:
  service: demo
  app_port: 8080
  interception: {enabled: true}
YAML
in_root chown root:mesh /etc/mesh/agent-demo.yaml
chmod 0640 "$r/etc/mesh/agent-demo.yaml"
in_root mesh config validate --role agent /etc/mesh/agent-demo.yaml >/dev/null || fail "agent-demo.yaml"
in_root systemctl enable consul.service mesh-agent@demo.service >/dev/null 2>&1

systemd-nspawn -q -D "$r" --boot --register=no --keep-unit --private-network \
	>"$work/nspawn.log" 2>&1 </dev/null &
nspawn=$!
init=
for _ in $(seq 100); do
	init=$(pgrep -P "$nspawn" -x systemd || true)
	[ -n "$init" ] && break
	sleep 0.1
done
[ -n "$init" ] || { cat "$work/nspawn.log"; fail "systemd did not boot in the root"; }
in_boot() { nsenter -t "$init" -m -p -u -i -n env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }
# The host's nft, in the container's network namespace only.
rules() { nsenter -t "$init" -n nft list ruleset; }
show() { in_boot systemctl show -P "$1" "$2"; }
ready() {
	for _ in $(seq 200); do
		code=$(in_boot python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:15000/ready", timeout=2).status)' 2>/dev/null || true)
		[ "$code" = 200 ] && return 0
		sleep 0.3
	done
	in_boot journalctl -u mesh-agent@demo.service -u mesh-redirect@demo.service -o cat --no-pager | tail -n 30
	fail "mesh-agent@demo: /ready is not 200 ($1)"
}
ready "after boot"
[ "$(show ActiveState mesh-redirect@demo.service)" = active ] ||
	{ in_boot journalctl -u mesh-redirect@demo.service -o cat --no-pager | tail; fail "mesh-redirect@demo is not active"; }
installed=$(rules)
echo "$installed" | grep -q 'redirect to :15002' || fail "table inet mesh not installed: $installed"
# Before the agent: the oneshot finished before the agent's process started.
done_at=$(show ExecMainExitTimestampMonotonic mesh-redirect@demo.service)
agent_at=$(show ExecMainStartTimestampMonotonic mesh-agent@demo.service)
[ "$done_at" -le "$agent_at" ] || fail "mesh-redirect@demo finished at $done_at, after the agent started at $agent_at"
ok "start: mesh-redirect@demo installed table inet mesh before mesh-agent@demo started"

pid=$(show MainPID mesh-agent@demo.service)
in_boot kill -KILL "$pid"
[ "$(rules)" = "$installed" ] || fail "the rules changed when the agent was killed: $(rules)"
for _ in $(seq 100); do
	new=$(show MainPID mesh-agent@demo.service)
	[ "$new" != 0 ] && [ "$new" != "$pid" ] && break
	sleep 0.2
done
if [ "$new" = 0 ] || [ "$new" = "$pid" ]; then fail "mesh-agent@demo was not restarted after SIGKILL"; fi
[ "$(show NRestarts mesh-agent@demo.service)" = 1 ] || fail "NRestarts $(show NRestarts mesh-agent@demo.service), want 1"
ready "after the restart"
[ "$(rules)" = "$installed" ] || fail "the rules changed across the agent's restart: $(rules)"
[ "$(show ActiveState mesh-redirect@demo.service)" = active ] || fail "mesh-redirect@demo not active after the crash"
ok "agent killed: the rules stayed as they were, systemd restarted the agent, ready again"

in_boot systemctl stop mesh-agent@demo.service
# PartOf= queues the companion's stop in the same transaction; systemctl
# waits for the agent's job only.
for _ in $(seq 150); do
	[ "$(show ActiveState mesh-redirect@demo.service)" = inactive ] && break
	sleep 0.2
done
[ "$(show ActiveState mesh-redirect@demo.service)" = inactive ] ||
	fail "mesh-redirect@demo is $(show ActiveState mesh-redirect@demo.service) after stopping the agent"
[ -z "$(rules)" ] || fail "rules left after systemctl stop: $(rules)"
ok "systemctl stop mesh-agent@demo: mesh-redirect@demo stopped, the ruleset is empty again"

in_boot systemctl start mesh-agent@demo.service
ready "after start"
[ "$(rules)" = "$installed" ] || fail "after start: $(rules)"
in_boot systemctl restart mesh-agent@demo.service
ready "after restart"
[ "$(rules)" = "$installed" ] || fail "after restart: $(rules)"
ok "systemctl start and restart: the same table is back"
echo "mesh-redirect@ under systemd: all passed"
