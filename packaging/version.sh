#!/bin/sh
# Prints the package version derived from git, valid for both dpkg and rpm
# (no '-', starts with a digit, sorts upward commit by commit):
#   on a clean tag v1.2.3            1.2.3
#   N commits after v1.2.3           1.2.3+git<N>.<sha>
#   no tag yet                       0.0.0+git<N>.<sha>   (N counts all commits)
#   uncommitted changes              ... then .dirty
set -eu
cd "$(dirname "$0")/.."
sha=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
	base=${tag#v}
	n=$(git rev-list --count "$tag..HEAD")
else
	base=0.0.0
	n=$(git rev-list --count HEAD 2>/dev/null || echo 0)
fi
base=$(printf %s "$base" | tr -- - '~')
version=$base
if [ "$n" -gt 0 ] || [ "$base" = 0.0.0 ]; then
	version=$base+git$n.$sha
fi
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	version=$version.dirty
fi
echo "$version"
