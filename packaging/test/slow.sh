#!/bin/sh
# Slow packaging tests (minutes, as root), run by `make test-packaging`
# after `make package`:
#   1. lintian on the .deb (errors and warnings fail, except the overrides
#      shipped in packaging/deb/lintian-overrides);
#   2. in a Debian root made with debootstrap (cached in .cache/packaging):
#      dpkg -i, files, conffiles and their modes, user, state dir, no unit
#      enabled, `mesh version` = the package version, systemd-analyze
#      verify of the installed units; purge; in a second root an upgrade
#      from an older package (other version, other shipped mesh.yaml) over
#      an edited mesh.yaml with --force-confold: the edit and the admin's
#      enable kept, the new file beside it as .dpkg-dist;
#   3. the .rpm's file list, config flags and Requires; an RPM-style root
#      (rpm's own database, Fedora's `disable *` preset, a stub package
#      providing what Fedora's userland would): install refused without the
#      Requires, installed with them, preset-disabled unless the admin's
#      preset enables it, erase leaving no enable link;
#   4. the Ansible role (site.yml) against a fresh root over Ansible's chroot
#      connection: package installed, configs rendered and valid, units
#      enabled; a second run reports changed=0;
#   5. that root with the package installed, booted with systemd-nspawn
#      (private network) with a Consul dev agent: mesh-control.service and
#      mesh-agent@demo.service, started by systemd, run the real binary in
#      the units' sandbox (user mesh, no capabilities, no_new_privs,
#      seccomp); the control plane serves /metrics, the agent registers in
#      Consul and is ready; its warn line is at priority 4 (journalctl -p
#      warning); `systemctl stop` deregisters, drains and exits 0.
#      Then the Type=notify contract of both units: active after start,
#      reload keeps the process, the watchdog is fed, stop ends it cleanly
#      (MESH_TEST_SDNOTIFY=0 leaves it out, saving the 32s watchdog wait);
#   6. upgrade.sh: a package upgrade (dpkg -i in a booted root, postinst
#      restarting mesh-agent@orders) under steady load from two callers
#      with retries (Consul-direct and xDS) loses no request;
#   7. rolling.sh: the Ansible role's rolling upgrade over three booted
#      roots stops at the injected failure on the second; handlers restart
#      or reload by `mesh config diff`.
# shellcheck disable=SC2016 # ${...} in single quotes are dpkg-query formats
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test/lib.sh
. "$here/lib.sh"
cd "$here/../.."
[ "$(id -u)" = 0 ] || fail "run as root: the test uses chroot and mount"
need lintian:lintian debootstrap:debootstrap ansible:ansible-playbook rpm:rpm systemd-container:systemd-nspawn

