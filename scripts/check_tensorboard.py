#!/usr/bin/env python3
"""Reads a TensorBoard log directory with the real tensorboard package and prints every scalar.

Checks that our hand-written event files (io/tensorboard.cpp) load in TensorBoard itself.
Needs `pip install tensorboard`. Usage:
    python3 scripts/check_tensorboard.py LOG_DIR [--expect tag1,tag2|csv] [--csv metrics.csv] [--quiet]
--csv compares every scalar with the run's metrics.csv: each column but `step` must be a tag with
exactly the CSV's steps, and each value must equal the CSV value rounded to float32 (TensorBoard
stores float32; the CSV holds 9 significant digits, so up to 1 ulp of float32 is allowed).
`--expect csv` expects exactly the CSV's columns (less step) as tags.
Exits 1 when a tag named in --expect is missing or a value/step disagrees with the CSV, 2 when no
scalars are found at all.
"""
import argparse
import csv
import math
import os
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator


def float32(x):
    """x rounded to the nearest float32 (as a Python float)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def float32_ulp(x):
    """The gap between |float32(x)| and the next float32 up."""
    f = abs(float32(x))
    if math.isinf(f) or math.isnan(f):
        return 0.0
    bits = struct.unpack("<I", struct.pack("<f", f))[0]
    return struct.unpack("<f", struct.pack("<I", bits + 1))[0] - f


def read_csv(path):
    """(columns, rows) of metrics.csv, values as floats; the first column must be step."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[float(v) for v in row] for row in reader if row]
    if not header or header[0] != "step":
        raise ValueError(f"{path}: first column is {header[:1]}, expected step")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {i + 2} has {len(row)} values, header has {len(header)}")
    return header, rows


def compare_with_csv(acc, tags, csv_path):
    """Every CSV column (less step) against its TensorBoard scalar series; returns problems."""
    header, rows = read_csv(csv_path)
    problems = []
    checked = 0
    worst_ulps = 0.0
    csv_steps = [int(r[0]) for r in rows]
    for col, name in enumerate(header[1:], start=1):
        if name not in tags:
            problems.append(f"{name}: in {csv_path} but not a TensorBoard scalar")
            continue
        events = acc.Scalars(name)
        tb_steps = [e.step for e in events]
        if tb_steps != csv_steps:
            problems.append(f"{name}: TensorBoard steps {tb_steps[:5]}... ({len(tb_steps)}) != CSV steps "
                            f"{csv_steps[:5]}... ({len(csv_steps)})")
            continue
        for row, e in zip(rows, events):
            want = row[col]
            got = float(e.value)
            if math.isnan(want) and math.isnan(got):
                continue
            diff = abs(got - float32(want))
            ulp = float32_ulp(want)
            if diff > ulp:
                problems.append(f"{name} step {e.step}: TensorBoard {got!r} vs CSV {want!r} (float32 {float32(want)!r})")
            elif ulp > 0:
                worst_ulps = max(worst_ulps, diff / ulp)
            checked += 1
    print(f"csv: compared {checked} values ({len(header) - 1} tags x {len(rows)} steps) with {csv_path}; "
          f"largest difference {worst_ulps:g} float32 ulp")
    extra = sorted(set(tags) - set(header[1:]))
    if extra:
        print(f"note: TensorBoard tags not in the CSV: {', '.join(extra)}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", help="directory holding events.out.tfevents.* files")
    parser.add_argument("--expect", default="",
                        help="comma-separated scalar tags that must be present, or 'csv' for the --csv columns")
    parser.add_argument("--csv", default=None, help="metrics.csv to compare steps and values with")
    parser.add_argument("--quiet", action="store_true", help="print a summary per tag, not every point")
    args = parser.parse_args()
    if args.expect == "csv" and not args.csv:
        parser.error("--expect csv needs --csv PATH")

    if not os.path.isdir(args.log_dir):
        print(f"error: {args.log_dir} is not a directory", file=sys.stderr)
        return 2
    files = sorted(f for f in os.listdir(args.log_dir) if "tfevents" in f)
    print(f"event files: {', '.join(files) if files else '(none)'}")

    # size_guidance 0 = keep every event (the default samples scalars down to 10000 per tag).
    acc = event_accumulator.EventAccumulator(args.log_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in sorted(tags):
        events = acc.Scalars(tag)
        print(f"{tag}: {len(events)} points" +
              (f", steps {events[0].step}..{events[-1].step}, last value {events[-1].value!r}"
               if args.quiet and events else ""))
        if not args.quiet:
            for e in events:
                print(f"  step={e.step} value={e.value!r} wall_time={e.wall_time!r}")

    if args.expect == "csv":
        expected = read_csv(args.csv)[0][1:]
    else:
        expected = [t for t in args.expect.split(",") if t]
    missing = [t for t in expected if t not in tags]
    if missing:
        print(f"error: missing scalar tags: {', '.join(missing)}", file=sys.stderr)
        return 1
    if not tags:
        print("error: no scalars found", file=sys.stderr)
        return 2
    if args.csv:
        problems = compare_with_csv(acc, tags, args.csv)
        for p in problems[:20]:
            print(f"error: {p}", file=sys.stderr)
        if problems:
            print(f"error: {len(problems)} disagreements with {args.csv}", file=sys.stderr)
            return 1
        print("csv: every step and value matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
