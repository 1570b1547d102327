#!/usr/bin/env bash
# Trains small transcoders of every unit that trains them (standard, standard with --skip, jumprelu,
# batchtopk -> exported as jumprelu) with sae_train from two activation files (x -> y, planted:
# shared sparse codes through random directions, y also linear in part of x), predicts y with our
# sae_apply (which scales x and y back as trained, --normalize dataset), and checks that SAELens
# (pip sae-lens, raw x, the dataset scales folded into the exported weights;
# SAE.load_from_disk on the exported sae/ folder: Transcoder, SkipTranscoder, JumpReLUTranscoder,
# JumpReLUSkipTranscoder) gives the same features and prediction.
# Usage: scripts/check_saelens_transcoders.sh [WORK_DIR] (default /tmp/sae_check_transcoders).
# Needs a build (BUILD=dir, default build).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/sae_check_transcoders}
rm -rf "$work" && mkdir -p "$work"
python3 - "$work" <<'PY'
import sys, numpy as np
work = sys.argv[1]
rng = np.random.default_rng(0)
n, c, d_in, d_out = 4096, 48, 24, 16
A = rng.normal(size=(c, d_in)); A /= np.linalg.norm(A, axis=1, keepdims=True)
B = rng.normal(size=(c, d_out)); B /= np.linalg.norm(B, axis=1, keepdims=True)
codes = np.zeros((n, c))
for t in range(n):
    codes[t, rng.choice(c, 4, replace=False)] = rng.uniform(0.5, 1.5, 4)
x = codes @ A + 0.05 * rng.normal(size=(n, d_in))
y = codes @ B + 0.3 * x @ rng.normal(size=(d_in, d_out))
np.save(f"{work}/x.npy", x.astype(np.float32)); np.save(f"{work}/y.npy", y.astype(np.float32))
PY
common=(--data "$work/x.npy" --target-data "$work/y.npy" --features 96 --steps 300 --batch 256
        --normalize dataset --lr 1e-3 --progress none --checkpoint-every 100000)
kinds=(standard skip jumprelu batchtopk)
for kind in "${kinds[@]}"; do
  case $kind in
    standard) opts=(--l1 1) ;;
    skip) opts=(--l1 1 --skip) ;;
    jumprelu) opts=(--architecture jumprelu --l1 0.5 --skip) ;;
    batchtopk) opts=(--architecture batchtopk --k 8) ;;
  esac
  "${BUILD:-build}"/bin/sae_train "${common[@]}" "${opts[@]}" --out "$work/$kind" > "$work/$kind.log"
  "${BUILD:-build}"/bin/sae_apply --sae "$work/$kind/sae" --input "$work/x.npy" \
    --features-out "$work/$kind.f.npy" --reconstruction-out "$work/$kind.yhat.npy" > /dev/null
done
python3 - "$work" "${kinds[@]}" <<'PY'
import sys, json, numpy as np, torch
from sae_lens import SAE
work = sys.argv[1]
x = torch.from_numpy(np.load(f"{work}/x.npy"))
bad = 0
for kind in sys.argv[2:]:
    tc = SAE.load_from_disk(f"{work}/{kind}/sae", device="cpu")
    with torch.no_grad():
        f = tc.encode(x)
        yhat = tc(x)
    f_ours, y_ours = np.load(f"{work}/{kind}.f.npy"), np.load(f"{work}/{kind}.yhat.npy")
    df = float(np.abs(f.numpy() - f_ours).max())
    dy = float(np.abs(yhat.numpy() - y_ours).max())
    scale = float(np.abs(y_ours).max())
    ok = yhat.shape == y_ours.shape and df <= 1e-4 * max(1.0, float(np.abs(f_ours).max())) and dy <= 1e-4 * max(1.0, scale)
    bad += not ok
    arch = json.load(open(f"{work}/{kind}/sae/cfg.json"))["architecture"]
    print(f"{kind:10s} {type(tc).__name__:24s} cfg {arch:26s} max|df| {df:.2e}  max|dy| {dy:.2e}  "
          f"{'MATCH' if ok else 'MISMATCH'}")
sys.exit(1 if bad else 0)
PY
