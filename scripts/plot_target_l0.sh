#!/usr/bin/env bash
# The L0 set-point figure of docs/architectures.md §2.9 (docs/figures/target_l0.png): trains the demo
# configuration with --target-l0 8 and plots the batch L0, the controller's smoothed L0 and lambda
# against the step. Needs a build (make; BUILD=dir for another) and gnuplot. Usage: scripts/plot_target_l0.sh [OUT_PNG]
set -euo pipefail
cd "$(dirname "$0")/.."
png=${1:-docs/figures/target_l0.png}
run=$(mktemp -d /tmp/target_l0.XXXXXX)
trap 'rm -rf "$run"' EXIT
"${BUILD:-build}"/bin/sae_train --profile demo --target-l0 8 --out "$run/run" --progress none > "$run/report.txt"
csv="$run/run/metrics.csv"
col() { head -1 "$csv" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1; }
gnuplot <<GP
set terminal pngcairo size 900,420 font ",10" noenhanced
set output "$png"
set datafile separator ","
set key top right
set xlabel "step"
set ylabel "L0 (active latents per token)"
set y2label "lambda"
set ytics nomirror
set y2tics
set logscale y
set yrange [4:200]
set title "sae_train --profile demo --target-l0 8: the controller lowers L0 to the set point"
plot "$csv" every ::1 using $(col step):$(col l0) with lines lw 1 lc rgb "#a0c4e8" title "batch L0", \
     "$csv" every ::1 using $(col step):$(col l0_smoothed) with lines lw 2 lc rgb "#1f5fa8" title "smoothed L0", \
     8 with lines dt 2 lc rgb "black" title "target 8", \
     "$csv" every ::1 using $(col step):$(col l1_coefficient) axes x1y2 with lines lw 2 lc rgb "#c0392b" title "lambda (right axis)"
GP
tail -n +2 "$csv" | tail -25 | awk -F, -v c="$(col l0)" '{s += $c} END {printf "mean L0 over the last 500 steps: %.3f\n", s / NR}'
echo "wrote $png"
