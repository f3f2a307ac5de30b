#!/usr/bin/env bash
# System packages that CI's tests need beyond the venv: podman, runc and debootstrap for scripts/container_test.sh,
# nginx for the scale-out test. Installed with apt-get where we are root and it exists; otherwise this says what
# is missing and goes on (those tests then say themselves that they skip, or why they fail). Never fails.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
declare -A needs=([podman]=podman [runc]=runc [debootstrap]=debootstrap [nginx]=nginx-light)
missing=()
for tool in podman runc debootstrap nginx; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${needs[$tool]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: podman, runc, debootstrap and nginx are installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages: missing ${missing[*]}; not root or no apt-get here, so not installing them"
  exit 0
fi
echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q >/tmp/system_packages.log 2>&1 &&
  apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/system_packages.log 2>&1; }; then
  tail -15 /tmp/system_packages.log
  echo "system packages: could not install ${missing[*]}; going on without them"
fi
exit 0
