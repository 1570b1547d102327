// Fuzzes a model folder's config.json (lm/model_loader.h read_model_config, lm/model_family.h): the
// input is parsed as JSON and read by the family its model_type names (GPT-Neo, GPT-2, GPT-NeoX). A
// config that reads must be consistent (DecoderConfig::check) and list parameters whose sizes fit
// in int64; a small one is built with random weights and run on a few tokens: finite logits, every
// hook point the model has readable, the hooks it has not refused with one line.
#include <cmath>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "lm/model_loader.h"
#include "tensor/rng.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Json json;
  if (!fuzz::attempt([&] { json = Json::parse(std::string(reinterpret_cast<const char*>(data), size)); })) return 0;
  DecoderConfig config;
  if (!fuzz::attempt([&] { config = family_for(json, "config.json").parse_config(json, "config.json"); })) return 0;
  fuzz::require(fuzz::attempt([&] { config.check(); }), "a config that reads is inconsistent");
  int64_t total = 0;
  for (const auto& [name, shape] : config.parameter_shapes(-1, true)) {
    int64_t n = 1;
    for (int64_t s : shape) fuzz::require(!__builtin_mul_overflow(n, s, &n), cat("parameter ", name, "'s size overflows"));
    fuzz::require(!__builtin_add_overflow(total, n, &total), "the parameters' total size overflows");
  }
  if (total > 200000 || config.max_positions > 64) return 0;  // keep runs fast
  Rng rng(1);
  NamedTensors parameters;
  for (const auto& [name, shape] : config.parameter_shapes(-1, true))
    parameters[name] = uniform_tensor(Shape::from_vector(shape), -0.5, 0.5, rng);
  DecoderModel model = DecoderModel::from_parameters(config, parameters, Device::CPU, "fuzz");
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < std::min<int64_t>(3, config.max_positions); ++i)
    ids.push_back(static_cast<int32_t>(i % config.vocab_size));
  const std::vector<double> logits = model.logits(ids).to_vector();
  for (double v : logits) fuzz::require(std::isfinite(v), "the logits of a model with finite weights are not finite");
  for (HookPoint p : {HookPoint::ResidPre, HookPoint::AttnZ, HookPoint::AttnOut, HookPoint::ResidMid,
                      HookPoint::Ln2Normalized, HookPoint::MlpOut, HookPoint::ResidPost})
    fuzz::attempt([&] { model.forward_to_site(ids, HookSite{config.num_layers - 1, p}); });
  fuzz::attempt([&] { model.forward_to_site(ids, HookSite{config.num_layers, HookPoint::ResidPre}); });
  return 0;
}
