// sae_apply: runs a trained SAE of any architecture on activations (docs/contract.md §5
// conventions; the inference rules of docs/architectures.md §3). Thin: options -> load_checkpoint ->
// encode/decode in row blocks -> .npy outputs.
//   sae_apply --sae DIR --input X.npy [--features-out F.npy] [--reconstruction-out XHAT.npy]
// X is [N, d_in] (float32, or f16/f64 converted); F is [N, d_sae] and XHAT [N, d_in], float32.
// The inputs are used as given: the SAE sees exactly what it was trained on only when X was
// normalised the same way (see sae_cpp in cfg.json). Exit 2 for usage errors, 1 for data errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "io/npy.h"
#include "sae/arch_model.h"
#include "sae/cli/cli.h"
#include "sae/train/checkpoint.h"

namespace {
// Rows per encode/decode call: bounds the [rows, d_sae] temporary for large inputs.
constexpr int64_t kBlockRows = 4096;
}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("sae_apply", [&] {
    cxxopts::Options options("sae_apply", "Encode and decode activations with a trained SAE checkpoint");
    options.add_options()
        ("sae", "checkpoint directory (cfg.json + sae_weights.safetensors)", cxxopts::value<std::string>())
        ("input", "activations .npy [N, d_in]", cxxopts::value<std::string>())
        ("features-out", "write the feature activations f [N, d_sae] here (.npy float32)",
         cxxopts::value<std::string>())
        ("reconstruction-out", "write the reconstruction x_hat [N, d_in] here (.npy float32)",
         cxxopts::value<std::string>())
        ("device", "cpu | cuda | auto", cxxopts::value<std::string>()->default_value("cpu"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    if (!parsed.count("sae")) throw sae::UsageError("--sae DIR is required");
    if (!parsed.count("input")) throw sae::UsageError("--input X.npy is required");
    const std::string features_out = parsed.count("features-out") ? parsed["features-out"].as<std::string>() : "";
    const std::string reconstruction_out =
        parsed.count("reconstruction-out") ? parsed["reconstruction-out"].as<std::string>() : "";
    if (features_out.empty() && reconstruction_out.empty())
      throw sae::UsageError("nothing to do: give --features-out and/or --reconstruction-out");
    const sae::Device device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));

    const sae::SaeParams model = sae::load_checkpoint(parsed["sae"].as<std::string>(), device).params;
    const std::string input_path = parsed["input"].as<std::string>();
    sae::NpyFile input = sae::NpyFile::open(input_path);
    if (input.shape().size() != 2)
      throw sae::DataError(sae::cat(input_path, ": expected a 2-D array [N, ", model.d_in(), "], got ",
                                    input.shape().size(), " dims"));
    const int64_t n = input.shape()[0], d = input.shape()[1];
    if (d != model.d_in())
      throw sae::DataError(sae::cat(input_path, ": has ", d, " columns but the SAE's d_in is ", model.d_in()));

    const int64_t f = model.d_sae();
    // Only the requested outputs are held (whole, for write_npy): N x d_sae floats can be large.
    sae::Tensor features, reconstruction;
    if (!features_out.empty()) features = sae::Tensor::empty(sae::Shape{n, f});
    if (!reconstruction_out.empty()) reconstruction = sae::Tensor::empty(sae::Shape{n, d});
    for (int64_t begin = 0; begin < n; begin += kBlockRows) {
      const int64_t rows = std::min(kBlockRows, n - begin);
      sae::Tensor x = input.read_rows_f32(begin, rows);
      const float* px = x.data<float>();
      for (int64_t i = 0; i < rows * d; ++i)
        if (!std::isfinite(px[i]))
          throw sae::DataError(sae::cat(input_path, ": NaN or Inf at row ", begin + i / d, ", column ", i % d));
      const sae::Tensor fx = sae::sae_encode(model, x.to(device));
      if (features.defined()) {
        const sae::Tensor fh = fx.to(sae::Device::CPU);
        std::memcpy(features.data<float>() + begin * f, fh.data<float>(), sizeof(float) * rows * f);
      }
      if (reconstruction.defined()) {
        const sae::Tensor xh = sae::sae_decode(model, fx).to(sae::Device::CPU);
        std::memcpy(reconstruction.data<float>() + begin * d, xh.data<float>(), sizeof(float) * rows * d);
      }
    }
    if (features.defined()) sae::write_npy(features_out, features);
    if (reconstruction.defined()) sae::write_npy(reconstruction_out, reconstruction);
    std::printf("sae_apply: %lld rows, d_in %lld, d_sae %lld\n", static_cast<long long>(n),
                static_cast<long long>(d), static_cast<long long>(f));
    return 0;
  });
}
