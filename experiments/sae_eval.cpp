// sae_eval: an SAE spliced into the language model at its layer, scored over the stories of a
// corpus as SAELens scores it (docs/contract.md §6): next-token cross-entropy clean, with the SAE's
// reconstruction, with the layer zero-ablated and mean-ablated; KL to the clean run; CE and KL
// scores; FVU, L0, dead and dense features and a feature-density histogram. Thin: options -> model,
// tokenizer, SAE (sae/eval/sae_at_layer.h) -> evaluate_sae (sae/eval/evaluate.h) -> eval.json, the
// figure, the printed report. A crosscoder is spliced in at each of its hooks (evaluate_crosscoder:
// reconstructions from a clean pass, then each model run with its hooks replaced); over two models
// (model diffing) the second is --model-b.
//   sae_eval --model DIR [--model-b DIR] --sae DIR --text FILE [--max-stories N] [--hook NAME | --layer L]
//            [--out DIR]
#include <cstdio>
#include <filesystem>
#include <optional>

#include "io/atomic_file.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "lm/tokenizer.h"
#include "sae/cli/cli.h"
#include "sae/data/text_batches.h"
#include "sae/eval/evaluate.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/report/plot.h"
#include "sae/train/checkpoint.h"
#include "sae/train/train_config.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  return sae::run_main("sae_eval", argc, argv, [&] {
    cxxopts::Options options("sae_eval", "Score an SAE spliced into its language model: CE and KL with the "
                                         "reconstruction, zero and mean ablation, FVU, L0, feature density");
    options.add_options()
        ("model", "a Hugging Face model folder: " + sae::supported_families_text() + " (config.json, model.safetensors, "
         "tokenizer.json)", cxxopts::value<std::string>())
        ("model-b", "the second model of a crosscoder over two models (model diffing; the same tokenizer)",
         cxxopts::value<std::string>())
        ("sae", "an SAE folder (cfg.json + sae_weights.safetensors): ours, any architecture, or a SAELens one; a sparsify "
         "folder (cfg.json + sae.safetensors); a Gemma Scope params.npz (with --hook); or a torch.save .pt (dictionary_learning's ae.pt, OpenAI's)",
         cxxopts::value<std::string>())
        ("text", std::string("the corpus: ") + sae::kCorpusFormats,
         cxxopts::value<std::string>())
        ("max-stories", "evaluate the first N stories (0: the whole corpus)", cxxopts::value<int64_t>()->default_value("200"))
        ("text-field", "JSON lines: the field with the text", cxxopts::value<std::string>()->default_value("text"))
        ("prepend-bos", "on | off | auto: a BOS before every window (auto: as the SAE was trained, from its cfg.json, "
         "else as the tokenizer does)", cxxopts::value<std::string>()->default_value("auto"))
        ("context-size", "positions per window (default: the SAE's cfg.json context_size, else the model's)",
         cxxopts::value<int64_t>())
        ("hook", "the hook point the SAE reads and is spliced into, SAELens's name (default: what its cfg.json says)",
         cxxopts::value<std::string>())
        ("layer", "splice at hidden_states[layer] instead (default: what its cfg.json says)", cxxopts::value<int64_t>())
        ("dense-threshold", "a feature active on more than this fraction of tokens is dense",
         cxxopts::value<std::string>()->default_value("0.1"))
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
    eval.text_field = parsed["text-field"].as<std::string>();
    sae::check_text_field(eval.text, eval.text_field);
    const sae::BosMode bos_mode = sae::parse_bos_mode(parsed["prepend-bos"].as<std::string>());
    if (parsed.count("context-size")) sae::check_context_size(parsed["context-size"].as<int64_t>());
    eval.dense_threshold = sae::number_option(parsed, "dense-threshold");
    eval.progress = sae::parse_progress_mode(parsed["progress"].as<std::string>());
    if (eval.max_stories < 0) throw sae::UsageError(sae::cat("--max-stories must be >= 0, got ", eval.max_stories));
    if (!(eval.dense_threshold >= 0 && eval.dense_threshold <= 1))
      throw sae::UsageError(sae::cat("--dense-threshold must be in [0, 1], got ", eval.dense_threshold));
    const sae::HookChoice choice = sae::hook_choice_given(parsed);
    sae::require_input_file(eval.text);  // a FIFO or a directory: refused at once
    const sae::Device device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));
    // A --out that cannot be made is said before the work; it is made when the results are written
    // (a failed evaluation leaves none behind).
    sae::check_output_folder(out);

    sae::DecoderModel model = sae::load_decoder_model(model_dir, device);
    const sae::BpeTokenizer tokenizer = sae::BpeTokenizer::from_model_dir(model_dir);
    const std::string model_b_dir = parsed.count("model-b") ? parsed["model-b"].as<std::string>() : std::string();
    std::optional<sae::DecoderModel> model_b;
    if (!model_b_dir.empty()) {
      model_b.emplace(sae::load_decoder_model(model_b_dir, device));
      sae::check_same_tokenizer(model_b_dir, tokenizer, *model_b);
    }
    const sae::SaeAtLayer sae = sae::load_sae_at_layer(sae_dir, model.config(), choice, device,
                                                       model_b ? &model_b->config() : nullptr);
    for (const std::string& warning : sae::other_model_warnings(sae.cfg, model_dir, model_b_dir))
      std::fprintf(stderr, "sae_eval: warning: %s\n", warning.c_str());
    eval.bos = sae::bos_for_sae(bos_mode, sae, tokenizer);
    eval.context_size = parsed.count("context-size") ? parsed["context-size"].as<int64_t>()
                                                     : std::min(sae.context_size, model.config().max_positions);
    if (eval.context_size == 0) eval.context_size = model.config().max_positions;  // eval.json: the windows' length
    std::string report;
    sae::Json json;
    std::vector<double> density;
    int64_t tokens = 0, dead = 0;
    if (sae.crosscoder()) {
      const sae::CrosscoderEvalResult result =
          sae::evaluate_crosscoder(model, model_b ? &*model_b : nullptr, tokenizer, sae, eval);
      json = sae::crosscoder_eval_json(result, sae, model_dir, model_b_dir, eval);
      report = sae::crosscoder_eval_report(result, sae);
      density = result.density, tokens = result.tokens, dead = result.dead;
    } else {
      const sae::EvalResult result = sae::evaluate_sae(model, tokenizer, sae, eval);
      json = sae::eval_json(result, sae, model_dir, eval);
      report = sae::eval_report(result, sae);
      density = result.density, tokens = result.tokens, dead = result.dead;
    }

    std::error_code made;
    fs::create_directories(out, made);
    if (made || !fs::is_directory(out)) throw sae::DataError(sae::cat(out, ": cannot create the output directory"));
    // The numbers first (no figure named yet), then the figure, then the numbers naming it.
    const std::string json_path = (fs::path(out) / "eval.json").string();
    json["device"] = sae::device_name(device);
    json["figures"] = sae::Json::object();
    json["figures"]["feature_density"] = sae::Json();
    sae::write_file_atomic(json_path, json.dump(2) + "\n");
    const fs::path figure = fs::path(out) / "feature_density";
    std::string figure_note;
    bool drawn = false;
    if (dead == static_cast<int64_t>(density.size())) {
      figure_note = "not drawn (no feature fired: no density to show)";
      std::error_code stale;  // an earlier evaluation's figure is not this one's
      for (const char* end : {".gp", ".dat", ".png"}) fs::remove(figure.string() + end, stale);
    } else {  // a missing or failing gnuplot costs the figure only: the numbers are still good
      sae::FigureDrawer drawer;
      drawer.plot(sae::density_histogram(density, tokens, dead, eval.dense_threshold, sae_dir), figure.string() + ".png");
      drawn = drawer.all_drawn();
      figure_note = drawer.describe(figure.string() + ".png");
    }
    if (drawn) {
      json["figures"]["feature_density"] = "feature_density.png";
      sae::write_file_atomic(json_path, json.dump(2) + "\n");
    }
    std::printf("%s\nfiles: %s, %s\n", report.c_str(), json_path.c_str(), figure_note.c_str());
    return 0;
  });
}
