// sae_apply: runs a trained SAE of any architecture (the inference
// rules of docs/architectures.md §3) on activations (docs/contract.md §5). Thin: options -> the SAE
// (load_checkpoint) -> its inputs normalised as in training -> encode/decode
// story by story or in row blocks -> .npy outputs.
//   sae_apply --sae DIR --input X[,X2,...] [--features-out F.npy] [--reconstruction-out XHAT.npy] [--raw]
// X is a .npy [N, d_in] or a safetensors activation file (activations, optional story_lengths; see
// docs/contract.md §4). The SAE sees its inputs normalised the way it was trained (cfg.json
// sae_cpp.normalization: per story, which needs story_lengths, or times dataset_scale), unless
// --raw; F [N, d_sae] holds its features and XHAT [N, d_in] its reconstruction brought back to the
// scale of X. Both float32. Exit 2 for usage errors, 1 for data errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "io/npy.h"
#include "sae/arch/registry.h"
#include "sae/cli/cli.h"
#include "sae/data/activations.h"
#include "sae/data/batches.h"
#include "sae/data/concat_source.h"
#include "sae/data/synthetic.h"
#include "sae/train/checkpoint.h"
#include "tensor/ops.h"

namespace {
// Rows per encode/decode call when the data has no stories to go by: bounds the [rows, d_sae]
// temporary for large inputs.
constexpr int64_t kBlockRows = 4096;

// Outputs that are not finite (weights that overflow float32 on this input) are an error, as in
// sae_eval, before anything is written: rows [first, first + rows) of width `width`.
void require_finite(const float* values, int64_t first, int64_t rows, int64_t width, const char* what,
                    const std::string& sae_dir) {
  const int64_t i = sae::first_non_finite(values, rows * width);
  if (i >= 0)
    throw sae::DataError(sae::cat(sae_dir, ": the SAE's ", what, " at row ", first + i / width, ", column ", i % width,
                                  " is ", values[i], ", not finite: its weights overflow float32 on this input; nothing "
                                  "written"));
}

}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("sae_apply", argc, argv, [&] {
    cxxopts::Options options("sae_apply", "Encode and decode activations with a trained SAE checkpoint");
    options.add_options()
        ("sae", "checkpoint directory (cfg.json + sae_weights.safetensors), or a Gemma Scope params.npz",
         cxxopts::value<std::string>())
        ("input", "activations: .npy [N, d_in], or .safetensors with 'activations' (and 'story_lengths')",
         cxxopts::value<std::string>())
        ("features-out", "write the feature activations f [N, d_sae] here (.npy float32)",
         cxxopts::value<std::string>())
        ("reconstruction-out", "write the reconstruction x_hat [N, d_in], in the input's scale, here (.npy float32)",
         cxxopts::value<std::string>())
        ("raw", "give the inputs to the SAE as they are, without the normalisation it was trained with")
        ("device", "cpu | cuda | auto", cxxopts::value<std::string>()->default_value("cpu"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    if (!parsed.count("sae")) throw sae::UsageError("--sae DIR is required");
    if (!parsed.count("input")) throw sae::UsageError("--input FILE is required");
    const std::string features_out = parsed.count("features-out") ? parsed["features-out"].as<std::string>() : "";
    const std::string reconstruction_out =
        parsed.count("reconstruction-out") ? parsed["reconstruction-out"].as<std::string>() : "";
    if (features_out.empty() && reconstruction_out.empty())
      throw sae::UsageError("nothing to do: give --features-out and/or --reconstruction-out");
    const sae::Device device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));

    const std::string sae_dir = parsed["sae"].as<std::string>();
    sae::Checkpoint checkpoint = sae::load_checkpoint(sae_dir, device, /*with_state=*/false);
    const sae::SaeParams& model = checkpoint.params;
    sae::InputNormalization normalization;
    if (!parsed.count("raw")) normalization = sae::trained_normalization(checkpoint.cfg, sae_dir + "/cfg.json");
    // A crosscoder reads one file per source (--input A,B,...), side by side.
    const std::string input_path = parsed["input"].as<std::string>();
    if (model.sources > 1) sae::refuse_path_with_comma("--input", input_path);
    const std::vector<std::string> paths =
        model.sources > 1 ? sae::split_option_list("input", input_path) : std::vector<std::string>{input_path};
    std::vector<std::pair<std::string, std::string>> inputs;
    for (const std::string& path : paths) inputs.push_back({"input", path});
    sae::check_output_files({{"features-out", features_out}, {"reconstruction-out", reconstruction_out}}, inputs);
    if (static_cast<int64_t>(paths.size()) != model.sources)
      throw sae::UsageError(sae::cat("the crosscoder reads ", model.sources, " sources: give --input with ",
                                     model.sources, " files separated by commas, got ", paths.size()));
    std::unique_ptr<sae::ActivationSource> input;
    if (paths.size() == 1) {
      input = sae::open_activations(paths[0], sae::SyntheticOptions{});
    } else {
      std::vector<std::unique_ptr<sae::ActivationSource>> sources;
      for (const std::string& path : paths) sources.push_back(sae::open_activations(path, sae::SyntheticOptions{}));
      input = std::make_unique<sae::ConcatSource>(std::move(sources));
    }
    const int64_t n = input->num_tokens(), d = input->d(), f = model.d_sae(), d_out = model.d_out();
    if (d != model.d_in())
      throw sae::DataError(sae::cat(input_path, ": has ", d, " columns but the dictionary's d_in is ", model.d_in()));
    if (normalization.kind == sae::Normalization::Story && (model.sources > 1 || model.transcoder))
      throw sae::DataError(sae::cat(sae_dir, "/cfg.json: sae_cpp.normalization says \"story\", which a ",
                                    model.transcoder ? "transcoder" : "crosscoder",
                                    " cannot have (each of its activations has a dataset scale, or none); --raw "
                                    "gives it the inputs as they are"));
    if (normalization.kind == sae::Normalization::Story && input->num_stories() == 0)
      throw sae::UsageError(sae::cat("the SAE was trained with per-story normalisation and ", input_path,
                                     " has no story boundaries: give a safetensors file with story_lengths, or --raw"));
    // The dataset scales of the input's column blocks and of the output's: a transcoder's input and
    // target have one each; an SAE's and a crosscoder's output is its input.
    const std::vector<int64_t> in_widths = input->block_widths();
    const std::vector<int64_t> out_widths = model.transcoder ? std::vector<int64_t>{d_out} : in_widths;
    const std::vector<double>& scales = normalization.scales.per_block;
    sae::DatasetScales in_scales(std::vector<double>(in_widths.size(), 1.0)), out_scales(
        std::vector<double>(out_widths.size(), 1.0));
    if (normalization.kind == sae::Normalization::Dataset) {
      const size_t expected = in_widths.size() + (model.transcoder ? 1 : 0);
      if (scales.size() != expected)
        throw sae::DataError(sae::cat(sae_dir, "/cfg.json: sae_cpp.dataset_scale has ", scales.size(),
                                      " scales but the dictionary's data has ", expected, " column blocks"));
      in_scales = std::vector<double>(scales.begin(), scales.begin() + in_widths.size());
      out_scales = model.transcoder ? sae::DatasetScales(scales.back()) : in_scales;
    }

    // The pieces the SAE sees: one story each for per-story normalisation, else blocks of rows.
    std::vector<std::pair<int64_t, int64_t>> pieces;  // (first token, tokens)
    if (normalization.kind == sae::Normalization::Story) {
      for (int64_t s = 0; s < input->num_stories(); ++s) pieces.push_back({input->story_begin(s), input->story_length(s)});
    } else {
      for (int64_t begin = 0; begin < n; begin += kBlockRows) pieces.push_back({begin, std::min(kBlockRows, n - begin)});
    }

    // Only the requested outputs are held (whole, for write_npy): N x d_sae floats can be large.
    sae::Tensor features, reconstruction;
    if (!features_out.empty()) features = sae::Tensor::empty(sae::Shape{n, f});
    if (!reconstruction_out.empty()) reconstruction = sae::Tensor::empty(sae::Shape{n, d_out});
    for (const auto& [begin, rows] : pieces) {
      sae::Tensor raw = sae::Tensor::empty(sae::Shape{rows, d}), x = sae::Tensor::empty(sae::Shape{rows, d});
      input->read_tokens(begin, rows, raw.data<float>());
      const sae::BatchStats stats =
          sae::normalize_blocks(raw.data<float>(), x.data<float>(), rows, in_widths, normalization.kind, in_scales,
                                [first = begin](int64_t row) { return first + row; }, input->name());
      const sae::Tensor x_device = x.to(device);
      const sae::Tensor fx = sae::sae_encode(model, x_device);
      if (features.defined()) {
        const sae::Tensor fh = fx.to(sae::Device::CPU);
        require_finite(fh.data<float>(), begin, rows, f, "features", sae_dir);
        std::memcpy(features.data<float>() + begin * f, fh.data<float>(), sizeof(float) * rows * f);
      }
      if (reconstruction.defined()) {
        const sae::Tensor xh = sae::sae_decode(model, fx, &x_device).to(sae::Device::CPU);
        float* out = reconstruction.data<float>() + begin * d_out;
        sae::denormalize_blocks(xh.data<float>(), out, rows, out_widths, normalization.kind, out_scales, stats);
        require_finite(out, begin, rows, d_out, "reconstruction", sae_dir);
      }
    }
    if (features.defined()) sae::write_npy(features_out, features);
    if (reconstruction.defined()) sae::write_npy(reconstruction_out, reconstruction);
    std::printf("sae_apply: %lld rows, d_in %lld, d_sae %lld, d_out %lld, inputs normalised: %s\n",
                static_cast<long long>(n), static_cast<long long>(d), static_cast<long long>(f),
                static_cast<long long>(d_out),
                parsed.count("raw") ? "no (--raw)" : sae::normalization_name(normalization.kind));
    return 0;
  });
}
