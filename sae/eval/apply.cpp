// apply_dictionary (see apply.h).
#include "sae/eval/apply.h"

#include <algorithm>
#include <vector>

#include "tensor/ops.h"

namespace sae {

namespace {

// Outputs that are not finite (weights that overflow float32 on this input) are an error, as in
// sae_eval, before anything is written: rows [first, first + rows) of width `width`.
void require_finite(const float* values, int64_t first, int64_t rows, int64_t width, const char* what,
                    const std::string& sae_dir) {
  const int64_t i = first_non_finite(values, rows * width);
  if (i >= 0)
    throw DataError(cat(sae_dir, ": the SAE's ", what, " at row ", first + i / width, ", column ", i % width, " is ",
                        values[i], ", not finite: its weights overflow float32 on this input; nothing written"));
}

}  // namespace

void apply_dictionary(const SaeParams& dictionary, const InputNormalization& normalization, ActivationSource& input,
                      const DictionaryOutputs& outputs, Device device, const std::string& sae_dir) {
  const int64_t n = input.num_tokens(), d = input.d(), f = dictionary.d_sae(), d_out = dictionary.d_out();
  if (d != dictionary.d_in())
    throw DataError(cat(input.name(), ": has ", d, " columns but the dictionary's d_in is ", dictionary.d_in()));
  if (normalization.kind == Normalization::Story && (dictionary.sources > 1 || dictionary.transcoder))
    throw DataError(cat(sae_dir, "/cfg.json: sae_cpp.normalization says \"story\", which a ",
                        dictionary.transcoder ? "transcoder" : "crosscoder",
                        " cannot have (each of its activations has a dataset scale, or none); --raw gives it the "
                        "inputs as they are"));
  if (per_token(normalization.kind) && dictionary.sources > 1)
    throw DataError(cat(sae_dir, "/cfg.json: normalize_activations \"", normalization_name(normalization.kind),
                        "\" is read for an SAE or a transcoder, not for a crosscoder; --raw gives it the inputs as they "
                        "are"));
  // A transcoder normalised per token (SAELens's): its input is, its output is the decoder's as it
  // is, and a skip term reads the raw input (docs/contract.md §4 "Per-token normalisation").
  const bool output_as_decoded = dictionary.transcoder && per_token(normalization.kind);
  if (normalization.kind == Normalization::Story && input.num_stories() == 0)
    throw UsageError(cat("the SAE was trained with per-story normalisation and ", input.name(),
                         " has no story boundaries: give a safetensors file with story_lengths, or --raw"));
  // The dataset scales of the input's column blocks and of the output's: a transcoder's input and
  // target have one each; an SAE's and a crosscoder's output is its input.
  const std::vector<int64_t> in_widths = input.block_widths();
  const std::vector<int64_t> out_widths = dictionary.transcoder ? std::vector<int64_t>{d_out} : in_widths;
  const std::vector<double>& scales = normalization.scales.per_block;
  DatasetScales in_scales(std::vector<double>(in_widths.size(), 1.0)),
      out_scales(std::vector<double>(out_widths.size(), 1.0));
  if (normalization.kind == Normalization::Dataset) {
    const size_t expected = in_widths.size() + (dictionary.transcoder ? 1 : 0);
    if (scales.size() != expected)
      throw DataError(cat(sae_dir, "/cfg.json: sae_cpp.dataset_scale has ", scales.size(),
                          " scales but the dictionary's data has ", expected, " column blocks"));
    in_scales = std::vector<double>(scales.begin(), scales.begin() + static_cast<std::ptrdiff_t>(in_widths.size()));
    out_scales = dictionary.transcoder ? DatasetScales(scales.back()) : in_scales;
  }

  // The pieces the SAE sees: one story each for per-story normalisation, else blocks of rows.
  std::vector<std::pair<int64_t, int64_t>> pieces;  // (first token, tokens)
  if (normalization.kind == Normalization::Story) {
    for (int64_t s = 0; s < input.num_stories(); ++s) pieces.push_back({input.story_begin(s), input.story_length(s)});
  } else {
    const int64_t block = encode_block_rows(dictionary);  // (sae/arch/registry.h)
    for (int64_t begin = 0; begin < n; begin += block) pieces.push_back({begin, std::min(block, n - begin)});
  }

  // One piece at a time: N x d_sae floats can be more than memory.
  std::vector<float> out_rows;
  for (const auto& [begin, rows] : pieces) {
    Tensor raw = Tensor::empty(Shape{rows, d}), x = Tensor::empty(Shape{rows, d});
    input.read_tokens(begin, rows, raw.data<float>());
    const BatchStats stats =
        normalize_blocks(raw.data<float>(), x.data<float>(), rows, in_widths, normalization.kind, in_scales,
                         [first = begin](int64_t row) { return first + row; }, input.name());
    const Tensor x_device = x.to(device);
    const Tensor fx = sae_encode(dictionary, x_device);
    if (outputs.features) {
      const Tensor fh = fx.to(Device::CPU);
      require_finite(fh.data<float>(), begin, rows, f, "features", sae_dir);
      outputs.features(fh.data<float>(), rows);
    }
    if (outputs.reconstruction) {
      const Tensor skip_input = output_as_decoded ? raw.to(device) : x_device;
      const Tensor xh = sae_decode(dictionary, fx, &skip_input).to(Device::CPU);
      out_rows.resize(static_cast<size_t>(rows * d_out));
      if (output_as_decoded)
        std::copy_n(xh.data<float>(), rows * d_out, out_rows.data());
      else
        denormalize_blocks(xh.data<float>(), out_rows.data(), rows, out_widths, normalization.kind, out_scales, stats);
      require_finite(out_rows.data(), begin, rows, d_out, "reconstruction", sae_dir);
      outputs.reconstruction(out_rows.data(), rows);
    }
  }
}

}  // namespace sae
