// Evaluation during training (sae_train --eval-text; docs/contract.md §6): each checkpoint of a run,
// and its final model, is scored while it is saved exactly as `sae_eval --sae CHECKPOINT --text
// EVAL_TEXT --max-stories N` scores it (evaluate.h: CE and KL with the reconstruction spliced in,
// zero and mean ablation, their scores, FVU, L0, densities), at float32 whatever the run's
// --precision. Its eval.json (sae_eval's, with "training": {"step", "tokens"}) is written into the
// folder being built, so it is put in place with the checkpoint, atomically, and moves with it when a
// rewind sets checkpoints aside. RUN/evals.csv gathers the eval.json of every checkpoint in the run's
// folder (a function of them: rewritten whole, never appended), one row per step.
#pragma once
#include <string>

#include "sae/train/trainer.h"

namespace sae {

// The evaluator sae_train hands to train_together (trainer.h CheckpointEvaluator): it loads the run's
// whole model (--model) and tokenizer on the run's device the first time, and keeps them. Errors are
// the evaluation's (a corpus without a story: DataError), thrown from the save, which then leaves
// nothing of that checkpoint behind.
CheckpointEvaluator checkpoint_evaluator();

// Writes RUN/evals.csv from the eval.json of RUN's checkpoints (sae/ and checkpoints/step_N, one row
// per step): step, tokens (trained on), eval_stories and eval_tokens (what it was scored on: a
// --resume may change --eval-text or --eval-stories), the four runs' CE, KL of the spliced and ablated runs, the four scores, FVU,
// L0, dead and dense features, MSE and cosine (a null, such as a score whose denominator vanished:
// nan). Returns its path, or "" when no checkpoint holds an eval.json (then an old evals.csv is
// removed: it would describe checkpoints no longer there).
std::string write_evals_csv(const std::string& run_dir);

}  // namespace sae
