// sae_eval: an SAE spliced into the language model at its layer, scored over the stories of a
// corpus as SAELens scores it (docs/contract.md §6): next-token cross-entropy clean, with the SAE's
// reconstruction, with the layer zero-ablated and mean-ablated; KL to the clean run; CE and KL
// scores; FVU, L0, dead and dense features and a feature-density histogram. Thin: options -> model,
// tokenizer, SAE (sae/eval/sae_at_layer.h) -> evaluate_sae (sae/eval/evaluate.h) -> eval.json, the
// figure, the printed report.
//   sae_eval --model DIR --sae DIR --text FILE [--max-stories N] [--layer L] [--out DIR]
#include <cstdio>
#include <filesystem>

#include "io/atomic_file.h"
#include "lm/gpt_neo.h"
#include "lm/tokenizer.h"
#include "sae/cli/cli.h"
#include "sae/eval/evaluate.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/report/plot.h"
#include "sae/train/train_config.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  return sae::run_main("sae_eval", argc, argv, [&] {
    cxxopts::Options options("sae_eval", "Score an SAE spliced into its language model: CE and KL with the "
                                         "reconstruction, zero and mean ablation, FVU, L0, feature density");
    options.add_options()
        ("model", "a Hugging Face GPT-Neo folder (config.json, model.safetensors, tokenizer.json)", cxxopts::value<std::string>())
        ("sae", "an SAE folder (cfg.json + sae_weights.safetensors): ours, any architecture, or a standard SAELens one",
         cxxopts::value<std::string>())
        ("text", "the corpus: TinyStories' .txt (stories separated by <|endoftext|>) or JSON lines with \"text\"",
         cxxopts::value<std::string>())
        ("max-stories", "evaluate the first N stories (0: the whole corpus)", cxxopts::value<int64_t>()->default_value("200"))
        ("layer", "the hidden_states index the SAE reads (default: what its cfg.json says)", cxxopts::value<int64_t>())
        ("dense-threshold", "a feature active on more than this fraction of tokens is dense",
         cxxopts::value<double>()->default_value("0.1"))
        ("out", "where eval.json and feature_density.png go", cxxopts::value<std::string>()->default_value("runs/eval"))
        ("device", "cpu | cuda | auto", cxxopts::value<std::string>()->default_value("auto"))
        ("progress", "auto | bar | lines | none", cxxopts::value<std::string>()->default_value("auto"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    for (const char* required : {"model", "sae", "text"})
      if (!parsed.count(required)) throw sae::UsageError(sae::cat("--", required, " is required"));
    const std::string model_dir = parsed["model"].as<std::string>(), sae_dir = parsed["sae"].as<std::string>();
    const std::string out = parsed["out"].as<std::string>();
    sae::EvalOptions eval;
    eval.text = parsed["text"].as<std::string>();
    eval.max_stories = parsed["max-stories"].as<int64_t>();
    eval.dense_threshold = parsed["dense-threshold"].as<double>();
    eval.progress = sae::parse_progress_mode(parsed["progress"].as<std::string>());
    if (eval.max_stories < 0) throw sae::UsageError(sae::cat("--max-stories must be >= 0, got ", eval.max_stories));
    if (!(eval.dense_threshold >= 0 && eval.dense_threshold <= 1))
      throw sae::UsageError(sae::cat("--dense-threshold must be in [0, 1], got ", eval.dense_threshold));
    const int layer = sae::layer_option(parsed);
    sae::require_input_file(eval.text);
    const sae::Device device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));

    sae::GptNeo model = sae::GptNeo::load(model_dir, device);
    const sae::Gpt2Tokenizer tokenizer = sae::Gpt2Tokenizer::from_model_dir(model_dir);
    const sae::SaeAtLayer sae = sae::load_sae_at_layer(sae_dir, model.config(), layer, device);
    const sae::EvalResult result = sae::evaluate_sae(model, tokenizer, sae, eval);

    fs::create_directories(out);
    const std::string json_path = (fs::path(out) / "eval.json").string();
    sae::Json json = sae::eval_json(result, sae, model_dir, eval);
    json["device"] = sae::device_name(device);
    const std::string figure_path = (fs::path(out) / "feature_density.png").string();
    json["figures"] = sae::Json::object();
    json["figures"]["feature_density"] = "feature_density.png";
    sae::write_file_atomic(json_path, json.dump(2) + "\n");
    std::string figure_note = figure_path;
    try {
      sae::plot(sae::density_histogram(result, sae_dir), figure_path);
    } catch (const sae::DataError& e) {  // no gnuplot: the numbers are still good
      figure_note = sae::cat("not drawn (", e.what(), ")");
    }
    std::printf("%s\nfiles: %s, %s\n", sae::eval_report(result, sae).c_str(), json_path.c_str(), figure_note.c_str());
    return 0;
  });
}
