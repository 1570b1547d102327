"""Writes SAELens's learning-rate and coefficient schedules, step by step, for sae_train's
--lr-warmup-steps, --lr-decay-steps, --lr-schedule (--lr-end, --lr-cycles) and --l1-warmup-steps
(TrainConfig::lr_at / l1_at).

The values come from SAELens's own objects, driven as its trainer drives them (SAETrainer._train_step:
the step runs with the optimiser's lr and the scheduler's value, then lr_scheduler.step() and
CoefficientScheduler.step()): get_lr_scheduler("constant" | "cosineannealing" |
"cosineannealingwarmrestarts", ...) on a torch Adam with lr 1 (lr_end 0.1, SAELens's default lr / 10),
and CoefficientScheduler(warm_up_steps, 1.0). Regenerate and commit:

    python3 scripts/gen_schedule_fixture.py            # writes tests/ref/schedules.safetensors
    python3 scripts/gen_schedule_fixture.py --out F

Each case c holds c_steps, c_lr_warmup, c_lr_decay, c_l1_warmup, c_schedule (0 constant, 1 cosine, 2
cosine with restarts), c_cycles (I64) and c_lr, c_l1 (F64 [steps]: the factor of --lr and of --l1 at
steps 1..steps). tests/sae/train/test_train_config.cpp reads it.
"""
import argparse
import os
import sys

import torch
from sae_lens.training.optim import CoefficientScheduler, get_lr_scheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_io import FixtureWriter  # noqa: E402

SCHEDULES = ["constant", "cosineannealing", "cosineannealingwarmrestarts"]
CASES = [  # steps, lr warm-up, lr decay, l1 warm-up, schedule, restart cycles
    (200, 0, 40, 30, 0, 1),
    (50, 10, 0, 0, 0, 1),
    (50, 10, 20, 49, 0, 1),
    (20, 5, 4, 1, 0, 1),
    (12, 0, 12, 11, 0, 1),
    (30, 10, 20, 0, 0, 1),
    (100, 0, 0, 0, 1, 1),
    (100, 10, 0, 0, 1, 1),
    (100, 10, 20, 5, 1, 1),
    (7, 0, 0, 0, 1, 1),
    (60, 5, 5, 0, 2, 3),
    (50, 0, 0, 0, 2, 4),
    (37, 3, 4, 0, 2, 2),
]  # where the lr warm-up and decay overlap, SAELens's SequentialLR skips the warm-up; sae_train
# multiplies the two factors (docs/contract.md): not compared


def schedule(steps, lr_warmup, lr_decay, l1_warmup, kind, cycles):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lr_scheduler = get_lr_scheduler(SCHEDULES[kind], optimizer, training_steps=steps, lr=1.0, warm_up_steps=lr_warmup,
                                    decay_steps=lr_decay, lr_end=0.1, num_cycles=cycles)
    coefficient = CoefficientScheduler(warm_up_steps=l1_warmup, final_value=1.0)
    lr, l1 = [], []
    for _ in range(steps):
        lr.append(optimizer.param_groups[0]["lr"])
        l1.append(coefficient.value)
        optimizer.step()
        lr_scheduler.step()
        coefficient.step()
    return lr, l1


def main():
    parser = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "ref", "schedules.safetensors"))
    args = parser.parse_args()
    import sae_lens
    w = FixtureWriter()
    w.put_text("sae_lens_version", sae_lens.__version__)
    w.put("cases", len(CASES))
    for c, (steps, lr_warmup, lr_decay, l1_warmup, kind, cycles) in enumerate(CASES):
        lr, l1 = schedule(steps, lr_warmup, lr_decay, l1_warmup, kind, cycles)
        for name, value in (("steps", steps), ("lr_warmup", lr_warmup), ("lr_decay", lr_decay), ("l1_warmup", l1_warmup),
                            ("schedule", kind), ("cycles", cycles)):
            w.put(f"{c}_{name}", value)
        w.put(f"{c}_lr", lr, dtype="float64")
        w.put(f"{c}_l1", l1, dtype="float64")
    w.save(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
