// sae_browser: one self-contained HTML page to browse what a run's features mean (docs/contract.md §5,
// sae/features/browser.h). Thin: options -> browser_data -> write_browser_html -> the file.
//   sae_browser --run DIR [--model DIR] [--hook NAME] [--stats FILE] [--out FILE.html] [--top-tokens N]
// Exit 2 for usage errors, 1 for data errors.
#include <cstdio>
#include <filesystem>

#include "io/atomic_file.h"
#include "lm/hook_points.h"
#include "lm/model_family.h"
#include "sae/cli/cli.h"
#include "sae/features/browser.h"
#include "sae/train/checkpoint.h"

int main(int argc, char** argv) {
  return sae::run_main("sae_browser", argc, argv, [&] {
    cxxopts::Options options("sae_browser",
                             "Write a self-contained HTML page showing what a run's SAE features fire on (open it in "
                             "any browser; no server, no network)");
    options.add_options()
        ("run", "the run folder (config.json, sae/ with feature_stats.safetensors), or an SAE folder, a Gemma "
         "Scope params.npz or a torch.save .pt (dictionary_learning's ae.pt, OpenAI's), statistics beside it",
         cxxopts::value<std::string>())
        ("model", "model folder (" + sae::supported_families_text() + ") for token text and promoted tokens (default: the "
         "run's --model)", cxxopts::value<std::string>())
        ("hook", "the hook point the SAE reads, SAELens's name (default: the run's --hook or the SAE's hook_name); "
         "promoted tokens are shown only where it writes in the residual stream's space", cxxopts::value<std::string>())
        ("stats", "statistics file (default: the SAE folder's feature_stats.safetensors; sae_features "
                  "--stats-out writes others)", cxxopts::value<std::string>())
        ("out", "the page (default: RUN/features.html; beside a params.npz)", cxxopts::value<std::string>())
        ("top-tokens", "promoted and suppressed tokens per feature", cxxopts::value<int64_t>()->default_value("10"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    if (!parsed.count("run")) throw sae::UsageError("--run DIR is required");
    sae::BrowserOptions browser;
    browser.run = parsed["run"].as<std::string>();
    if (parsed.count("model")) browser.model = parsed["model"].as<std::string>();
    if (parsed.count("hook")) {
      browser.hook = parsed["hook"].as<std::string>();
      sae::parse_hook_name(browser.hook, "--hook");  // a name we do not read: refused with or without a model
    }
    if (parsed.count("stats")) browser.stats = parsed["stats"].as<std::string>();
    browser.top_tokens = parsed["top-tokens"].as<int64_t>();
    if (browser.top_tokens < 1 || browser.top_tokens > 100)
      throw sae::UsageError(sae::cat("--top-tokens must be in [1, 100], got ", browser.top_tokens));
    // The page goes into the run folder (for a params.npz given as the file: beside it).
    const std::filesystem::path run(browser.run);
    const bool npz_file = !std::filesystem::is_directory(run) && !sae::single_file_sae(browser.run).empty();
    const std::filesystem::path folder = npz_file ? (run.has_parent_path() ? run.parent_path() : ".") : run;
    const std::string out = parsed.count("out") ? parsed["out"].as<std::string>() : (folder / "features.html").string();
    if (parsed.count("out")) {  // not over what the page is made from
      std::vector<std::pair<std::string, std::string>> inputs = {{"stats", browser.stats}, {"run", browser.run}};
      for (const char* sae : {"", "sae"})
        for (const char* file : {"feature_stats.safetensors", "cfg.json", "sae_weights.safetensors"})
          inputs.push_back({"run", (run / sae / file).string()});
      for (const char* file : {"config.json", "metrics.csv"}) inputs.push_back({"run", (run / file).string()});
      sae::check_output_files({{"out", out}}, inputs);
    }
    std::string notes;
    const sae::BrowserData data = sae::browser_data(browser, &notes);
    if (!notes.empty()) std::fprintf(stderr, "sae_browser: note: %s", notes.c_str());
    sae::AtomicFileWriter page(out);  // written piece by piece, never held whole
    size_t bytes = 0;
    sae::write_browser_html(data, [&](const std::string& piece) {
      page.write(piece);
      bytes += piece.size();
    });
    page.commit();
    std::printf("sae_browser: wrote %s (%zu features, %.1f MB)\n", out.c_str(), data.features.size(), double(bytes) / 1e6);
    return 0;
  });
}
