// sae_steer: generation steered by one SAE feature, as the original tutorial's steer.py
// (docs/contract.md §7): the prompt is continued twice with the KV cache (lm/generate.h), without
// and with strength * W_dec[feature] / ||W_dec[feature]|| added at the SAE's hook point (hidden_states[L];
// a transcoder's output hook) at every
// position, with the same options and seed; printed side by side, then (as steer.py) the steered text
// read back by the model without steering, each token marked with the feature's strength; or as
// JSON with --json. Thin:
// options -> model, tokenizer, SAE -> steer (sae/eval/steer.h) -> output.
//   sae_steer --model DIR --sae DIR --feature I --strength S --prompt TEXT [--max-new-tokens N]
//             [--temperature T] [--top-k K] [--seed S] [--greedy] [--layer L] [--json]
#include <cstdio>

#include "lm/model_loader.h"
#include "lm/tokenizer.h"
#include "sae/cli/cli.h"
#include "sae/data/text_batches.h"
#include "sae/eval/sae_at_layer.h"
#include "sae/eval/steer.h"
#include "sae/train/checkpoint.h"
#include "sae/train/train_config.h"

int main(int argc, char** argv) {
  return sae::run_main("sae_steer", argc, argv, [&] {
    cxxopts::Options options("sae_steer", "Continue a prompt with and without one SAE feature's decoder direction "
                                          "added where the SAE writes (its hook point)");
    options.add_options()
        ("model", "a Hugging Face model folder: " + sae::supported_families_text() + " (config.json, model.safetensors, "
         "tokenizer.json)", cxxopts::value<std::string>())
        ("sae", "an SAE folder (cfg.json + sae_weights.safetensors; sparsify's cfg.json + sae.safetensors), a Gemma Scope params.npz, or a torch.save .pt (dictionary_learning's ae.pt, OpenAI's)",
         cxxopts::value<std::string>())
        ("feature", "the feature whose unit decoder direction is added", cxxopts::value<int64_t>())
        ("strength", "how much of it is added at every position (raw units of the activations at the hook)", cxxopts::value<std::string>())
        ("prompt", "the text to continue", cxxopts::value<std::string>())
        ("max-new-tokens", "tokens to generate (fewer when the end-of-text token comes)",
         cxxopts::value<int64_t>()->default_value("50"))
        ("temperature", "sampling temperature", cxxopts::value<std::string>()->default_value("1"))
        ("top-k", "sample among the k most likely tokens only, and those tied with the k-th (0: all; 50 as Hugging Face "
         "generate, which the tutorial samples with)", cxxopts::value<int64_t>()->default_value("50"))
        ("seed", "the sampling seed (both continuations use it)", cxxopts::value<uint64_t>()->default_value("0"))
        ("greedy", "always take the most likely token instead of sampling")
        ("hook", "the hook point to steer at, SAELens's name (default: where the SAE reads, from its cfg.json)",
         cxxopts::value<std::string>())
        ("layer", "steer at hidden_states[layer] instead (default: where the SAE reads, from its cfg.json)",
         cxxopts::value<int64_t>())
        ("prepend-bos", "on | off | auto: a BOS before the prompt (auto: as the SAE was trained, from its cfg.json, "
         "else as the tokenizer does)", cxxopts::value<std::string>()->default_value("auto"))
        ("width", "column width of the side-by-side text", cxxopts::value<int64_t>()->default_value("48"))
        ("json", "print one JSON object instead of the side-by-side text")
        ("device", "cpu | cuda | auto", cxxopts::value<std::string>()->default_value("auto"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    for (const char* required : {"model", "sae", "feature", "strength", "prompt"})
      if (!parsed.count(required)) throw sae::UsageError(sae::cat("--", required, " is required"));
    const std::string model_dir = parsed["model"].as<std::string>(), sae_dir = parsed["sae"].as<std::string>();
    const std::string prompt = parsed["prompt"].as<std::string>();
    sae::SteerOptions steer;
    steer.feature = parsed["feature"].as<int64_t>();
    steer.strength = sae::number_option(parsed, "strength");
    steer.generate.max_new_tokens = parsed["max-new-tokens"].as<int64_t>();
    steer.generate.temperature = sae::number_option(parsed, "temperature");
    steer.generate.top_k = parsed["top-k"].as<int64_t>();
    steer.generate.seed = parsed["seed"].as<uint64_t>();
    if (steer.generate.seed > uint64_t(sae::kJsonMaxExactInteger))  // --json records it exactly, as sae_train's
      throw sae::UsageError(sae::cat("--seed must be in [0, 2^53], got ", steer.generate.seed));
    steer.generate.greedy = parsed.count("greedy") > 0;
    for (const char* sampling : {"temperature", "top-k", "seed"})  // they would be recorded as if used
      if (steer.generate.greedy && parsed.count(sampling))
        throw sae::UsageError(sae::cat("--", sampling, " sets how tokens are sampled, and --greedy does not sample: "
                                       "give one of them"));
    if (steer.generate.greedy) steer.generate.top_k = 0;  // --json records what was used
    sae::check_generate_options(steer.generate);
    sae::check_strength(steer.strength);
    const int64_t width = parsed["width"].as<int64_t>();
    if (parsed.count("width") && parsed.count("json"))  // it would do nothing
      throw sae::UsageError("--width sets the side-by-side text's columns, which --json does not print: give one of them");
    if (width < 8 || width > 1000) throw sae::UsageError(sae::cat("--width must be in 8..1000, got ", width));
    const sae::HookChoice choice = sae::hook_choice_given(parsed);
    const sae::Device device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));

    sae::DecoderModel model = sae::load_decoder_model(model_dir, device);
    const sae::BpeTokenizer tokenizer = sae::BpeTokenizer::from_model_dir(model_dir);
    sae::check_tokenizer_fits_model(tokenizer, model.config());
    steer.generate.eos_ids = sae::end_of_text_ids(model_dir, tokenizer.eot_id(), tokenizer.vocab_size());
    steer.generate.vocab_limit = tokenizer.vocab_size();
    if (sae::is_crosscoder_folder(sae_dir))
      throw sae::UsageError(sae::cat(sae_dir, " is a crosscoder: steering along its decoder rows at each of its hooks "
                                     "is not done (sae_steer takes SAEs and transcoders)"));
    const sae::SaeAtLayer sae = sae::load_sae_at_layer(sae_dir, model.config(), choice, device);
    for (const std::string& warning : sae::other_model_warnings(sae.cfg, model_dir))
      std::fprintf(stderr, "sae_steer: warning: %s\n", warning.c_str());
    steer.bos = sae::bos_for_sae(sae::parse_bos_mode(parsed["prepend-bos"].as<std::string>()), sae, tokenizer);
    const sae::SteerResult result = sae::steer(model, tokenizer, sae, prompt, steer);

    if (parsed.count("json")) {
      std::printf("%s\n", sae::steer_json(result, tokenizer, sae, prompt, steer).dump(2).c_str());
      return 0;
    }
    std::printf("prompt (%zu tokens): %s\n", result.prompt.size(), sae::display_text(prompt).c_str());
    std::printf("feature %lld of %lld, strength %g, added at %s (%s) at every position; %s\n\n",
                static_cast<long long>(steer.feature), static_cast<long long>(sae.params.d_sae()), steer.strength,
                sae::spliced_site_text(sae).c_str(), sae.layer_source.c_str(),
                steer.generate.greedy ? "greedy"
                                      : sae::cat("sampled with temperature ", steer.generate.temperature,
                                                 steer.generate.top_k ? sae::cat(", top-k ", steer.generate.top_k) : "",
                                                 ", seed ", steer.generate.seed).c_str());
    const std::string columns = sae::side_by_side(sae::cat("unsteered (", result.unsteered.size(), " tokens)"),
                                                  sae::display_text(tokenizer, result.unsteered),
                                                  sae::cat("steered (", result.steered.size(), " tokens)"),
                                                  sae::display_text(tokenizer, result.steered), static_cast<int>(width));
    std::fwrite(columns.data(), 1, columns.size(), stdout);
    // The tutorial's check: both texts read back by the model without steering.
    std::printf("\nfeature %lld read back by the model without steering (strength = activation x decoder norm, in the SAE's normalised units): "
                "largest %.4g in the unsteered text, %.4g in the steered text:\n%s\n",
                static_cast<long long>(steer.feature), sae::largest_strength(result.unsteered_strengths),
                sae::largest_strength(result.steered_strengths),
                sae::annotated_read_back(tokenizer, result, steer.bos).c_str());
    return 0;
  });
}
