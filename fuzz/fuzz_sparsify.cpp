// Fuzzes sparsify's SAE folders (sae/train/sparsify_folder.h) as load_checkpoint reads them: the
// input's parts (fuzz_util.h kPartMarker) are cfg.json and sae.safetensors, written to a folder named
// as a block (layers.2/). A loaded folder must be a TopK SAE or transcoder with consistent shapes, k
// in [1, d_sae], its unit's check passing, and an autoencoder read at blocks.2.hook_resid_post.
#include <vector>

#include "fuzz_util.h"
#include "sae/arch/registry.h"
#include "sae/train/checkpoint.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts = fuzz::split_parts(data, size);
  const char* files[2] = {"cfg.json", "sae.safetensors"};
  for (size_t i = 0; i < 2; ++i) {
    const std::string relative = std::string("layers.2/") + files[i];
    if (i < parts.size())
      fuzz::write_scratch_file(relative, parts[i]);
    else
      fuzz::remove_scratch(relative);
  }
  Checkpoint c;
  if (!fuzz::attempt([&] { c = load_checkpoint(fuzz::scratch_dir() + "/layers.2", Device::CPU); })) return 0;
  const SaeParams& p = c.params;
  const int64_t d = p.d_in(), f = p.d_sae(), d_out = p.d_out();
  fuzz::require(p.kind == "topk" && !c.state, "a sparsify folder loaded as another kind, or with a state");
  fuzz::require(d >= 1 && f >= 1 && p.W_enc.shape() == Shape({d, f}) && p.b_enc.shape() == Shape({f}) &&
                    p.W_dec.shape() == Shape({f, d_out}) && p.b_dec.shape() == Shape({d_out}),
                "a sparsify folder loaded with inconsistent shapes");
  fuzz::require(!p.W_skip.defined() || (p.transcoder && p.W_skip.shape() == Shape({d, d_out})),
                "a skip path on an autoencoder, or shaped unlike [d_in, d_out]");
  fuzz::require(p.transcoder || d_out == d, "an autoencoder that reconstructs another width");
  const int64_t k = p.settings.at("k").as_int();
  fuzz::require(k >= 1 && k <= f, cat("k ", k, " accepted for ", f, " latents"));
  fuzz::require(fuzz::attempt([&] { unit_of(p).check(p); }), "a sparsify folder fails its unit's check");
  const bool named = c.cfg.at("metadata").has("hook_name");
  fuzz::require(named != p.transcoder && (!named || c.cfg.at("metadata").at("hook_name") == Json("blocks.2.hook_resid_post")),
                "a folder named layers.2 read at another hook");
  return 0;
}
