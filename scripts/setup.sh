#!/usr/bin/env bash
# Installs what banger needs on Debian 12 (as root): host packages, npm dependencies, the build, and the
# `banger` command on PATH. With --test, also what the test suite needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: scripts/setup.sh [--test]

Installs what banger needs on Debian 12, as root: the host packages (QEMU, qemu-utils, mmdebstrap,
e2fsprogs, OpenSSH client, nftables, uidmap for image builds as a normal user, ...), the npm dependencies, the build, and `banger` / `bangerd`
on PATH (npm link). Safe to run again: it installs only what is missing.

  --test    also what the test suite needs (git, dig, fish), for `npm test`
  -h, --help  this text
USAGE
}

want_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg'" >&2; usage >&2; exit 64 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

packages=(qemu-system-x86 qemu-utils mmdebstrap busybox-static cpio zstd e2fsprogs openssh-client ca-certificates util-linux uidmap iproute2 nftables)
if [ "$want_tests" = 1 ]; then
  packages+=(git dnsutils fish)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "==> npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "==> build"
npm run -s build
if ! command -v banger >/dev/null 2>&1 || [ "$(readlink -f "$(command -v banger)")" != "$(readlink -f dist/banger.js)" ]; then
  echo "==> npm link (puts banger and bangerd on PATH)"
  npm link --no-audit --no-fund --loglevel=error >/dev/null
fi
echo "==> ready: $(command -v banger)"
