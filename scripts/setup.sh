#!/bin/sh
# Install the Debian packages vmferry needs to build, test and benchmark.
# Run as root (make check / make demo call it); as another user it prints
# the exact apt-get line to run and fails.
set -eu

PACKAGES="gcc make libc6-dev clang libclang-rt-14-dev libtsan2 libjson-c-dev libcmocka-dev iproute2 procps"

missing=""
for p in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "vmferry setup: missing Debian packages:$missing" >&2
	echo "run as root:  apt-get update && apt-get install -y$missing" >&2
	exit 1
fi
echo "vmferry setup: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
