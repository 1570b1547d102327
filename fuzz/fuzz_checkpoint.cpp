// Fuzzes checkpoint folders as --resume and --init read them (sae/train/checkpoint.h). The input's
// parts (fuzz_util.h kPartMarker) are cfg.json, sae_weights.safetensors and, when there is a third,
// training_state.safetensors; they are written to RUN/checkpoints/step_1/ in a scratch folder.
// find_latest_checkpoint(RUN) and load_checkpoint run on it; a loaded checkpoint must have
// consistent shapes, and its saved data position is restored into a Batcher over a small
// in-memory data set (story and token mode; one of them refuses the other's position) which then
// draws a batch.
#include <cmath>
#include <vector>

#include "fuzz_util.h"
#include "sae/data/batches.h"
#include "sae/arch/registry.h"
#include "sae/train/checkpoint.h"

using namespace sae;

namespace {

// 40 stories of 1, 2, 3, 4, 1, 2, ... tokens (100 in all; the seeds' data positions fit) of
// width 2 with distinct finite values.
class SmallSource : public ActivationSource {
 public:
  int64_t d() const override { return 2; }
  int64_t num_tokens() const override { return 100; }
  int64_t num_stories() const override { return 40; }
  int64_t story_begin(int64_t story) const override {
    static const int64_t within[4] = {0, 1, 3, 6};
    return story / 4 * 10 + within[story % 4];
  }
  int64_t story_length(int64_t story) const override { return story % 4 + 1; }
  void read_tokens(int64_t begin, int64_t count, float* out) override {
    fuzz::require(begin >= 0 && count >= 0 && begin + count <= 100, "a batcher read tokens outside the data");
    for (int64_t i = 0; i < count * 2; ++i) out[i] = static_cast<float>(begin * 2 + i) * 0.25f - 1.0f;
  }
  Json describe() const override { return Json("small"); }
  std::string name() const override { return "small source"; }
};

void check_shapes(const Checkpoint& c) {
  const int64_t d = c.params.d_in(), f = c.params.d_sae();
  fuzz::require(d >= 1 && f >= 1, cat("a checkpoint with d_in ", d, " and d_sae ", f, " was accepted"));
  fuzz::require(c.params.W_enc.shape() == Shape({d, f}) && c.params.W_dec.shape() == Shape({f, d}) &&
                    (!c.params.b_enc.defined() || c.params.b_enc.shape() == Shape({f})) &&
                    c.params.b_dec.shape() == Shape({d}),
                "a checkpoint's parameter shapes disagree");
  fuzz::require(fuzz::attempt([&] { unit_of(c.params).check(c.params); }), "a checkpoint fails its unit's check");
  if (!c.state) return;
  fuzz::require(static_cast<int64_t>(c.state->last_fired.size()) == f, "last_fired does not have d_sae entries");
  const auto params = c.params.present(), m = c.state->adam.m.present(), v = c.state->adam.v.present();
  fuzz::require(m.size() == params.size() && v.size() == params.size(), "Adam moments for other tensors");
  for (size_t i = 0; i < params.size(); ++i)
    fuzz::require(m[i].second->shape() == params[i].second->shape() && v[i].second->shape() == params[i].second->shape(),
                  "Adam moments are shaped unlike the parameters");
}

void restore_position(const Json& position) {
  SmallSource source;
  std::vector<float> raw(100 * 2), normalized(100 * 2);
  for (int64_t batch_tokens : {int64_t(0), int64_t(3)}) {
    fuzz::attempt([&] {
      Batcher batcher(source, batch_tokens, batch_tokens == 0 ? Normalization::Story : Normalization::None, 1.0, 1);
      batcher.restore(position);
      BatchStats stats;
      const int64_t n = batcher.next(raw.data(), normalized.data(), stats);
      fuzz::require(n >= 1 && n <= batcher.max_batch_tokens(), "a restored batcher drew a batch of the wrong size");
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts = fuzz::split_parts(data, size);
  // The folders stay from run to run (creating and removing them made each run wait for the disk);
  // the files are rewritten, or removed when the input has no part for them.
  const char* files[3] = {"cfg.json", "sae_weights.safetensors", "training_state.safetensors"};
  for (size_t i = 0; i < 3; ++i) {
    const std::string relative = std::string("run/checkpoints/step_1/") + files[i];
    if (i < parts.size())
      fuzz::write_scratch_file(relative, parts[i]);
    else
      fuzz::remove_scratch(relative);
  }
  const std::string folder = fuzz::scratch_dir() + "/run/checkpoints/step_1";

  std::string latest;
  if (fuzz::attempt([&] { latest = find_latest_checkpoint(fuzz::scratch_dir() + "/run"); }))
    fuzz::require(latest == folder, "find_latest_checkpoint found another folder: " + fuzz::escaped(latest));

  Checkpoint checkpoint;
  if (!fuzz::attempt([&] { checkpoint = load_checkpoint(folder, Device::CPU); })) return 0;
  check_shapes(checkpoint);
  if (checkpoint.state) restore_position(checkpoint.state->batcher);
  return 0;
}
