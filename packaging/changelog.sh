#!/bin/sh
# Writes a Debian changelog entry for the package being built to stdout:
# the version, the commits since the last tag (at most 50) and the
# maintainer. `make package` gzips it into /usr/share/doc/mesh.
# Usage: changelog.sh VERSION MAINTAINER
set -eu
cd "$(dirname "$0")/.."
version=$1
maintainer=$2
if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
	range=$tag..HEAD
else
	range=HEAD
fi
echo "mesh ($version-1) unstable; urgency=medium"
echo
git log --no-merges --max-count=50 --format='  * %s' "$range" |
	awk 'length > 79 { s = substr($0, 1, 79); sub(/ [^ ]*$/, "", s); $0 = s } 1'
echo
echo " -- $maintainer  $(git log -1 --format=%aD HEAD)"
