#!/bin/sh
# Log levels reach a real systemd-journald (seconds, as root; run by
# fast.sh). In a private mount namespace (its own /run and
# /var/log/journal, so the host's journal, if any, is untouched) it starts
# systemd-journald and runs `mesh agent` on a journal stream as systemd
# connects a unit's stderr (systemd-cat: level prefixes on, as the units'
# SyslogLevelPrefix=yes; JOURNAL_STREAM set to the stream's dev:inode). Its
# Consul and app are unreachable, so it warns. Checked: the warn lines are
# PRIORITY=4 (`journalctl -p warning` shows them and no info line), info
# lines are 6, the JSON is intact in MESSAGE, and text lines carry no colour.
# Usage: journal.sh MESH_BINARY
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test/lib.sh
. "$here/lib.sh"
mesh=$1
[ "$(id -u)" = 0 ] || fail "journal.sh: run as root (a mount namespace for journald)"
need util-linux:unshare systemd:journalctl systemd:systemd-cat
journald=/lib/systemd/systemd-journald
[ -x "$journald" ] || fail "journal.sh: $journald is missing"

if [ "${1:-}" != --inside ]; then
	exec unshare -m --propagation private "$0" --inside "$mesh"
fi
mesh=$2
mount -t tmpfs tmpfs /run
mkdir -p /var/log/journal
mount -t tmpfs tmpfs /var/log/journal
mkdir -p /run/systemd/journal
"$journald" >/run/journald.out 2>&1 &
jd=$!
trap 'kill "$jd" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	[ -S /run/systemd/journal/stdout ] && break
	sleep 0.1
done
[ -S /run/systemd/journal/stdout ] || { cat /run/journald.out; fail "systemd-journald did not start"; }

# run_agent ID ARGS...: mesh agent for 2s under systemd-cat -t ID, as a unit.
run_agent() {
	id=$1
	shift
	# shellcheck disable=SC2016 # expanded by the inner sh
	systemd-cat -t "$id" sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec timeout -s TERM 2 "$@"' \
		sh "$mesh" agent --service journal --app-port 1 --consul-addr 127.0.0.95:1 \
		--inbound-addr 127.0.0.95:0 --outbound-addr 127.0.0.95:0 --admin-addr 127.0.0.95:0 \
		--drain-period 0s "$@" || true
}
run_agent mesh-json
run_agent mesh-text --log-format text
journalctl --sync 2>/dev/null || sleep 0.5

warn=$(journalctl -t mesh-json -p warning -o cat --no-pager)
case "$warn" in *'"level":"warn"'*'"component":"'*) ;; *)
	journalctl -t mesh-json -o verbose --no-pager | tail -n 30
	fail "journalctl -p warning has no warn line of the agent: $warn" ;;
esac
case "$warn" in *'"level":"info"'*) fail "info lines at warning priority: $warn" ;; esac
journalctl -t mesh-json -p info..info -o cat --no-pager | grep -q '"level":"info".*"message":"listening"' ||
	fail "the agent's info lines are not at priority 6"
# MESSAGE is the whole JSON line, prefix stripped.
journalctl -t mesh-json -p warning -o json --no-pager | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    m = json.loads(e["MESSAGE"])
    assert e["PRIORITY"] == "4" and m["level"] == "warn" and m["component"], e
' || fail "warn entries are not PRIORITY=4 with the JSON line as MESSAGE"
text=$(journalctl -t mesh-text -p warning -o cat --no-pager)
case "$text" in *WRN*) ;; *) fail "text format: no warn line at priority 4: $text" ;; esac
if journalctl -t mesh-text -o cat --no-pager | grep -q "$(printf '\033')"; then
	fail "text format wrote colour codes into the journal"
fi
ok "journald: warn lines at PRIORITY=4 (journalctl -p warning), info at 6, JSON kept, no colour"
