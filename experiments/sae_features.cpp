// sae_features: what each feature of a trained SAE (any architecture) fires on, the tutorial's gather
// step (docs/contract.md §5). Thin: options -> the SAE (load_checkpoint) -> the stories (a text through
// the language model, or an activation file) -> sae/features/top_stories.h's two passes -> the JSON
// (and, with --stats-out, feature_stats.safetensors for sae_browser --stats). A crosscoder reads all
// its sources together: from text the hooks of its cfg.json (metadata.crosscoder_hooks; --model-b
// for a second model's), from files --data A,B,... (one per source).
//   sae_features --sae DIR (--model DIR [--model-b DIR] --text FILE | --data FILE[,FILE...] [--model DIR])
//                [--hook NAME | --layer L] [--top N] [--stories N] [--context C] [--out FILE.json]
//                [--stats-out FILE] [--device cpu|cuda|auto]
// Exit 2 for usage errors, 1 for data errors.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "io/atomic_file.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "lm/tokenizer.h"
#include "sae/cli/cli.h"
#include "sae/data/activations.h"
#include "sae/data/text_batches.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/features/top_stories.h"
#include "sae/train/checkpoint.h"

namespace {
std::string given(const cxxopts::ParseResult& parsed, const char* name) {
  return parsed.count(name) ? parsed[name].as<std::string>() : std::string();
}

}  // namespace

