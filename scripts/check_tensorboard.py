#!/usr/bin/env python3
"""Reads a TensorBoard log directory with the real tensorboard package and prints every scalar.

Checks that our hand-written event files (sae/tensorboard.cpp) load in TensorBoard itself.
Needs `pip install tensorboard`. Usage:
    python3 scripts/check_tensorboard.py LOG_DIR [--expect tag1,tag2]
Exits 1 when a tag named in --expect is missing, 2 when no scalars are found at all.
"""
import argparse
import os
import sys

from tensorboard.backend.event_processing import event_accumulator


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", help="directory holding events.out.tfevents.* files")
    parser.add_argument("--expect", default="", help="comma-separated scalar tags that must be present")
    args = parser.parse_args()

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
        print(f"{tag}: {len(events)} points")
        for e in events:
            print(f"  step={e.step} value={e.value!r} wall_time={e.wall_time!r}")

    expected = [t for t in args.expect.split(",") if t]
    missing = [t for t in expected if t not in tags]
    if missing:
        print(f"error: missing scalar tags: {', '.join(missing)}", file=sys.stderr)
        return 1
    if not tags:
        print("error: no scalars found", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
