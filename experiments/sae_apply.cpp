// sae_apply: runs a trained SAE of any architecture (the inference
// rules of docs/architectures.md §3) on activations (docs/contract.md §5). Thin: options -> the SAE
// (load_checkpoint) -> apply_dictionary (inputs normalised as in training, encode/decode story by
// story or in row blocks) -> .npy outputs.
//   sae_apply --sae DIR --input X[,X2,...] [--features-out F.npy] [--reconstruction-out XHAT.npy] [--raw]
// X is a .npy [N, d_in] or a safetensors activation file (activations, optional story_lengths; see
// docs/contract.md §4). The SAE sees its inputs normalised the way it was trained (cfg.json
// sae_cpp.normalization: per story, which needs story_lengths, or times dataset_scale), unless
// --raw; F [N, d_sae] holds its features and XHAT [N, d_out] (d_in for an SAE or crosscoder) its
// reconstruction, brought back to the scale of what it reconstructs (X; a transcoder's target). Both
// float32. The work is apply_dictionary (sae/eval/apply.h). Exit 2 for usage errors, 1 for data errors.
#include <cstdio>
#include <optional>

#include "io/npy.h"
#include "sae/cli/cli.h"
#include "sae/data/batches.h"
#include "sae/eval/apply.h"
#include "sae/train/checkpoint.h"

int main(int argc, char** argv) {
  return sae::run_main("sae_apply", argc, argv, [&] {
    cxxopts::Options options("sae_apply", "Encode and decode activations with a trained SAE checkpoint");
    options.add_options()
        ("sae", "checkpoint directory (cfg.json + sae_weights.safetensors; sparsify's cfg.json + sae.safetensors), a Gemma Scope params.npz, or a torch.save .pt (dictionary_learning's ae.pt, OpenAI's)",
         cxxopts::value<std::string>())
        ("input", "activations: .npy [N, d_in], or .safetensors with 'activations' (and 'story_lengths')",
         cxxopts::value<std::string>())
        ("features-out", "write the feature activations f [N, d_sae] here (.npy float32)",
         cxxopts::value<std::string>())
        ("reconstruction-out", "write the reconstruction x_hat [N, d_out] (d_in for an SAE or crosscoder), in the "
                               "scale of what it reconstructs (a transcoder: its target), here (.npy float32)",
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
    std::vector<std::pair<std::string, std::string>> inputs;
    for (const std::string& path : sae::split_option_list("input", input_path)) inputs.push_back({"input", path});
    sae::check_output_files({{"features-out", features_out}, {"reconstruction-out", reconstruction_out}}, inputs);
    const std::unique_ptr<sae::ActivationSource> input =
        sae::open_dictionary_inputs("input", input_path, model.sources, sae_dir);
    // Written block by block (N x d_sae floats can be more than memory), put in place once all is
    // computed: an error on the way leaves no output.
    std::optional<sae::NpyRowWriter> features, reconstruction;
    sae::DictionaryOutputs outputs;
    if (!features_out.empty()) {
      features.emplace(features_out, input->num_tokens(), model.d_sae());
      outputs.features = [&](const float* rows, int64_t n) { features->write_rows(rows, n); };
    }
    if (!reconstruction_out.empty()) {
      reconstruction.emplace(reconstruction_out, input->num_tokens(), model.d_out());
      outputs.reconstruction = [&](const float* rows, int64_t n) { reconstruction->write_rows(rows, n); };
    }
    sae::apply_dictionary(model, normalization, *input, outputs, device, sae_dir);
    if (features) features->commit();
    if (reconstruction) reconstruction->commit();
    std::printf("sae_apply: %lld rows, d_in %lld, d_sae %lld, d_out %lld, inputs normalised: %s\n",
                static_cast<long long>(input->num_tokens()), static_cast<long long>(model.d_in()),
                static_cast<long long>(model.d_sae()), static_cast<long long>(model.d_out()),
                parsed.count("raw") ? "no (--raw)" : sae::normalization_name(normalization.kind));
    return 0;
  });
}
