#!/usr/bin/env bash
# Installs the Debian packages the build, tests, benchmarks, figures and the browser test need, when
# missing; with --clang also clang with its libFuzzer/sanitizer runtimes and OpenMP, which only
# `make sanitize` and `make fuzz` need (so `make test` on a fresh machine does not pay for clang).
# Fast no-op when everything is present; `make`, `make test` and .ci/run call it.
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libopenblas-openmp-dev   # CPU GEMM; the OpenMP flavour shares one thread pool with our loops
  libcxxopts-dev           # command-line parsing
  zlib1g-dev libzstd-dev   # compressed text corpora (.jsonl.gz, .jsonl.zst)
  libgtest-dev             # tests
  libbenchmark-dev         # benchmarks
  gnuplot-nox              # PNG figures of the experiment drivers
  chromium                 # headless browser: the feature browser's page is rendered in a test
  openmpi-bin libopenmpi-dev  # distributed training (mpirun, sae_train --shards; docs/distributed.md)
)
if [ "${1:-}" = --clang ]; then
  packages+=(
    clang                  # make sanitize / make fuzz (Debian 12: clang 14)
    libclang-rt-dev        # libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer runtimes
    libomp-dev             # OpenMP for clang (the project's loops use it)
  )
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
