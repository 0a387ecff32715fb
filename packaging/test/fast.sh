#!/bin/sh
# Fast packaging checks (seconds), run by `make test`: systemd-analyze verify
# on the units, log priorities through a real journald (journal.sh), the stop timeout against the agent's drain and shutdown
# defaults, the shipped configs through `mesh config validate`, shellcheck on
# the scripts, ansible-lint, and the Ansible role's templates rendered for the
# example inventory, validated, idempotent, and refusing a bad value.
# Needs bin/mesh (make build). Installs missing Debian packages.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test/lib.sh
. "$here/lib.sh"
cd "$here/../.."
mesh=$PWD/bin/mesh
[ -x "$mesh" ] || fail "bin/mesh is missing: run make build"

need systemd:systemd-analyze shellcheck:shellcheck ansible:ansible-playbook ansible-lint:ansible-lint python3:python3

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- systemd units -------------------------------------------------------
# verify resolves ExecStart and the units' dependencies inside --root, so
# the root holds the real binary at /usr/bin/mesh, /bin/kill and the
# host's units (sysinit.target and friends). Any output is a failure:
# unknown keys are only warnings to systemd.
root=$tmp/root
mkdir -p "$root/usr/bin" "$root/bin" "$root/lib/systemd"
cp -a /lib/systemd/system "$root/lib/systemd/"
cp systemd/*.service "$root/lib/systemd/system/"
cp "$mesh" "$root/usr/bin/mesh"
cp /bin/kill "$root/bin/kill"
for unit in mesh-control.service mesh-agent@orders.service mesh-gateway.service mesh-redirect@orders.service; do
	if ! out=$(systemd-analyze verify --root="$root" "$unit" 2>&1) || [ -n "$out" ]; then
		fail "systemd-analyze verify $unit: $out"
	fi
	ok "systemd-analyze verify $unit"
done
# A missing binary must fail verify, or the check above proves nothing.
rm "$root/usr/bin/mesh"
if systemd-analyze verify --root="$root" mesh-control.service >/dev/null 2>&1; then
	fail "systemd-analyze verify passes without /usr/bin/mesh"
fi

# Log levels reach a real journald as priorities (journal.sh).
sh "$here/journal.sh" "$mesh"

# The unit must outlive the agent's drain: TimeoutStopSec above
# drain_period + shutdown_timeout of the shipped example.
secs() { sed -n "s/^ *$1: *\([0-9]*\)s$/\1/p"; }
# Only the agent section: the gateway's has keys of the same names.
section() { sed -n "/^$1:/,/^[a-z]/p"; }
effective=$("$mesh" config validate packaging/etc/agent-example.yaml.sample --role agent | section agent)
drain=$(echo "$effective" | secs drain_period)
shutdown=$(echo "$effective" | secs shutdown_timeout)
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' systemd/mesh-agent@.service)
if [ -z "$drain" ] || [ -z "$shutdown" ] || [ -z "$stop" ]; then
	fail "could not read the drain, shutdown or stop timeouts"
fi
[ "$stop" -gt $((drain + shutdown)) ] || fail "TimeoutStopSec=${stop}s is not above drain_period ${drain}s + shutdown_timeout ${shutdown}s"
ok "TimeoutStopSec=${stop}s > drain_period ${drain}s + shutdown_timeout ${shutdown}s"

# --- shipped configs -----------------------------------------------------
"$mesh" config validate packaging/etc/mesh.yaml --role control >/dev/null ||
	fail "packaging/etc/mesh.yaml is not a valid control config"
"$mesh" config validate packaging/etc/agent-example.yaml.sample --role agent >/dev/null ||
	fail "packaging/etc/agent-example.yaml.sample is not a valid agent config"
"$mesh" config validate packaging/etc/gateway-example.yaml.sample --role gateway >/dev/null ||
	fail "packaging/etc/gateway-example.yaml.sample is not a valid gateway config"
# The gateway unit must outlive its drain too.
geff=$("$mesh" config validate packaging/etc/gateway-example.yaml.sample --role gateway | section gateway)
gdrain=$(echo "$geff" | secs drain_period)
gshutdown=$(echo "$geff" | secs shutdown_timeout)
gstop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' systemd/mesh-gateway.service)
if [ -z "$gdrain" ] || [ -z "$gshutdown" ] || [ -z "$gstop" ] || [ "$gstop" -le $((gdrain + gshutdown)) ]; then
	fail "mesh-gateway TimeoutStopSec=${gstop}s is not above drain_period ${gdrain}s + shutdown_timeout ${gshutdown}s"
fi
ok "shipped configs validate"

# --- scripts -------------------------------------------------------------
shellcheck -s sh packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm \
	packaging/rpm/pre packaging/rpm/post packaging/rpm/preun packaging/rpm/postun \
	packaging/version.sh packaging/changelog.sh
shellcheck -x -s sh packaging/test/*.sh
python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' packaging/test/load.py
ok "shellcheck, load.py parses"

# --- Ansible -------------------------------------------------------------
(cd packaging/ansible && ansible-lint -q) || fail "ansible-lint"
ok "ansible-lint"

export ANSIBLE_CONFIG="$PWD/packaging/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_LOCALHOST_WARNING=false
render() {
	(cd packaging/ansible && ansible-playbook -i inventory.example.ini -c local tests/render.yml \
		-e "mesh_render_dir=$tmp/render" -e "mesh_bin=$mesh" "$@")
}
render >"$tmp/run1" 2>&1 || { cat "$tmp/run1"; fail "rendering the role's templates"; }
for f in mesh-control-1.example.internal/mesh.yaml orders-1.example.internal/agent-orders.yaml \
	shop-1.example.internal/agent-cart.yaml shop-1.example.internal/agent-catalog.yaml; do
	[ -f "$tmp/render/$f" ] || fail "not rendered: $f"
done
[ ! -e "$tmp/render/orders-1.example.internal/mesh.yaml" ] || fail "mesh.yaml rendered on an agent-only host"
[ -f "$tmp/render/edge-1.example.internal/gateway.yaml" ] || fail "not rendered: edge-1.example.internal/gateway.yaml"
[ ! -e "$tmp/render/orders-1.example.internal/gateway.yaml" ] || fail "gateway.yaml rendered on a host outside mesh_gateway"
eff=$("$mesh" config validate --role gateway "$tmp/render/edge-1.example.internal/gateway.yaml" | section gateway)
for want in "- mesh-control-1.example.internal:18000" "cert_file: /etc/mesh/tls/shop.crt" "- 10.0.0.0/8" "max_tokens: 200"; do
	echo "$eff" | grep -qF -- "$want" || fail "gateway.yaml: effective config lacks '$want'"
done
# What the agent will run with, read back through mesh itself.
eff=$("$mesh" config validate --role agent "$tmp/render/shop-1.example.internal/agent-catalog.yaml")
for want in "service: catalog" "app_port: 8082" "inbound_addr: 0.0.0.0:15016" "admin_addr: 127.0.0.1:15010" \
	"- mesh-control-1.example.internal:18000" "team: shop" "- blue"; do
	echo "$eff" | grep -qF -- "$want" || fail "agent-catalog.yaml: effective config lacks '$want'"
done
eff=$("$mesh" config validate --role control "$tmp/render/mesh-control-1.example.internal/mesh.yaml")
echo "$eff" | grep -qF "per_try_timeout: 2s" || fail "mesh.yaml: policies.services.orders not rendered"
ok "role renders valid configs for the example inventory"

render >"$tmp/run2" 2>&1 || { cat "$tmp/run2"; fail "second render"; }
grep -E '^[a-z0-9.-]+ +: ok=' "$tmp/run2" | grep -v 'changed=0' && fail "second render changed files"
ok "second render: changed=0"

# A bad value is refused by `mesh config validate` and the file in place stays.
before=$(cat "$tmp/render/orders-1.example.internal/agent-orders.yaml")
if render --limit orders-1.example.internal \
	-e '{"mesh_apps": [{"name": "orders", "service": "orders", "app_port": 8080, "upstreams": [{"service": "payments", "listen": "nope"}]}]}' \
	>"$tmp/run3" 2>&1; then
	fail "a config with upstream listen 'nope' was accepted"
fi
grep -q 'agent.upstreams\[0\].listen: .*nope.* is not HOST:PORT' "$tmp/run3" || { cat "$tmp/run3"; fail "the refusal does not name the bad field"; }
[ "$before" = "$(cat "$tmp/render/orders-1.example.internal/agent-orders.yaml")" ] ||
	fail "a refused config replaced the file in place"
[ -z "$(find "$tmp/render" -name '*~')" ] || fail "a refused config left a backup: $(find "$tmp/render" -name '*~')"
ok "bad config refused by validate, file in place kept, no backup left"

# A changed value: the handlers compare the new file with the one it
# replaced (`mesh config diff`: 4 = restart for app_port, 3 = reload for a
# policy) and remove the backup either way.
cp -r "$tmp/render" "$tmp/before"
render -e '{"mesh_apps": [{"name": "orders", "service": "orders", "app_port": 8090}]}' \
	-e '{"mesh_policies": {"default": {"timeout": "3s"}}}' >"$tmp/run4" 2>&1 || { cat "$tmp/run4"; fail "render with a changed app_port and policy"; }
left=$(find "$tmp/render" -name '*~')
[ -z "$left" ] || { cat "$tmp/run4"; fail "the replaced configs were left behind: $left"; }
code() {
	rc=0
	"$mesh" config diff "$@" >"$tmp/diff.out" || rc=$?
	echo "$rc"
}
f="orders-1.example.internal/agent-orders.yaml"
[ "$(code --role agent "$tmp/before/$f" "$tmp/render/$f")" = 4 ] || { cat "$tmp/diff.out"; fail "config diff: app_port change is not a restart (exit 4)"; }
grep -qx 'agent.app_port: 8080 -> 8090 (restart)' "$tmp/diff.out" || { cat "$tmp/diff.out"; fail "config diff output"; }
f="mesh-control-1.example.internal/mesh.yaml"
[ "$(code --role control "$tmp/before/$f" "$tmp/render/$f")" = 3 ] || { cat "$tmp/diff.out"; fail "config diff: a policy change is not a reload (exit 3)"; }
[ "$(code --role control "$tmp/render/$f" "$tmp/render/$f")" = 0 ] || fail "config diff: a file against itself is not exit 0"
ok "changed render: backups removed; config diff says restart for app_port, reload for a policy"

# The example inventory installs what `make package` writes.
grep -qx 'mesh_package_deb=../../dist/mesh.deb' packaging/ansible/inventory.example.ini ||
	fail "inventory.example.ini does not install dist/mesh.deb"
grep -q 'ln -s mesh_\*.deb mesh.deb' Makefile || fail "make package does not write dist/mesh.deb"
ok "example inventory: dist/mesh.deb, which make package writes"

echo "packaging fast checks: all passed"
