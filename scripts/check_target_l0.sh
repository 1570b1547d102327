#!/usr/bin/env bash
# The L0 set point on data it was not tuned on (docs/architectures.md §7.7): trains standard SAEs with
# --target-l0 on several planted dictionaries, widths and targets, each from three starting lambdas
# (--l1 0: the data's scale lambda_s = sqrt(D / L*), where the controller starts by default; lambda_s
# / 100; 100 lambda_s), 4000 steps of 256 tokens at lr 1e-3, and checks the mean L0 over the last 10%
# of the steps is within 5% of the target. Prints one line per run and a summary; exit status 1 when
# any run misses. 12 runs of 15-60 s each on 2 CPU cores (JOBS runs at once, default 2).
#   scripts/check_target_l0.sh [BUILD_DIR]        (default build; needs bin/sae_train)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build}/bin/sae_train
jobs=${JOBS:-2}
out=$(mktemp -d /tmp/check_target_l0.XXXXXX)
trap 'rm -rf "$out"' EXIT

# name | data options | features | target
cases=(
  "planted_d128_c512|--synthetic-d 128 --synthetic-concepts 512 --synthetic-active 8 --synthetic-zipf 0|1024|12"
  "planted_d64_c256|--synthetic-d 64 --synthetic-concepts 256 --synthetic-active 4 --synthetic-zipf 0 --synthetic-seed 7|512|4"
  "zipf_d96_c768|--synthetic-d 96 --synthetic-concepts 768 --synthetic-active 12 --synthetic-zipf 1 --synthetic-seed 11|768|24"
  "zipf_d128_c1024_wide|--synthetic-d 128 --synthetic-concepts 1024 --synthetic-active 6 --synthetic-zipf 0.5 --synthetic-seed 3|2048|8"
)
common="--synthetic-story-concepts 0 --synthetic-story-active 0 --synthetic-noise 0.01 --synthetic-mean-norm 0 --steps 4000 --batch 256 --normalize dataset --lr 1e-3
        --feature-stats-steps 0 --checkpoint-every 100000 --log-every 10 --progress none --device cpu"

run_one() {  # name data features target start_name l1
  local name=$1 data=$2 features=$3 target=$4 start=$5 l1=$6
  local dir="$out/${name}_$start"
  # shellcheck disable=SC2086
  if ! "$bin" $data $common --features "$features" --target-l0 "$target" --l1 "$l1" --out "$dir" > "$dir.log" 2>&1; then
    echo "$name start $start: FAILED ($(tail -1 "$dir.log"))"
    return
  fi
  awk -F, -v name="$name" -v start="$start" -v target="$target" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { step[NR] = $col["step"]; l0[NR] = $col["l0"]; lam[NR] = $col["l1_coefficient"]; last = NR }
    END {
      for (i = 2; i <= last; i++) if (step[i] > 0.9 * step[last]) { sum += l0[i]; n++ }
      mean = sum / n; off = (mean - target) / target
      printf "%s start %s: last-10%% mean L0 %.2f (target %s, %+.1f%%), lambda at the end %.3g %s\n",
             name, start, mean, target, 100 * off, lam[last], (off < -0.05 || off > 0.05) ? "MISS" : "ok"
    }' "$dir/metrics.csv"
}

pids=()
for c in "${cases[@]}"; do
  IFS='|' read -r name data features target <<< "$c"
  d=$(sed -E 's/.*--synthetic-d ([0-9]+).*/\1/' <<< "$data")
  scale=$(awk -v d="$d" -v t="$target" 'BEGIN { printf "%.6g", sqrt(d / t) }')
  for start in default low high; do
    case $start in
      default) l1=0 ;;
      low) l1=$(awk -v s="$scale" 'BEGIN { printf "%.6g", s / 100 }') ;;
      high) l1=$(awk -v s="$scale" 'BEGIN { printf "%.6g", s * 100 }') ;;
    esac
    run_one "$name" "$data" "$features" "$target" "$start" "$l1" >> "$out/results.txt" &
    pids+=($!)
    if (( ${#pids[@]} >= jobs )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
done
wait
sort "$out/results.txt"
misses=$(grep -c -E "MISS|FAILED" "$out/results.txt" || true)
echo "$(wc -l < "$out/results.txt") runs, $misses missed the target by more than 5%"
[[ $misses == 0 ]]
