# Shared by the packaging tests: install missing Debian packages, find the
# machine's Debian mirror. Sourced, not run.

# need PKG:CMD...: apt-get install each PKG whose CMD is missing.
need() {
	missing=
	for spec in "$@"; do
		cmd=${spec#*:}
		pkg=${spec%%:*}
		command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
	done
	[ -z "$missing" ] && return 0
	echo "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086 # word splitting wanted
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# debian_mirror prints the first non-security Debian mirror configured in
# apt (deb822 .sources or one-line sources.list), else deb.debian.org.
debian_mirror() {
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f"
	done | head -n1 | grep . && return 0
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' |
		head -n1 | grep . && return 0
	echo http://deb.debian.org/debian
}

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

ok() {
	echo "ok: $*"
}
