#!/bin/sh
# A rolling upgrade with the Ansible role stops at the first host that
# does not come back (as root; a step of `make test-packaging`, or alone:
# `make test-packaging-rolling`).
#
# Three "VMs" h1, h2, h3: Debian roots booted with systemd-nspawn on the
# host's network, each on its own address (127.0.67.1-3) with its own
# Consul dev agent (the VM's local Consul agent), the app `web`
# (web-app.service, python3 http.server on 28080 and 28081) and the OLD mesh
# package, whose shipped mesh.yaml differs from the new one, with
# /etc/mesh/mesh.yaml edited by the admin. h1 is also the control plane.
# The injected failure: h2's app answers 404 on /healthz, so its agent
# never passes its Consul check.
#   1. site.yml with the new package (serial 1, waits after each host):
#      h1 is upgraded (control plane, then agent), configured, passing; h2
#      is upgraded, the wait fails, the play stops; h3 is never touched
#      (old package, no agent config, no agent running). The edited
#      mesh.yaml is kept with the new one beside it as .dpkg-dist
#      (force-confold, no conffile prompt); mesh-control runs on h1 only.
#   2. site.yml --limit h1 with app_port 28080 -> 28081 and a changed
#      policy: `mesh config diff` makes the handlers restart mesh-agent@web
#      (new PID) and reload mesh-control (same PID, "config reloaded").
#   3. h2's app fixed, site.yml again: the rollout goes on through h2 and h3.
# The output of run 1 is kept in MESH_TEST_ROLLING_LOG if set.
# Usage: rolling.sh DEB OLD_DEB
# shellcheck disable=SC2016 # ${...} in single quotes are dpkg-query formats
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test/lib.sh
. "$here/lib.sh"
cd "$here/../.."
[ "$(id -u)" = 0 ] || fail "run as root: the test boots Debian roots with systemd-nspawn"
need systemd-container:systemd-nspawn ansible:ansible-playbook curl:curl
[ $# -eq 2 ] || fail "usage: rolling.sh DEB OLD_DEB"
deb=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
olddeb=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
consul_bin=$(readlink -f bin/consul)
[ -x "$consul_bin" ] || fail "bin/consul is missing: make consul"
start=$(date +%s)
newv=$(dpkg-deb -f "$deb" Version)
oldv=$(dpkg-deb -f "$olddeb" Version)
tarball=$(packaging/test/rootfs.sh)
mkdir -p .cache/packaging
work=$(mktemp -d "$PWD/.cache/packaging/rolling.XXXXXX")
hosts="h1 h2 h3"
ip() { echo "127.0.67.${1#h}"; }

nspawns=''
cleanup() {
	# shellcheck disable=SC2086 # word splitting wanted
	for p in $nspawns; do kill "$p" 2>/dev/null || true; done
	for _ in $(seq 150); do
		alive=
		# shellcheck disable=SC2086
		for p in $nspawns; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ -z "$alive" ] && break
		sleep 0.1
	done
	# shellcheck disable=SC2086
	for p in $nspawns; do kill -KILL "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

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
in_root() {
	r=$1
	shift
	chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"
}
# on HOST CMD...: run CMD in the booted machine HOST.
on() {
	h=$1
	shift
	nsenter -t "$(cat "$work/$h.pid")" -m -p -u -i -n env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"
}
prop() { on "$1" systemctl show -P "$3" "$2"; }
version_on() { on "$1" dpkg-query -W -f='${Version}' mesh; }
leader() { [ -n "$(curl -s -m 2 "http://$(ip "$1"):8500/v1/status/leader" | tr -d '"')" ]; }

# --- the VMs ---------------------------------------------------------------
for h in $hosts; do
	r=$work/$h
	a=$(ip "$h")
	mkdir -p "$r"
	tar -C "$r" -xf "$tarball"
	echo "$h" >"$r/etc/hostname"
	cp "$olddeb" "$r/root/mesh-old.deb"
	in_root "$r" dpkg -i /root/mesh-old.deb >"$work/$h-dpkg.log" 2>&1 || { cat "$work/$h-dpkg.log"; fail "$h: dpkg -i the old package"; }
	echo "# edited by the admin" >>"$r/etc/mesh/mesh.yaml"
	cat >"$r/etc/systemd/system/consul.service" <<UNIT
[Unit]
Description=Consul dev agent (test): this VM's local Consul agent
[Service]
ExecStart=/usr/local/bin/consul agent -dev -bind $a -client $a -node $h -hcl 'check_update_interval = "0s"'
[Install]
WantedBy=multi-user.target
UNIT
	mkdir -p "$r/srv/web"
	printf 'web on %s' "$h" >"$r/srv/web/index.html"
	# The injected failure: h2's app has no /healthz.
	[ "$h" = h2 ] || printf ok >"$r/srv/web/healthz"
	cat >"$r/etc/systemd/system/web-app.service" <<UNIT
[Unit]
Description=the app web (test), on 28080 and 28081
Before=mesh-agent@web.service
[Service]
ExecStart=/bin/sh -c 'python3 -m http.server 28081 --bind $a --directory /srv/web & exec python3 -m http.server 28080 --bind $a --directory /srv/web'
[Install]
WantedBy=multi-user.target
UNIT
	in_root "$r" systemctl enable consul.service web-app.service >/dev/null 2>&1
	systemd-nspawn -q -D "$r" --boot --register=no --keep-unit --bind-ro="$consul_bin:/usr/local/bin/consul" \
		>"$work/$h-nspawn.log" 2>&1 </dev/null &
	nspawns="$nspawns $!"
	pid=$!
	init=
	for _ in $(seq 100); do
		init=$(pgrep -P "$pid" -x systemd || true)
		[ -n "$init" ] && break
		sleep 0.1
	done
	[ -n "$init" ] || { cat "$work/$h-nspawn.log"; fail "$h: systemd did not boot"; }
	echo "$init" >"$work/$h.pid"
done
for h in $hosts; do
	retry 150 leader "$h" || { on "$h" journalctl -u consul -o cat --no-pager | tail -n 20; fail "$h: consul has no leader"; }
done
ok "booted h1 h2 h3 ($(ip h1)-3), each with its Consul agent, the app web and mesh $oldv ($(($(date +%s) - start))s)"

# Ansible's chroot connection, entering the booted machine instead of
# chrooting: chroot_exe is called as `EXE ROOT /bin/sh -c CMD`.
cat >"$work/enter" <<EOF
#!/bin/sh
root=\$1
shift
exec nsenter -t "\$(cat "\$root.pid")" -m -p -u -i -n env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root "\$@"
EOF
chmod +x "$work/enter"
apps() {
	a=$(ip "$1")
	printf '[{"name": "web", "service": "web", "app_port": %s, "app_address": "%s", "app_health": "/healthz", "health_interval": "1s", "inbound_addr": "%s:25006", "outbound_addr": "%s:25001", "admin_addr": "%s:25000"}]' \
		"${2:-28080}" "$a" "$a" "$a" "$a"
}
{
	echo "[mesh_control]"
	echo "h1 mesh_control_xds_addr=$(ip h1):18000 mesh_control_admin_addr=$(ip h1):19000 mesh_policies='{\"default\": {\"timeout\": \"10s\"}}'"
	echo "[mesh_agents]"
	for h in $hosts; do echo "$h"; done
	echo "[all:vars]"
	echo "ansible_connection=community.general.chroot"
	echo "ansible_chroot_exe=$work/enter"
	echo "ansible_become=false"
	echo "ansible_python_interpreter=/usr/bin/python3"
	echo "mesh_package_deb=$deb"
	echo "mesh_wait_retries=10"
	echo "mesh_wait_delay=2"
} >"$work/inventory.ini"
for h in $hosts; do
	printf 'ansible_host: %s\nmesh_consul_addr: "%s:8500"\nmesh_apps: %s\n' "$work/$h" "$(ip "$h")" "$(apps "$h")" \
		>"$work/host_vars_$h.yml"
done
mkdir -p "$work/host_vars"
for h in $hosts; do mv "$work/host_vars_$h.yml" "$work/host_vars/$h.yml"; done
export ANSIBLE_CONFIG="$PWD/packaging/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_LOCALHOST_WARNING=false
play() { ansible-playbook -i "$work/inventory.ini" packaging/ansible/site.yml "$@"; }

# --- 1. the rolling upgrade, stopped at h2 ---------------------------------
log=${MESH_TEST_ROLLING_LOG:-$work/run1.log}
t0=$(date +%s)
if play >"$log" 2>&1; then
	cat "$log"
	fail "run 1: the play succeeded although h2's agent never passes"
fi
grep -E '^(h[123]) +: ' "$log" || true
grep -q "h2 is not serving again" "$log" || { cat "$log"; fail "run 1: no failure naming h2's wait"; }
[ "$(version_on h1)" = "$newv" ] || fail "run 1: h1 runs package $(version_on h1), want $newv"
[ "$(prop h1 mesh-agent@web.service ActiveState)" = active ] || fail "run 1: mesh-agent@web on h1 is not active"
curl -fsS -o /dev/null "http://$(ip h1):8500/v1/agent/health/service/name/web" || fail "run 1: web on h1 is not passing"
[ "$(prop h1 mesh-control.service ActiveState)" = active ] || fail "run 1: mesh-control on h1 is not active"
[ "$(version_on h2)" = "$newv" ] || fail "run 1: h2 runs package $(version_on h2), want $newv (it failed after the install)"
for h in h1 h2; do
	[ -f "$work/$h/etc/mesh/mesh.yaml.dpkg-dist" ] || fail "$h: no /etc/mesh/mesh.yaml.dpkg-dist after the upgrade over an edited mesh.yaml"
	grep -q '^    timeout: 15s$' "$work/$h/etc/mesh/mesh.yaml.dpkg-dist" || fail "$h: mesh.yaml.dpkg-dist is not the new package's"
done
tail -n1 "$work/h2/etc/mesh/mesh.yaml" | grep -q "edited by the admin" || fail "h2: the edited mesh.yaml was replaced"
[ "$(on h2 stat -c '%U:%G %a' /etc/mesh/mesh.yaml)" = "root:mesh 640" ] || fail "h2: mesh.yaml $(on h2 stat -c '%U:%G %a' /etc/mesh/mesh.yaml)"
[ "$(on h2 systemctl is-enabled mesh-control.service || true)" = disabled ] || fail "h2: mesh-control is not disabled"
[ "$(prop h2 mesh-control.service ActiveState)" = inactive ] || fail "h2: mesh-control is running"
# h3: never touched.
[ "$(version_on h3)" = "$oldv" ] || fail "run 1: h3 runs package $(version_on h3): the rollout went past h2"
for f in /etc/mesh/agent-web.yaml /var/cache/mesh; do
	[ ! -e "$work/h3$f" ] || fail "run 1: h3 has $f: the rollout went past h2"
done
[ "$(prop h3 mesh-agent@web.service ActiveState)" = inactive ] || fail "run 1: mesh-agent@web runs on h3"
ok "run 1 ($(($(date +%s) - t0))s): h1 upgraded and passing, h2 upgraded but not passing: stopped; h3 untouched ($oldv); edited mesh.yaml kept, new one as .dpkg-dist; mesh-control only on h1"

# --- 2. handlers: app_port restarts, a policy reloads -------------------------
agentpid=$(prop h1 mesh-agent@web.service MainPID)
ctlpid=$(prop h1 mesh-control.service MainPID)
reloads() { on h1 journalctl -u mesh-control.service -o cat --no-pager | grep -c '"config reloaded"' || true; }
r0=$(reloads)
t0=$(date +%s)
play --limit h1 -e "{\"mesh_apps\": $(apps h1 28081), \"mesh_policies\": {\"default\": {\"timeout\": \"3s\"}}}" \
	>"$work/run2.log" 2>&1 || { cat "$work/run2.log"; fail "run 2 (app_port and policy changed on h1)"; }
grep -q 'item=web: restart' "$work/run2.log" || { cat "$work/run2.log"; fail "run 2: the handler did not restart mesh-agent@web"; }
newpid=$(prop h1 mesh-agent@web.service MainPID)
if [ "$newpid" = "$agentpid" ] || [ "$newpid" = 0 ]; then fail "run 2: mesh-agent@web not restarted (PID $agentpid, now $newpid)"; fi
on h1 mesh config validate --role agent /etc/mesh/agent-web.yaml | grep -q 'app_port: 28081' || fail "run 2: agent-web.yaml lacks app_port 28081"
[ "$(prop h1 mesh-control.service MainPID)" = "$ctlpid" ] || fail "run 2: mesh-control was restarted, want a reload"
[ "$(reloads)" -gt "$r0" ] || fail "run 2: mesh-control did not log a reload"
left=$(find "$work/h1/etc/mesh" -name '*~')
[ -z "$left" ] || fail "run 2: replaced configs left on h1: $left"
ok "run 2 ($(($(date +%s) - t0))s): app_port changed: mesh-agent@web restarted (PID $agentpid -> $newpid); policy changed: mesh-control reloaded (PID $ctlpid kept)"

# --- 3. h2 fixed: the rollout goes on -------------------------------------------
printf ok >"$work/h2/srv/web/healthz"
sed -i 's/"app_port": 28080/"app_port": 28081/' "$work/host_vars/h1.yml" # as run 2 left it
t0=$(date +%s)
play >"$work/run3.log" 2>&1 || { cat "$work/run3.log"; fail "run 3 (h2 fixed)"; }
grep -E '^(h[123]) +: ' "$work/run3.log"
for h in $hosts; do
	[ "$(version_on "$h")" = "$newv" ] || fail "run 3: $h runs package $(version_on "$h")"
	curl -fsS -o /dev/null "http://$(ip "$h"):8500/v1/agent/health/service/name/web" || fail "run 3: web on $h is not passing"
done
ok "run 3 ($(($(date +%s) - t0))s): h2 fixed, the rollout went on: h1 h2 h3 run $newv, web passing on each"
echo "rolling upgrade with the Ansible role: passed in $(($(date +%s) - start))s"
