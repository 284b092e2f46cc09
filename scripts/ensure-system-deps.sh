#!/usr/bin/env bash
# Debian packages the test suite needs, installed only when missing.
# Usage: scripts/ensure-system-deps.sh [package...]   (default: the test suite's set)
set -euo pipefail

# command (or absolute file path) → Debian package
declare -A PROVIDES=(
  [redis-server]=redis-server
  [pushpin]=pushpin
  [/usr/lib/nginx/modules/ngx_nchan_module.so]=libnginx-mod-nchan
  [chromium]=chromium
  [nginx]=nginx
  [node]=nodejs
  [tmux]=tmux
  [systemd-analyze]=systemd
)

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(redis-server chromium nginx node tmux systemd-analyze)

missing=()
for cmd in "${wanted[@]}"; do
  if [[ "$cmd" == /* ]]; then
    [ -e "$cmd" ] || missing+=("${PROVIDES[$cmd]:-$cmd}")
  else
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PROVIDES[$cmd]:-$cmd}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
