#!/usr/bin/env bash
# Install what the end-to-end benchmark needs from Debian (idempotent, non-interactive).
# Usage: sudo-less as root:  bash benches/e2e/setup.sh [--cargo]
#   --cargo   also `cargo install --locked` rustic (crate rustic-rs) and bupstash, the two
#             optional tools of compare.sh / volume.sh, if not on PATH yet (long: ~30-60 min
#             of compiling on 2 cores; CARGO_INSTALL_JOBS=N sets cargo's -j [default: 1])
set -euo pipefail

CARGO=0
case ${1:-} in
  --cargo) CARGO=1 ;;
  "") ;;
  *) echo "setup.sh: unknown argument $1 (only --cargo)" >&2; exit 2 ;;
esac

PKGS=(restic borgbackup postgresql time zstd attr acl)

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

if ((CARGO)); then
  command -v cargo >/dev/null || { echo "setup: --cargo needs cargo (rustup)" >&2; exit 1; }
  # bupstash's build script links the system libsodium (found by pkg-config).
  if ! dpkg-query -W -f='${Status}' libsodium-dev 2>/dev/null | grep -q 'install ok installed'; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libsodium-dev pkg-config
  fi
  for crate_bin in rustic-rs:rustic bupstash:bupstash; do
    crate=${crate_bin%%:*} bin=${crate_bin##*:}
    if command -v "$bin" >/dev/null; then
      echo "setup: $bin present"
    else
      echo "setup: cargo install --locked $crate"
      nice -n 19 cargo install --locked -j "${CARGO_INSTALL_JOBS:-1}" "$crate"
    fi
  done
  rustic --version
  bupstash version
fi