set -- dist/mesh_*.deb
if [ $# -ne 1 ] || [ ! -f "$1" ]; then fail "want exactly one dist/mesh_*.deb (make package), got: $*"; fi
deb=$PWD/$1
set -- dist/mesh-*.rpm
if [ $# -ne 1 ] || [ ! -f "$1" ]; then fail "want exactly one dist/mesh-*.rpm (make package), got: $*"; fi
rpmfile=$PWD/$1
version=$(dpkg-deb -f "$deb" Version)
start=$(date +%s)
# The example inventory's package is the one make package wrote.
[ "$(readlink -f packaging/ansible/../../dist/mesh.deb)" = "$(readlink -f "$deb")" ] ||
	fail "dist/mesh.deb (inventory.example.ini's mesh_package_deb) is not $deb"

# --- 1. lintian ----------------------------------------------------------
lintian --fail-on error,warning --tag-display-limit 0 "$deb" 2>&1 | grep -v 'root privileges' || true
lintian --fail-on error,warning "$deb" >/dev/null 2>&1 || fail "lintian reports errors or warnings on $deb"
ok "lintian $(basename "$deb")"

# --- Debian roots ----------------------------------------------------------
tarball=$(packaging/test/rootfs.sh)
work=$(mktemp -d "$PWD/.cache/packaging/run.XXXXXX")
nspawn=
cleanup() {
	# Power the container off (systemd-nspawn forwards SIGTERM as a
	# shutdown), wait for it, kill it if it hangs; then remove the roots.
	if [ -n "$nspawn" ]; then
		kill "$nspawn" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$nspawn" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$nspawn" 2>/dev/null || true
	fi
	for m in "$work"/*/proc; do
		mountpoint -q "$m" 2>/dev/null && umount -l "$m"
	done
	rm -rf "$work"
}
oldwork=
trap 'cleanup; rm -rf "$oldwork"' EXIT INT TERM
# An older package (other version, other shipped mesh.yaml) for the
# upgrades, outside $work: upgrade.sh and rolling.sh use it after cleanup.
oldwork=$(mktemp -d "$PWD/.cache/packaging/old.XXXXXX")
olddeb=$(old_deb "$deb" 0.0.0~oldtest "$oldwork")
oldversion=$(dpkg-deb -f "$olddeb" Version)
ok "old package $(basename "$olddeb") built"

# new_root NAME [noproc]: a fresh copy of the cached root, with /proc
# mounted unless noproc.
new_root() {
	r=$work/$1
	mkdir -p "$r"
	tar -C "$r" -xf "$tarball"
	[ "${2:-}" = noproc ] || mount -t proc proc "$r/proc"
	echo "$r"
}
in_root() {
	r=$1
	shift
	chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"
}

# --- 2. dpkg -i, upgrade, purge -----------------------------------------------
root=$(new_root dpkg)
cp "$deb" "$root/tmp/mesh.deb"
in_root "$root" dpkg -i /tmp/mesh.deb >"$work/dpkg-install.log" 2>&1 ||
	{ cat "$work/dpkg-install.log"; fail "dpkg -i"; }
ok "dpkg -i $(basename "$deb")"

for f in /usr/bin/mesh /lib/systemd/system/mesh-control.service /lib/systemd/system/mesh-agent@.service \
	/etc/mesh/mesh.yaml /etc/mesh/agent-example.yaml.sample /usr/share/doc/mesh/copyright \
	/usr/share/doc/mesh/changelog.Debian.gz; do
	[ -f "$root$f" ] || fail "not installed: $f"
done
[ -x "$root/usr/bin/mesh" ] || fail "/usr/bin/mesh is not executable"
conffiles=$(in_root "$root" dpkg-query -W -f='${Conffiles}' mesh)
for f in /etc/mesh/mesh.yaml /etc/mesh/agent-example.yaml.sample; do
	echo "$conffiles" | grep -q " $f " || fail "$f is not a conffile: $conffiles"
done
for f in /etc/mesh/mesh.yaml:root:mesh:640 /etc/mesh/agent-example.yaml.sample:root:root:644; do
	got=$(in_root "$root" stat -c '%U:%G:%a' "${f%%:*}")
	[ "$got" = "${f#*:}" ] || fail "${f%%:*} is $got, want ${f#*:}"
done
ok "files and conffiles in place, mesh.yaml root:mesh 0640"

pw=$(in_root "$root" getent passwd mesh) || fail "no mesh user"
uid=$(echo "$pw" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "mesh is not a system user: $pw"
echo "$pw" | grep -q ':/var/lib/mesh:/usr/sbin/nologin$' || fail "mesh user home or shell: $pw"
in_root "$root" getent group mesh >/dev/null || fail "no mesh group"
[ "$(in_root "$root" stat -c '%U:%G %a' /var/lib/mesh)" = "mesh:mesh 750" ] ||
	fail "/var/lib/mesh: $(in_root "$root" stat -c '%U:%G %a' /var/lib/mesh)"
ok "system user mesh ($uid), /var/lib/mesh mesh:mesh 0750"

[ "$(in_root "$root" systemctl is-enabled mesh-control.service || true)" = disabled ] || fail "mesh-control.service is enabled by the package"
left=$(find "$root/etc/systemd" -name '*mesh*')
[ -z "$left" ] || fail "the package enabled: $left"
ok "no unit enabled by the package (mesh-control.service disabled)"

got=$(in_root "$root" mesh version) || fail "mesh version in the root"
[ "$got" = "$(bin/mesh version)" ] || fail "mesh version in the root: '$got', built: '$(bin/mesh version)'"
[ "$(echo "$got" | cut -d' ' -f2)-1" = "$version" ] || fail "mesh version '$got' is not the package version $version"
ok "mesh version in the root: $got (package $version)"
in_root "$root" mesh config validate --role control /etc/mesh/mesh.yaml >/dev/null || fail "installed mesh.yaml does not validate"
in_root "$root" systemd-analyze verify mesh-control.service mesh-agent@orders.service >"$work/verify.log" 2>&1 ||
	{ cat "$work/verify.log"; fail "systemd-analyze verify in the root"; }
[ ! -s "$work/verify.log" ] || { cat "$work/verify.log"; fail "systemd-analyze verify in the root warns"; }
ok "installed config validates, installed units verify"

# Purge, with an agent the admin enabled.
in_root "$root" systemctl enable mesh-agent@orders.service >/dev/null 2>&1
in_root "$root" dpkg --purge mesh >"$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log"; fail "dpkg --purge"; }
in_root "$root" dpkg-query -W -f='${Status}' mesh 2>/dev/null | grep -q ' installed$' && fail "mesh still installed after purge"
for f in /usr/bin/mesh /lib/systemd/system/mesh-control.service /lib/systemd/system/mesh-agent@.service \
	/etc/mesh /var/lib/mesh /usr/share/doc/mesh; do
	[ ! -e "$root$f" ] || fail "left after purge: $f"
done
left=$(find "$root/etc/systemd" "$root/var/lib/systemd" -name '*mesh*' 2>/dev/null)
[ -z "$left" ] || fail "left after purge: $left"
in_root "$root" getent passwd mesh >/dev/null || fail "purge removed the mesh user (it is meant to stay)"
ok "purge removes files, configs, state, unit links; keeps the mesh user"

# Upgrade from the older package over an edited mesh.yaml, as the Ansible
# role installs (--force-confdef --force-confold), no TTY: the edit stays,
# the new package's file is written beside it as mesh.yaml.dpkg-dist; the
# admin's enable and the mesh user stay.
uroot=$(new_root dpkgup)
cp "$olddeb" "$uroot/tmp/mesh-old.deb"
cp "$deb" "$uroot/tmp/mesh.deb"
in_root "$uroot" dpkg -i /tmp/mesh-old.deb >"$work/dpkg-old.log" 2>&1 || { cat "$work/dpkg-old.log"; fail "dpkg -i $oldversion"; }
uid=$(in_root "$uroot" id -u mesh)
echo "# edited by the admin" >>"$uroot/etc/mesh/mesh.yaml"
in_root "$uroot" systemctl enable mesh-control.service >/dev/null 2>&1
in_root "$uroot" dpkg -i --force-confdef --force-confold /tmp/mesh.deb </dev/null >"$work/dpkg-upgrade.log" 2>&1 ||
	{ cat "$work/dpkg-upgrade.log"; fail "dpkg -i --force-confold $version over $oldversion"; }
[ "$(in_root "$uroot" dpkg-query -W -f='${Version} ${Status}' mesh)" = "$version install ok installed" ] ||
	fail "after the upgrade: $(in_root "$uroot" dpkg-query -W -f='${Version} ${Status}' mesh)"
tail -n1 "$uroot/etc/mesh/mesh.yaml" | grep -q "edited by the admin" || fail "upgrade replaced the edited /etc/mesh/mesh.yaml"
cmp -s "$uroot/etc/mesh/mesh.yaml.dpkg-dist" packaging/etc/mesh.yaml || fail "mesh.yaml.dpkg-dist is not the new package's mesh.yaml"
[ "$(in_root "$uroot" stat -c '%U:%G %a' /etc/mesh/mesh.yaml)" = "root:mesh 640" ] || fail "edited mesh.yaml: $(in_root "$uroot" stat -c '%U:%G %a' /etc/mesh/mesh.yaml)"
[ "$(in_root "$uroot" systemctl is-enabled mesh-control.service)" = enabled ] || fail "upgrade dropped the admin's enable of mesh-control"
[ "$(in_root "$uroot" id -u mesh)" = "$uid" ] || fail "upgrade changed the mesh uid"
in_root "$uroot" dpkg --purge mesh >"$work/dpkg-purge2.log" 2>&1 || { cat "$work/dpkg-purge2.log"; fail "dpkg --purge after the upgrade"; }
[ ! -e "$uroot/etc/mesh" ] || fail "purge left $(find "$uroot/etc/mesh")"
[ -z "$(find "$uroot/etc/systemd" -name '*mesh*')" ] || fail "purge left $(find "$uroot/etc/systemd" -name '*mesh*')"
ok "upgrade $oldversion -> $version over an edited mesh.yaml: edit kept, new file as .dpkg-dist, enable and uid kept; purge removes both"

# --- 3. rpm ---------------------------------------------------------------------
flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpmfile" 2>/dev/null)
for f in /etc/mesh/mesh.yaml /etc/mesh/agent-example.yaml.sample; do
	echo "$flags" | grep -q "^$f cn$" || fail "rpm: $f is not %config(noreplace): $flags"
done
for f in /usr/bin/mesh /usr/lib/systemd/system/mesh-control.service /usr/lib/systemd/system/mesh-agent@.service; do
	echo "$flags" | grep -q "^$f " || fail "rpm: $f missing"
done
reqs=$(rpm -qpR "$rpmfile" 2>/dev/null)
for r in shadow-utils glibc-common coreutils systemd util-linux; do
	echo "$reqs" | grep -qx "$r" || fail "rpm: no Requires: $r; got: $(echo "$reqs" | tr '\n' ' ')"
done
ok "rpm Requires: $(echo "$reqs" | grep -v '^rpmlib' | tr '\n' ' ')"

# An RPM-style root: the scriptlets run for real (rpm chroots into
# --root), against rpm's own database, which holds only what a stub
# package provides for Fedora's userland, and Fedora's preset policy.
rroot=$(new_root rpm)
rpm --root "$rroot" --initdb
mkdir -p "$rroot/usr/lib/systemd/system-preset"
echo 'disable *' >"$rroot/usr/lib/systemd/system-preset/99-default-disable.preset"
if rpm --root "$rroot" -i "$rpmfile" >"$work/rpm-nodeps.log" 2>&1; then
	fail "rpm -i succeeded in a root that provides none of its Requires"
fi
grep -q 'shadow-utils is needed by mesh' "$work/rpm-nodeps.log" || { cat "$work/rpm-nodeps.log"; fail "rpm -i without its Requires: not refused for them"; }
mkdir -p "$work/stub"
cat >"$work/stub/nfpm.yaml" <<'STUB'
name: fedora-userland-stub
arch: all
platform: linux
version: 1.0.0
release: "1"
maintainer: mesh tests <tests@meshvm.invalid>
description: Provides what a Fedora userland would, for the mesh rpm test
provides: [shadow-utils, glibc-common, coreutils, systemd, util-linux]
STUB
(cd "$work/stub" && "$OLDPWD/bin/nfpm" package -f nfpm.yaml -p rpm -t . >/dev/null) || fail "nfpm: the userland stub rpm"
rpm --root "$rroot" -i "$work"/stub/*.rpm >"$work/rpm-stub.log" 2>&1 || { cat "$work/rpm-stub.log"; fail "rpm -i the userland stub"; }
rpm --root "$rroot" -i "$rpmfile" >"$work/rpm.log" 2>&1 || { cat "$work/rpm.log"; fail "rpm -i"; }
in_root "$rroot" getent passwd mesh >/dev/null || fail "rpm %pre: no mesh user"
[ "$(in_root "$rroot" stat -c '%U:%G %a' /var/lib/mesh)" = "mesh:mesh 750" ] || fail "rpm %post: /var/lib/mesh"
[ "$(in_root "$rroot" stat -c '%U:%G %a' /etc/mesh/mesh.yaml)" = "root:mesh 640" ] ||
	fail "rpm: /etc/mesh/mesh.yaml is $(in_root "$rroot" stat -c '%U:%G %a' /etc/mesh/mesh.yaml)"
grep -q 'does not exist' "$work/rpm.log" && { cat "$work/rpm.log"; fail "rpm: unpacked before the mesh group existed"; }
[ "$(in_root "$rroot" systemctl is-enabled mesh-control.service || true)" = disabled ] || fail "rpm: mesh-control enabled on install"
[ -z "$(find "$rroot/etc/systemd" -name '*mesh*')" ] || fail "rpm install enabled: $(find "$rroot/etc/systemd" -name '*mesh*')"
rpm --root "$rroot" -e mesh >"$work/rpm-e.log" 2>&1 || { cat "$work/rpm-e.log"; fail "rpm -e"; }
ok "rpm: refused without its Requires, installed with them; mesh.yaml root:mesh 0640; nothing enabled under 'disable *'"
# The admin's preset enables mesh-control at install; erase removes every
# enable link, agents the admin enabled included.
mkdir -p "$rroot/etc/systemd/system-preset"
echo 'enable mesh-control.service' >"$rroot/etc/systemd/system-preset/50-mesh.preset"
rpm --root "$rroot" -i "$rpmfile" >"$work/rpm2.log" 2>&1 || { cat "$work/rpm2.log"; fail "rpm -i (admin preset)"; }
[ "$(in_root "$rroot" systemctl is-enabled mesh-control.service)" = enabled ] || fail "rpm: the admin's preset did not enable mesh-control"
in_root "$rroot" systemctl enable mesh-agent@orders.service >/dev/null 2>&1
[ -L "$rroot/etc/systemd/system/multi-user.target.wants/mesh-agent@orders.service" ] || fail "could not enable mesh-agent@orders"
rpm --root "$rroot" -e mesh >"$work/rpm-e2.log" 2>&1 || { cat "$work/rpm-e2.log"; fail "rpm -e (2)"; }
[ ! -e "$rroot/usr/bin/mesh" ] || fail "rpm -e left /usr/bin/mesh"
left=$(find "$rroot/etc/systemd" -name '*mesh*' ! -name 50-mesh.preset)
[ -z "$left" ] || fail "rpm -e left: $left"
ok "rpm: the admin's preset enables mesh-control; rpm -e removes it and mesh-agent@orders' link"

# --- 4. Ansible over a chroot connection -----------------------------------------
aroot=$(new_root ansible)
cat >"$work/inventory.ini" <<INV
[mesh_control]
debroot

[mesh_agents]
debroot

[all:vars]
ansible_connection=community.general.chroot
ansible_host=$aroot
ansible_become=false
ansible_python_interpreter=/usr/bin/python3
mesh_manage_service_state=false
mesh_package_deb=$deb
INV
cat >"$work/host_vars.yml" <<'VARS'
mesh_control_plane: ["127.0.0.1:18000"]
mesh_locality: {region: eu-west, zone: eu-west-1a}
mesh_policies: {default: {timeout: 10s}}
mesh_apps:
  - {name: orders, service: orders, app_port: 8080, app_health: /healthz, tags: [v2],
     upstreams: [{service: payments, listen: "127.0.0.1:9191"}]}
  - {name: cart, service: cart, app_port: 8081, inbound_addr: "0.0.0.0:15016",
     outbound_addr: "127.0.0.1:15011", admin_addr: "127.0.0.1:15010"}
VARS
export ANSIBLE_CONFIG="$PWD/packaging/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1
play() {
	ansible-playbook -i "$work/inventory.ini" -e "@$work/host_vars.yml" packaging/ansible/site.yml
}
play >"$work/ansible1.log" 2>&1 || { cat "$work/ansible1.log"; fail "ansible run 1"; }
grep -E '^debroot +: ' "$work/ansible1.log"
[ "$(in_root "$aroot" dpkg-query -W -f='${Version}' mesh)" = "$version" ] || fail "ansible: mesh $version not installed"
for app in orders cart; do
	f=/etc/mesh/agent-$app.yaml
	[ "$(in_root "$aroot" stat -c '%U:%G %a' "$f")" = "root:mesh 640" ] || fail "$f owner or mode"
	in_root "$aroot" mesh config validate --role agent "$f" >/dev/null || fail "$f does not validate"
	[ "$(in_root "$aroot" systemctl is-enabled "mesh-agent@$app.service")" = enabled ] || fail "mesh-agent@$app not enabled"
done
in_root "$aroot" mesh config validate --role control /etc/mesh/mesh.yaml | grep -q 'timeout: 10s' ||
	fail "/etc/mesh/mesh.yaml not rendered from the inventory"
[ "$(in_root "$aroot" systemctl is-enabled mesh-control.service)" = enabled ] || fail "mesh-control not enabled"
ok "ansible run 1: package installed, configs rendered and valid, units enabled"

play >"$work/ansible2.log" 2>&1 || { cat "$work/ansible2.log"; fail "ansible run 2"; }
recap=$(grep -E '^debroot +: ' "$work/ansible2.log")
echo "$recap"
echo "$recap" | grep -q 'changed=0 ' || { cat "$work/ansible2.log"; fail "ansible run 2 changed something"; }
ok "ansible run 2: changed=0"

# --- 5. boot with systemd --------------------------------------------------------
broot=$(new_root boot noproc)
cp "$deb" "$broot/tmp/mesh.deb"
in_root "$broot" dpkg -i /tmp/mesh.deb >"$work/dpkg-boot.log" 2>&1 || { cat "$work/dpkg-boot.log"; fail "dpkg -i (boot root)"; }
# A real Consul dev agent for the agent to register in, and one agent.
[ -x bin/consul ] || fail "bin/consul is missing: make consul"
cp bin/consul "$broot/usr/local/bin/consul"
cat >"$broot/etc/systemd/system/consul.service" <<'UNIT'
[Unit]
Description=Consul dev agent (test)
[Service]
ExecStart=/usr/local/bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1
[Install]
WantedBy=multi-user.target
UNIT
sed -e 's/^  service: example$/  service: demo/' -e '/^  app_health:/d' \
	"$broot/etc/mesh/agent-example.yaml.sample" >"$broot/etc/mesh/agent-demo.yaml"
in_root "$broot" mesh config validate --role agent /etc/mesh/agent-demo.yaml | grep -q 'service: demo' ||
	fail "agent-demo.yaml"
in_root "$broot" systemctl enable consul.service mesh-control.service mesh-agent@demo.service >/dev/null 2>&1
systemd-nspawn -q -D "$broot" --boot --register=no --keep-unit --private-network \
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
get() {
	in_boot python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).status)' "$1" 2>/dev/null || true
}
code=
for _ in $(seq 150); do
	code=$(get http://127.0.0.1:19000/metrics)
	[ "$code" = 200 ] && break
	sleep 0.2
done
[ "$code" = 200 ] || { in_boot journalctl -u mesh-control.service -o cat --no-pager | tail -n 20; fail "mesh-control.service: no /metrics on 127.0.0.1:19000"; }
pid=$(in_boot systemctl show -P MainPID mesh-control.service)
status=$(in_boot grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$pid/status")
muid=$(in_boot id -u mesh)
for want in "Uid:	$muid" "CapEff:	0000000000000000" "CapBnd:	0000000000000000" "NoNewPrivs:	1" "Seccomp:	2"; do
	echo "$status" | grep -q "^$want" || fail "mesh-control.service sandbox: want '$want', got: $status"
done
[ "$(in_boot systemctl show -P NRestarts mesh-control.service)" = 0 ] || fail "mesh-control.service restarted"
ok "booted: mesh-control.service runs as mesh, no capabilities, no_new_privs, seccomp, serves /metrics"

# The agent: registered in Consul and ready (/ready is 200 only then).
for _ in $(seq 150); do
	code=$(get http://127.0.0.1:15000/ready)
	[ "$code" = 200 ] && break
	sleep 0.2
done
[ "$code" = 200 ] || { in_boot journalctl -u mesh-agent@demo.service -o cat --no-pager | tail -n 20; fail "mesh-agent@demo: /ready is not 200"; }
apid=$(in_boot systemctl show -P MainPID mesh-agent@demo.service)
status=$(in_boot grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' "/proc/$apid/status")
for want in "Uid:	$muid" "CapEff:	0000000000000000" "NoNewPrivs:	1" "Seccomp:	2"; do
	echo "$status" | grep -q "^$want" || fail "mesh-agent@demo sandbox: want '$want', got: $status"
done
catalog() {
	in_boot python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' \
		http://127.0.0.1:8500/v1/catalog/service/demo
}
catalog | grep -q '"ServiceID": *"demo-' || fail "mesh-agent@demo is not in Consul's catalog: $(catalog)"
ok "booted: mesh-agent@demo runs as mesh in the sandbox, registered in Consul, /ready 200"

# Log levels reach journald: the demo's app does not listen, so the agent
# warns once ("app not reachable", priority 4) and stays ready; info lines
# stay out of `journalctl -p warning`; the JSON is intact in MESSAGE.
warn=
for _ in $(seq 50); do
	warn=$(in_boot journalctl -u mesh-agent@demo.service -p warning -o cat --no-pager)
	case "$warn" in *'"message":"app not reachable'*) break ;; esac
	sleep 0.2
done
case "$warn" in *'"level":"warn"'*'"message":"app not reachable'*) ;; *)
	in_boot journalctl -u mesh-agent@demo.service -o verbose --no-pager | tail -n 40
	fail "journalctl -p warning -u mesh-agent@demo lacks the agent's warn line: $warn" ;;
esac
case "$warn" in *'"level":"info"'*) fail "info lines at warning priority: $warn" ;; esac
in_boot journalctl -u mesh-agent@demo.service -p info..info -o cat --no-pager | grep -q '"message":"listening"' ||
	fail "mesh-agent@demo: info lines are not at priority 6"
ok "journald: warn lines at PRIORITY=4 (journalctl -p warning), info at 6, JSON kept"

# The Type=notify contract: both roles send READY=1, RELOADING=1,
# STOPPING=1 and watchdog pings (MESH_TEST_SDNOTIFY=0 skips this).
if [ "${MESH_TEST_SDNOTIFY:-1}" = 1 ]; then
	prop() { in_boot systemctl show -P "$2" "$1"; }
	pids=
	for unit in mesh-agent@demo.service mesh-control.service; do
		for _ in $(seq 50); do [ "$(prop "$unit" ActiveState)" = active ] && break; sleep 0.2; done
		[ "$(prop "$unit" ActiveState)" = active ] || fail "$unit is '$(prop "$unit" ActiveState)' after start: no READY=1"
		pid=$(prop "$unit" MainPID)
		in_boot systemctl reload "$unit" || fail "systemctl reload $unit"
		sleep 1
		if [ "$(prop "$unit" ActiveState)" != active ] || [ "$(prop "$unit" MainPID)" != "$pid" ]; then
			fail "reload $unit: state '$(prop "$unit" ActiveState)', main PID $(prop "$unit" MainPID) (was $pid)"
		fi
		case "$(prop "$unit" StatusText)" in
		*"config reloaded"*) ;;
		*) fail "reload $unit: status '$(prop "$unit" StatusText)', want it to say the config was reloaded" ;;
		esac
		pids="$pids $unit=$pid"
	done
	sleep 32 # past WatchdogSec=30s
	for up in $pids; do
		[ "$(prop "${up%%=*}" MainPID)" = "${up#*=}" ] || fail "the watchdog restarted ${up%%=*}"
	done
	ok "sd_notify: active after start, reload keeps the process, watchdog fed ($pids)"
fi

# systemctl stop: SIGTERM, deregistration, drain, exit 0.
in_boot systemctl stop mesh-agent@demo.service 2>/dev/null || true
[ "$(in_boot systemctl show -P ExecMainStatus mesh-agent@demo.service)" = 0 ] ||
	fail "mesh-agent@demo exit status $(in_boot systemctl show -P ExecMainStatus mesh-agent@demo.service) after stop"
catalog | grep -q '"ServiceID": *"demo-' && fail "mesh-agent@demo still in Consul after stop"
in_boot journalctl -u mesh-agent@demo.service -o cat --no-pager | grep -q '"message":"draining' ||
	fail "mesh-agent@demo did not drain on stop"
if [ "${MESH_TEST_SDNOTIFY:-1}" = 1 ]; then
	[ "$(in_boot systemctl show -P Result mesh-agent@demo.service)" = success ] ||
		fail "stop mesh-agent@demo: result $(in_boot systemctl show -P Result mesh-agent@demo.service)"
fi
ok "systemctl stop mesh-agent@demo: deregistered, drained, exit 0"

# systemctl stop mesh-control: SIGTERM, xDS streams closed, exit 0.
in_boot systemctl stop mesh-control.service 2>/dev/null || true
[ "$(in_boot systemctl show -P ExecMainStatus mesh-control.service)" = 0 ] ||
	fail "mesh-control exit status $(in_boot systemctl show -P ExecMainStatus mesh-control.service) after stop"
if [ "${MESH_TEST_SDNOTIFY:-1}" = 1 ]; then
	[ "$(in_boot systemctl show -P Result mesh-control.service)" = success ] ||
		fail "stop mesh-control: result $(in_boot systemctl show -P Result mesh-control.service)"
fi
ok "systemctl stop mesh-control: exit 0"

# --- 6. package upgrade under load ------------------------------------------------
# Power this root off first: the upgrade test boots its own.
cleanup
trap 'rm -rf "$oldwork"' EXIT INT TERM
MESH_TEST_OLD_DEB=$olddeb "$here/upgrade.sh" "$deb"

# --- 7. rolling upgrade with the Ansible role ------------------------------------
"$here/rolling.sh" "$deb" "$olddeb"

echo "packaging tests: all passed in $(($(date +%s) - start))s"
