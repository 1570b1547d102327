#!/usr/bin/env bash
# Trains a small SAE of every architecture with sae_train (built-in synthetic data, d 64, F 256,
# --normalize dataset), encodes and decodes raw inputs with our sae_apply (which scales them as the
# SAE was trained), and checks that SAELens (pip sae-lens; SAE.load_from_disk on the exported sae/
# folder, whose weights have the dataset scale folded in as SAELens folds it) gives the same
# features and reconstruction from the same raw inputs, then runs scripts/check_saelens_archs.py on
# the same folders.
# Usage: scripts/check_saelens_trained.sh [WORK_DIR] (default /tmp/sae_check_saelens). Needs a build
# (BUILD=dir, default build); EXTRA_TRAIN_ARGS adds options to every run (e.g. --apply-b-dec-to-input).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/sae_check_saelens}
rm -rf "$work" && mkdir -p "$work"
common=(--synthetic-d 64 --features 256 --steps 400 --batch 256 --normalize dataset --lr 1e-3 --progress none
        --checkpoint-every 100000)
python3 -c "import numpy as np; np.save('$work/x.npy', np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32) * 3)"
archs=(standard topk batchtopk jumprelu gated matryoshka_batchtopk)
for arch in "${archs[@]}"; do
  case $arch in
    standard) opts=(--l1 1) ;;
    topk | batchtopk) opts=(--architecture "$arch" --k 8) ;;
    jumprelu) opts=(--architecture jumprelu --l1 0.5) ;;
    gated) opts=(--architecture gated --l1 1) ;;
    matryoshka_batchtopk) opts=(--architecture matryoshka_batchtopk --k 8 --matryoshka-widths 32,128,256) ;;
  esac
  # shellcheck disable=SC2086  # EXTRA_TRAIN_ARGS: more sae_train options for every run, split on spaces
  "${BUILD:-build}"/bin/sae_train "${common[@]}" "${opts[@]}" ${EXTRA_TRAIN_ARGS:-} --out "$work/$arch" > "$work/$arch.log"
  "${BUILD:-build}"/bin/sae_apply --sae "$work/$arch/sae" --input "$work/x.npy" \
    --features-out "$work/$arch.f.npy" --reconstruction-out "$work/$arch.xhat.npy" > /dev/null
done
python3 - "$work" "${archs[@]}" <<'PY'
import sys, json, numpy as np, torch
from sae_lens import SAE
work = sys.argv[1]
x = torch.from_numpy(np.load(f"{work}/x.npy"))
bad = 0
for arch in sys.argv[2:]:
    sae = SAE.load_from_disk(f"{work}/{arch}/sae", device="cpu")
    with torch.no_grad():
        f = sae.encode(x)
        xhat = sae.decode(f)
    f_ours, xhat_ours = np.load(f"{work}/{arch}.f.npy"), np.load(f"{work}/{arch}.xhat.npy")
    df = float(np.abs(f.numpy() - f_ours).max())
    dx = float(np.abs(xhat.numpy() - xhat_ours).max())
    flips = int(((f.numpy() > 0) != (f_ours > 0)).sum())
    scale = float(np.abs(xhat_ours).max())
    ok = flips == 0 and df <= 1e-4 * max(1.0, float(np.abs(f_ours).max())) and dx <= 1e-4 * max(1.0, scale)
    bad += not ok
    print(f"{arch:9s} SAELens class {type(sae).__name__:18s} L0 {float((f_ours > 0).sum(1).mean()):6.2f}  "
          f"max|f - f_ours| {df:.2e}  max|x_hat - x_hat_ours| {dx:.2e}  active-set flips {flips}  {'ok' if ok else 'MISMATCH'}")
sys.exit(1 if bad else 0)
PY
folders=()
for arch in "${archs[@]}"; do folders+=("$work/$arch/sae"); done
python3 scripts/check_saelens_archs.py "${folders[@]}"