int main(int argc, char** argv) {
  return sae::run_main("sae_features", argc, argv, [&] {
    cxxopts::Options options("sae_features",
                             "What each SAE feature fires on: per feature its top stories by largest activation, with "
                             "every token's strength, activation x decoder norm (the tutorial's gather_high_activations)");
    options.add_options()
        ("sae", "SAE folder (cfg.json + sae_weights.safetensors; sparsify's cfg.json + sae.safetensors), any architecture, a Gemma Scope params.npz, or a torch.save .pt (dictionary_learning's ae.pt, OpenAI's)",
         cxxopts::value<std::string>())
        ("model", "model folder (" + sae::supported_families_text() + "): runs --text through it; with --data only its "
         "tokenizer is used",
         cxxopts::value<std::string>())
        ("model-b", "a crosscoder over two models: the second (the same tokenizer)", cxxopts::value<std::string>())
        ("text", std::string("stories (with --model): ") + sae::kCorpusFormats, cxxopts::value<std::string>())
        ("data", "stories as activations: a .safetensors file with story_lengths, or a cache folder (a crosscoder: "
         "one per source, comma-separated, in its order)", cxxopts::value<std::string>())
        ("hook", "the hook point of --model the SAE reads, SAELens's name (default: the SAE's cfg.json, else "
         "hidden_states[2] for one of ours; a Gemma Scope npz or sparsify folder that names none needs it, a "
         "transcoder takes its cfg.json's)", cxxopts::value<std::string>())
        ("layer", "read hidden_states[layer] of --model instead", cxxopts::value<int64_t>())
        ("text-field", "JSON lines: the field with the text", cxxopts::value<std::string>()->default_value("text"))
        ("prepend-bos", "on | off | auto: a BOS before every story (auto: as the SAE was trained, from its cfg.json, "
         "else as the tokenizer does); the BOS row is not the SAE's input", cxxopts::value<std::string>()->default_value("auto"))
        ("context-size", "positions a story may take, the BOS included (default: the SAE's cfg.json context_size, "
         "else the model's); longer stories are cut", cxxopts::value<int64_t>())
        ("top", "top stories kept per feature", cxxopts::value<int64_t>()->default_value("10"))
        ("stories", "read at most this many stories (0: all)", cxxopts::value<int64_t>()->default_value("0"))
        ("context", "tokens kept on either side in --stats-out", cxxopts::value<int64_t>()->default_value("8"))
        ("out", "the JSON file", cxxopts::value<std::string>()->default_value("features.json"))
        ("stats-out", "also write the statistics (feature_stats.safetensors format) here", cxxopts::value<std::string>())
        ("device", "cpu | cuda | auto", cxxopts::value<std::string>()->default_value("cpu"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    const std::string sae_dir = given(parsed, "sae"), model_dir = given(parsed, "model"), text = given(parsed, "text"),
                      data = given(parsed, "data"), out = parsed["out"].as<std::string>(),
                      stats_out = given(parsed, "stats-out"), model_b_dir = given(parsed, "model-b");
    if (sae_dir.empty()) throw sae::UsageError("--sae DIR is required");
    if (text.empty() == data.empty()) throw sae::UsageError("give the stories: --model DIR --text FILE, or --data FILE");
    if (!text.empty() && model_dir.empty()) throw sae::UsageError("--text FILE needs --model DIR (the language model)");
    if (!text.empty()) sae::check_text_field(text, parsed["text-field"].as<std::string>());
    if (!model_b_dir.empty() && text.empty()) throw sae::UsageError("--model-b DIR goes with --model and --text");
    if (!text.empty()) sae::require_input_file(text);
    sae::check_output_files({{"out", out}, {"stats-out", stats_out}}, {{"data", data}, {"text", text}});
    if (data == "synthetic")
      throw sae::UsageError("--data synthetic: give a file; a synthetic run's own statistics are in RUN/sae/");
    // Options that would do nothing (as sae_train refuses its own): how text is read, with a file's
    // stories; the statistics' context, with no statistics written.
    for (const char* option : {"text-field", "prepend-bos", "context-size"})
      if (!data.empty() && parsed.count(option))
        throw sae::UsageError(sae::cat("--", option, " says how text is read (--model, --text): --data ", data,
                                       " holds its stories' activations already"));
    if (parsed.count("context") && stats_out.empty())
      throw sae::UsageError("--context sets the tokens kept around each top activation in --stats-out's statistics: "
                            "give --stats-out, or leave --context out");
    const sae::FeatureStatsOptions stats_options{parsed["top"].as<int64_t>(), parsed["context"].as<int64_t>()};
    if (stats_options.k < 1 || stats_options.k > 1000)
      throw sae::UsageError(sae::cat("--top must be in [1, 1000], got ", stats_options.k));
    if (stats_options.context < 0 || stats_options.context > 256)
      throw sae::UsageError(sae::cat("--context must be in [0, 256], got ", stats_options.context));
    if (parsed.count("context-size")) sae::check_context_size(parsed["context-size"].as<int64_t>());
    const int64_t max_stories = parsed["stories"].as<int64_t>();
    if (max_stories < 0) throw sae::UsageError(sae::cat("--stories must be >= 0 (0: all), got ", max_stories));
    const sae::Device device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));

    const sae::Checkpoint checkpoint = sae::load_checkpoint(sae_dir, device, /*with_state=*/false);
    const sae::SaeParams& params = checkpoint.params;
    if (!text.empty())  // (from --data, --model names only the tokenizer of the file's token ids)
      for (const std::string& warning : sae::other_model_warnings(checkpoint.cfg, model_dir, model_b_dir))
        std::fprintf(stderr, "sae_features: warning: %s\n", warning.c_str());
    const sae::InputNormalization normalization =
        sae::trained_normalization(checkpoint.cfg, (std::filesystem::path(sae_dir) / "cfg.json").string());
    sae::check_feature_stats_options(params.d_sae(), stats_options, "--top", "--context");

    const sae::HookChoice choice = sae::hook_choice_given(parsed);
    std::unique_ptr<sae::DecoderModel> model;
    std::unique_ptr<sae::BpeTokenizer> tokenizer;
    std::unique_ptr<sae::ActivationSource> source;
    std::unique_ptr<sae::StoryInputs> inputs;
    sae::Json description = sae::Json::object();
    if (!model_dir.empty()) tokenizer = std::make_unique<sae::BpeTokenizer>(sae::BpeTokenizer::from_model_dir(model_dir));
    std::unique_ptr<sae::DecoderModel> model_b;
    if (!text.empty() && params.sources > 1) {
      // A crosscoder: every source of its cfg.json, from one pass of each model, side by side.
      const sae::ModelFolder folder = sae::read_model_config(model_dir);
      std::optional<sae::ModelFolder> folder_b;
      if (!model_b_dir.empty()) folder_b = sae::read_model_config(model_b_dir);
      const sae::SaeAtLayer crosscoder =
          sae::load_sae_at_layer(sae_dir, folder.config, choice, device, folder_b ? &folder_b->config : nullptr);
      std::optional<sae::HookSite> last[2];
      sae::TextStoryOptions story_options{text, parsed["text-field"].as<std::string>(), crosscoder.site, -1, 0, {}};
      sae::Json hooks = sae::Json::array();
      for (const sae::CrosscoderSource& source : crosscoder.sources) {
        story_options.reads.push_back(sae::TextRead{source.model, source.site});
        std::optional<sae::HookSite>& l = last[source.model];
        const sae::DecoderConfig& reads_from = source.model == 0 ? folder.config : folder_b->config;
        if (!l || sae::reached_before(*l, source.site, reads_from.residual == sae::ResidualWiring::Parallel))
          l = source.site;
        hooks.push_back(sae::Json(source.read));
      }
      model = std::make_unique<sae::DecoderModel>(
          sae::load_decoder_model(model_dir, device, sae::ModelPart::up_to(*last[0], folder.config.num_layers)));
      sae::check_tokenizer_fits_model(*tokenizer, model->config());
      if (folder_b) {
        model_b = std::make_unique<sae::DecoderModel>(
            sae::load_decoder_model(model_b_dir, device, sae::ModelPart::up_to(*last[1], folder_b->config.num_layers)));
        sae::check_same_tokenizer(model_b_dir, *tokenizer, *model_b);
      }
      story_options.bos = sae::bos_for_sae(sae::parse_bos_mode(parsed["prepend-bos"].as<std::string>()), crosscoder, *tokenizer);
      if (parsed.count("context-size")) {
        story_options.context_size = parsed["context-size"].as<int64_t>();
      } else if (crosscoder.context_size > 0) {
        story_options.context_size = std::min(crosscoder.context_size, folder.config.max_positions);
      }
      inputs = sae::text_story_inputs(*model, *tokenizer, story_options, normalization, max_stories, device, model_b.get());
      description["text"] = text;
      description["model"] = model_dir;
      if (model_b) description["model_b"] = model_b_dir;
      description["crosscoder_hooks"] = hooks;
    } else if (!text.empty()) {
      if (!model_b_dir.empty())
        throw sae::UsageError(sae::cat("--model-b: ", sae_dir, " is not a crosscoder (a second model is read by a "
                                       "crosscoder over two models only)"));
      sae::refuse_hook_choice(params, choice);  // a transcoder's encoder read its input hook only
      // Where to read: the option, else the SAE's cfg.json, else hidden_states[2]; the model is loaded
      // only up to there.
      try {
        sae::refuse_one_head(checkpoint.cfg);
      } catch (const sae::Error& e) {
        throw sae::DataError(sae::cat(sae_dir, "/cfg.json: ", e.what()));
      }
      sae::HookSite site{2, sae::HookPoint::FinalOutput};
      std::string from = "the default hidden_states[2]";
      if (choice.given()) {
        site = choice.site;
        from = choice.option;
      } else {
        bool found = false;
        try {
          found = sae::hook_site_from_cfg(checkpoint.cfg, site, from);
        } catch (const sae::Error& e) {
          throw sae::DataError(sae::cat(sae_dir, "/cfg.json: ", e.what()));
        }
        // No default for a file or folder from elsewhere that names no hook point (a Gemma Scope npz,
        // a sparsify folder, a torch .pt), nor for a transcoder (its input and output go together).
        const bool npz = !checkpoint.npz.empty();
        if (!found && (npz || !sae::single_file_sae(sae_dir).empty() || checkpoint.cfg.has("sparsify") ||
                       checkpoint.cfg.has("dictionary_learning") || params.transcoder))
          throw sae::UsageError(sae::no_hook_point_message(sae_dir, npz, params.transcoder));
      }
      const sae::ModelFolder folder = sae::read_model_config(model_dir);
      try {
        site = sae::resolve_hook_site(folder.config, site, choice.given() ? choice.option : from);
      } catch (const sae::UsageError& e) {  // the SAE's cfg.json at fault: named, exit 1 (as sae_eval, sae_steer)
        if (choice.given() || (from.rfind("cfg.json", 0) != 0 && from.rfind("config.json", 0) != 0)) throw;
        throw sae::DataError(sae::cat(sae_dir, ": ", e.what()));
      }
      model = std::make_unique<sae::DecoderModel>(
          sae::load_decoder_model(model_dir, device, sae::ModelPart::up_to(site, folder.config.num_layers)));
      sae::check_tokenizer_fits_model(*tokenizer, model->config());
      const int64_t width = folder.config.hook_width(site);
      if (width != params.d_in())
        throw sae::DataError(sae::cat(model_dir, ": ", sae::hook_name(site), " is ", width,
                                      " wide, but the SAE's d_in is ", params.d_in()));
      // BOS and context as the SAE was trained (its cfg.json metadata), unless told otherwise.
      const sae::WindowMetadata trained = sae::window_metadata(checkpoint.cfg, sae_dir);
      const int32_t bos =
          sae::bos_for_sae(sae::parse_bos_mode(parsed["prepend-bos"].as<std::string>()), trained.prepend_bos, *tokenizer);
      sae::TextStoryOptions story_options{text, parsed["text-field"].as<std::string>(), site, bos, 0};
      if (parsed.count("context-size")) {
        story_options.context_size = parsed["context-size"].as<int64_t>();
      } else if (trained.context_size > 0) {
        story_options.context_size = std::min(trained.context_size, folder.config.max_positions);
      }
      inputs = sae::text_story_inputs(*model, *tokenizer, story_options, normalization, max_stories, device);
      description["text"] = text;
      description["model"] = model_dir;
      description["hook_name"] = sae::hook_name(site);
      description["hook_from"] = from;  // the option, the SAE's cfg.json, or the tutorial's default
      const int64_t k = sae::hidden_states_index(site, folder.config.num_layers);
      if (k >= 0) description["layer"] = k;
    } else {
      if (choice.given()) throw sae::UsageError(sae::cat(choice.option, " goes with --model and --text"));
      source = sae::open_dictionary_inputs("data", data, params.sources, sae_dir);
      if (source->d() != params.d_in())
        throw sae::DataError(sae::cat(data, ": has ", source->d(), " columns but the SAE's d_in is ", params.d_in()));
      inputs = sae::file_story_inputs(*source, normalization, max_stories, device);
      description["data"] = data;
      if (!model_dir.empty()) description["tokenizer"] = model_dir;
    }

    sae::GatherSummary summary;
    sae::FeatureStats stats = sae::gather_feature_stats(params, *inputs, stats_options, &summary);
    if (stats.device() != sae::Device::CPU) stats = stats.on_host();  // read entry by entry below
    if (summary.stories == 0) throw sae::DataError(sae::cat(text.empty() ? data : text, ": no stories to read"));
    stats.source()["gathered_by"] = "sae_features";
    stats.source()["sae"] = sae_dir;
    stats.source()["data"] = description;
    stats.source()["normalization"] = sae::normalization_name(normalization.kind);
    // Saved before the second pass: a failure there (memory, a story's text) keeps the first's work.
    if (!stats_out.empty()) stats.save(stats_out);
    const std::vector<std::string> entries = sae::top_story_entry_texts(params, *inputs, stats, tokenizer.get());
    sae::AtomicFileWriter json(out);  // an array of one entry a line, never held as one string
    json.write("[");
    for (size_t i = 0; i < entries.size(); ++i) json.write((i ? ",\n" : "\n") + entries[i]);
    json.write("\n]\n");
    json.commit();

    int64_t silent = 0;
    for (int64_t i = 0; i < params.d_sae(); ++i) silent += stats.top_count(i) == 0;
    std::printf("sae_features: %lld stories (%lld tokens%s), %lld features, %lld of them (%.1f%%) never active\n",
                static_cast<long long>(summary.stories), static_cast<long long>(summary.tokens),
                summary.truncated ? sae::cat(", ", summary.truncated, " longer than the context size: only their first window read").c_str() : "",
                static_cast<long long>(params.d_sae()), static_cast<long long>(silent),
                100.0 * double(silent) / double(params.d_sae()));
    if (description.has("hook_from"))
      std::printf("  read at %s (%s)\n", description.at("hook_name").as_string().c_str(),
                  description.at("hook_from").as_string().c_str());
    std::printf("  wrote %s (%zu entries)%s\n", out.c_str(), entries.size(),
                stats_out.empty() ? "" : sae::cat(" and ", stats_out).c_str());
    return 0;
  });
}
