#!/usr/bin/env bash
# Builds, on this machine (nvcc, OpenBLAS, GoogleTest and Google Benchmark installed), what a GPU
# sitting needs on the device machine, whose image (as described for the device machine's GPU
# kinds, not checked yet) has nvcc, CUDA's libraries and PyTorch but none of our Debian libraries, and no
# network: the programs for sm_90 with a generic x86-64-v3 CPU target, and the shared libraries
# they need that the device may lack, packed as .device/bundle.tar.xz (~23 MB; .device/ is
# git-ignored). Built without MPI (and so without NCCL): the device runs one GPU, and Debian's Open
# MPI libraries are not on it; the bundle is refused here if any program needs a library it neither
# carries nor can expect on the device (CUDA's, the C/C++ runtime's). On the device, scripts/device_check.sh unpacks and runs it
# (.device carried along with the checkout). The build lives in build-device/ of this checkout, and
# the bundle records this checkout's path (source_root): the tests look up fixtures and programs by
# the paths compiled into them, and device_check.sh makes that path lead to the device's copy.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-device"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSAE_NATIVE=OFF -DSAE_CUDA=ON -DSAE_MPI=OFF \
  -DCMAKE_CXX_FLAGS="-march=x86-64-v3" -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build "$build" -j"$(nproc)"
stage="$root/.device/stage"
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/lib"
for program in "$build"/bin/*; do  # every program: the tests run the experiment binaries too
  [ -x "$program" ] && [ -f "$program" ] || continue
  cp "$program" "$stage/bin/" && strip "$stage/bin/$(basename "$program")"
done
# Every library the programs load from outside CUDA's own folders and the C/C++ runtime (zlib and
# zstd: the .npz reader).
ldd "$stage"/bin/* | awk '/=>/ {print $3}' | sort -u |
  grep -E 'openblas|gfortran|quadmath|gomp|benchmark|cxxopts|/libz\.so|libzstd' | while read -r lib; do
  cp -L "$lib" "$stage/lib/"
done
# Nothing else: a library found here (Debian's) but on neither list would be missing on the device.
missing=$(ldd "$stage"/bin/* | awk '/=>/ {print $3}' | sort -u | while read -r lib; do
  name=$(basename "$lib")
  [ -e "$stage/lib/$name" ] && continue
  case "$name" in
    libc.so*|libm.so*|libmvec.so*|libstdc++.so*|libgcc_s.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;;
    libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libnvrtc*|libnvJitLink*) ;;
    *) echo "$lib" ;;
  esac
done)
if [ -n "$missing" ]; then
  echo "device_bundle.sh: the programs need libraries the bundle does not carry and the device may lack:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "$root" > "$stage/source_root"
tar -C "$stage" -cJf "$root/.device/bundle.tar.xz" bin lib source_root
rm -rf "$stage"
ls -la "$root/.device/bundle.tar.xz"
