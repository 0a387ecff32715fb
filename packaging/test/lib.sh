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

# old_deb DEB VERSION DIR: build, in DIR, an older .deb from this tree
# (needs bin/nfpm): its binary stamped VERSION (so `mesh version` tells old
# from new) and its shipped /etc/mesh/mesh.yaml different from DEB's
# (policies.default.timeout 20s), so that an upgrade to DEB changes that
# conffile. Prints the .deb's path.
old_deb() {
	od_new=$1 od_v=$2 od_dir=$3
	mkdir -p "$od_dir/bin" "$od_dir/dist" "$od_dir/out"
	cp -r packaging systemd LICENSE "$od_dir/"
	sed -i 's/^    timeout: 15s$/    timeout: 20s/' "$od_dir/packaging/etc/mesh.yaml"
	grep -q '^    timeout: 20s$' "$od_dir/packaging/etc/mesh.yaml" || fail "old_deb: could not change the shipped mesh.yaml"
	CGO_ENABLED=0 ${GO:-go} build -trimpath -o "$od_dir/bin/mesh" \
		-ldflags "-s -w -X github.com/meshvm/mesh/buildinfo.Version=$od_v -X github.com/meshvm/mesh/buildinfo.Commit=oldtest" . ||
		fail "building the old binary"
	od_m=$(dpkg-deb -f "$od_new" Maintainer)
	packaging/changelog.sh "$od_v" "$od_m" | gzip -9n >"$od_dir/dist/changelog.Debian.gz"
	(cd "$od_dir" && MESH_PKG_VERSION=$od_v MESH_MAINTAINER=$od_m GOARCH=$(dpkg-deb -f "$od_new" Architecture) \
		"$OLDPWD/bin/nfpm" package -f packaging/nfpm.yaml -p deb -t out/ >/dev/null) || fail "nfpm: the old package"
	dpkg --compare-versions "$od_v" lt "$(dpkg-deb -f "$od_new" Version)" || fail "old package $od_v is not older than $od_new"
	echo "$od_dir"/out/mesh_*.deb
}
