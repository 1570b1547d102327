#!/usr/bin/env bash
# Installs what `make fuzz` needs beyond scripts/install-deps.sh, when missing: clang with its
# libFuzzer and sanitizer runtimes, and clang's OpenMP. Only `make fuzz` calls it, so `make test`
# on a fresh machine does not pay for clang. (`make sanitize` builds with g++ and needs nothing more.)
set -euo pipefail

packages=(
  clang            # the compiler (Debian 12: clang 14)
  libclang-rt-dev  # libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer runtimes for clang
  libomp-dev       # OpenMP for clang (the project's loops use it)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-fuzz-deps: installing ${missing[*]}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd="sudo"; else
    echo "install-fuzz-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
