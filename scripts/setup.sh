#!/bin/sh
# Install the Debian packages vmferry needs to build, test and benchmark.
# Run as root (make check / make demo call it); as another user it prints
# the exact apt-get line to run and fails. VMFERRY_PACKAGES overrides the
# package list (for testing this script).
set -eu

PACKAGES="${VMFERRY_PACKAGES:-gcc make libc6-dev clang libclang-rt-14-dev libtsan2 libjson-c-dev libcmocka-dev liburing-dev iproute2 procps fio nftables}"

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
# On a fresh machine another apt-get (unattended-upgrades, cloud-init) may
# hold the package locks: wait for it instead of failing. apt-get waits for
# the dpkg lock itself with DPkg::Lock::Timeout, but `apt-get update` does
# not wait for the package lists' lock, so wait here for all of them first
# (lslocks, from util-linux, lists the fcntl locks apt and dpkg hold).
lock_timeout_s=600
apt_locks_held() {
	lslocks -n -o PATH 2>/dev/null |
		grep -qxE '/var/lib/dpkg/lock(-frontend)?|/var/lib/apt/lists/lock|/var/cache/apt/archives/lock'
}
if apt_locks_held; then
	echo "vmferry setup: another apt-get or dpkg holds the package lock; waiting for it (up to $lock_timeout_s s)"
	waited_s=0
	while apt_locks_held && [ "$waited_s" -lt "$lock_timeout_s" ]; do
		sleep 2
		waited_s=$((waited_s + 2))
	done
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=$lock_timeout_s update -qq
# shellcheck disable=SC2086
apt-get -o DPkg::Lock::Timeout=$lock_timeout_s install -y -qq --no-install-recommends $missing >/dev/null
