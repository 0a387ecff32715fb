#!/bin/sh
# Prints the path of a pristine Debian root tarball for the packaging tests,
# made once with debootstrap and cached under .cache/packaging/ (git-ignored):
# minbase plus what any real VM has (systemd, procps) and what Ansible needs
# on a target (python3, python3-apt). The cache key is the suite and list.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test/lib.sh
. "$here/lib.sh"
cd "$here/../.."

suite=${MESH_TEST_SUITE:-bookworm}
cache=.cache/packaging
include=systemd,procps,python3,python3-apt
tarball=$cache/$suite-$(echo "$include" | md5sum | cut -c1-8).tar
[ -s "$tarball" ] && { echo "$tarball"; exit 0; }

need debootstrap:debootstrap >&2
mirror=$(debian_mirror)
mkdir -p "$cache"
work=$(mktemp -d "$PWD/$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "debootstrap $suite from $mirror (cached in $tarball)" >&2
debootstrap --variant=minbase --include="$include" "$suite" "$work/root" "$mirror" >"$work/log" 2>&1 ||
	{ tail -n 30 "$work/log" >&2; exit 1; }
rm -rf "$work/root/var/cache/apt/archives/"*.deb
tar -C "$work/root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"
