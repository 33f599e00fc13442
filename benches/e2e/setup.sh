#!/usr/bin/env bash
# Install what the end-to-end benchmark needs from Debian (idempotent, non-interactive).
# Usage: sudo-less as root:  bash benches/e2e/setup.sh
set -euo pipefail

PKGS=(restic borgbackup postgresql time zstd)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present (${PKGS[*]})"
fi

command -v python3 >/dev/null || { echo "setup: python3 is required" >&2; exit 1; }
restic version
borg --version
ls -d /usr/lib/postgresql/*/bin
