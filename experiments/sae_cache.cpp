// sae_cache: a language model's activations at one hook point, computed from a text corpus once and
// written as an activation cache (sae/data/activation_cache.h) to train on many times with
// `sae_train --data CACHE/`. Thin: options -> model, tokenizer, stories -> cache writer.
//   sae_cache --model DIR --text FILE (--layer 2 | --hook NAME) --out CACHE/ [--dtype f32|f16|bf16]
// Killed at any moment, it continues where its manifest says when run again with the same options;
// shards already written are checked first, and any found deleted, truncated or altered are
// rewritten from the text (a complete cache too).
#include <cstdio>
#include <filesystem>

#include "io/file_fingerprint.h"
#include "io/file_lock.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/text_windows.h"
#include "lm/tokenizer.h"
#include "sae/cli/cli.h"
#include "sae/data/activation_cache.h"
#include "sae/data/text_batches.h"
#include "sae/report/run_log.h"
#include "sae/train/train_config.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  return sae::run_main("sae_cache", argc, argv, [&] {
    cxxopts::Options options("sae_cache", "Write a language model's activations on a text corpus as an activation cache");
    options.add_options()
        ("model", "a Hugging Face model folder: " + sae::supported_families_text() + " (config.json, model.safetensors, "
         "tokenizer.json)", cxxopts::value<std::string>())
        ("text", std::string("the corpus: ") + sae::kCorpusFormats,
         cxxopts::value<std::string>())
        ("layer", "cache hidden_states[layer] (without --hook: 2)", cxxopts::value<int64_t>())
        ("hook", "cache this hook point instead, SAELens's name (blocks.L.hook_resid_pre, ..., attn.hook_z)",
         cxxopts::value<std::string>())
        ("out", "the cache folder", cxxopts::value<std::string>())
        ("dtype", "f32 | f16 | bf16: how the activations are stored", cxxopts::value<std::string>()->default_value("f32"))
        ("shard-tokens", "tokens per shard (each shard ends at a story's end)",
         cxxopts::value<int64_t>()->default_value("262144"))
        ("max-stories", "stop after this many stories (0: the whole corpus)", cxxopts::value<int64_t>()->default_value("0"))
        ("long-stories", "a story longer than the model's positions: error | split (into pieces)",
         cxxopts::value<std::string>()->default_value("error"))
        ("text-field", "JSON lines: the field with the text", cxxopts::value<std::string>()->default_value("text"))
        ("prepend-bos", "on | off | auto: a BOS before every window (auto: when the tokenizer adds one)",
         cxxopts::value<std::string>()->default_value("auto"))
        ("context-size", "positions per window: every story cut into windows of this many, the BOS included "
         "(0: the model's positions, and --long-stories decides)", cxxopts::value<int64_t>()->default_value("0"))
        ("bos-activations", "skip | keep: cache the activations at BOS positions (skipped by default)",
         cxxopts::value<std::string>()->default_value("skip"))
        ("device", "cpu | cuda | auto", cxxopts::value<std::string>()->default_value("auto"))
        ("progress", "auto | bar | lines | none", cxxopts::value<std::string>()->default_value("auto"));
    cxxopts::ParseResult parsed;
    if (!sae::parse_command_line(options, argc, argv, parsed)) return 0;
    for (const char* required : {"model", "text", "out"})
      if (!parsed.count(required)) throw sae::UsageError(sae::cat("--", required, " is required"));
    const std::string model_dir = parsed["model"].as<std::string>(), text = parsed["text"].as<std::string>();
    const std::string out = parsed["out"].as<std::string>();
    const int64_t max_stories = parsed["max-stories"].as<int64_t>();
    sae::HookChoice choice = sae::hook_choice_given(parsed);
    if (!choice.given()) choice = sae::hook_choice("", 2, true);
    sae::require_input_file(text);
    std::string dtype = parsed["dtype"].as<std::string>();
    if (dtype != "f32" && dtype != "f16" && dtype != "bf16")
      throw sae::UsageError(sae::cat("--dtype: expected f32, f16 or bf16, got '", dtype, "'"));
    for (char& c : dtype) c = static_cast<char>(std::toupper(c));
    const std::string long_stories = parsed["long-stories"].as<std::string>();
    if (long_stories != "error" && long_stories != "split")
      throw sae::UsageError(sae::cat("--long-stories: expected error or split, got '", long_stories, "'"));
    if (max_stories < 0) throw sae::UsageError("--max-stories must be >= 0");
    const std::string text_field = parsed["text-field"].as<std::string>();
    sae::check_text_field(text, text_field);
    const sae::BosMode bos_mode = sae::parse_bos_mode(parsed["prepend-bos"].as<std::string>());
    const int64_t context_size = parsed["context-size"].as<int64_t>();
    sae::check_context_size(context_size);
    const std::string bos_activations = parsed["bos-activations"].as<std::string>();
    if (bos_activations != "skip" && bos_activations != "keep")
      throw sae::UsageError(sae::cat("--bos-activations: expected skip or keep, got '", bos_activations, "'"));
    const sae::Device device = sae::resolve_device(sae::parse_device_choice(parsed["device"].as<std::string>()));

    // Only what the hook point needs is loaded: the blocks after it are never read from disk.
    const sae::ModelFolder folder = sae::read_model_config(model_dir);
    const sae::HookSite site = sae::resolve_hook_site(folder.config, choice.site, choice.option);
    sae::DecoderModel model =
        sae::load_decoder_model(model_dir, device, sae::ModelPart::up_to(site, folder.config.num_layers));
    const sae::BpeTokenizer tokenizer = sae::BpeTokenizer::from_model_dir(model_dir);
    sae::check_tokenizer_fits_model(tokenizer, model.config());
    const int64_t positions = model.config().max_positions, d = model.config().hook_width(site);
    const int64_t layer = sae::hidden_states_index(site, folder.config.num_layers);
    sae::Json source = sae::Json::object();
    source["model"] = model_dir;
    source["text"] = text;
    source["hook_name"] = sae::hook_name(site);
    if (layer >= 0) source["layer"] = layer;
    if (layer >= 0) source["hidden_states"] = sae::cat("hidden_states[", layer, "]");
    source["tokenizer"] = tokenizer.source();
    source["long_stories"] = long_stories;
    if (context_size > positions)
      throw sae::UsageError(sae::cat("--context-size ", context_size, " is more than the model's ", positions, " positions"));
    const sae::WindowOptions windows{sae::resolve_bos(bos_mode, tokenizer), context_size > 0 ? context_size : positions};
    sae::check_window_options(windows);
    const bool keep_bos = bos_activations == "keep";
    if (keep_bos && windows.bos < 0) throw sae::UsageError(sae::no_bos_to_keep(bos_mode));
    if (text_field != "text") source["text_field"] = text_field;
    if (windows.bos >= 0) {
      source["bos_id"] = windows.bos;
      source["bos_activations"] = bos_activations;
    }
    if (context_size > 0) source["context_size"] = context_size;
    if (max_stories > 0) source["max_stories"] = max_stories;  // part of what the cache is
    // The text's size and fingerprint: a corpus rewritten between a killed run and its retry is
    // another source (the retry would seek to a byte of the old text), refused as one; so is a model
    // whose weights changed. Both are in the manifest, whose fingerprint a run from the cache records:
    // a cache made again under the same name from other weights or text is refused on --resume.
    source["text_bytes"] = static_cast<int64_t>(fs::file_size(text));
    source["text_fingerprint"] = sae::file_fingerprint(text);
    source["model_fingerprint"] = sae::model_weights_fingerprint(model_dir);

    fs::create_directories(out);
    const sae::FileLock lock((fs::path(out) / ".lock").string());
    sae::ActivationCacheWriter writer(out, d, dtype, parsed["shard-tokens"].as<int64_t>(), source);
    // One story of the text into the cache: tokenized, cut into windows (lm/text_windows.h), each
    // run through the model and added as a story of its own; the BOS row left out unless kept.
    sae::StoryReader reader(text, text_field);
    int64_t tokens = writer.manifest().tokens;
    auto cache_story = [&](const sae::TextStory& story) {
      const std::vector<int32_t> ids = tokenizer.encode(story.text, story.where);
      if (ids.empty()) return;
      const int64_t length = static_cast<int64_t>(ids.size()) + (windows.bos >= 0 ? 1 : 0);
      if (context_size == 0 && length > positions && long_stories == "error")
        throw sae::DataError(sae::cat(story.where, ": ", length, " tokens", windows.bos >= 0 ? " with the BOS" : "",
                                      ", more than the model's ", positions,
                                      " positions (--long-stories split cuts such stories into pieces; --context-size N "
                                      "into windows)"));
      const int64_t count = sae::window_count(static_cast<int64_t>(ids.size()), windows);
      for (int64_t k = 0; k < count; ++k) {
        const sae::TokenWindow window = sae::document_window(ids, k, windows);
        const sae::Tensor hidden = model.forward_to_site(window.input, site).to(sae::Device::CPU);
        const int64_t skip = window.bos && !keep_bos ? 1 : 0;
        const std::vector<int32_t> piece(window.input.begin() + skip, window.input.end());
        sae::Json after = sae::Json::object();  // a shard never ends inside a cut story
        after["next_story"] = reader.position().next_story;
        after["byte_offset"] = reader.position().byte_offset;
        writer.add_story(story.index, piece, hidden.data<float>() + skip * d, after, k + 1 == count);
        tokens += static_cast<int64_t>(piece.size());
      }
    };
    auto text_position = [&](const sae::Json& j) {
      try {
        return sae::TextPosition{j.at("next_story").as_int(), j.at("byte_offset").as_int()};
      } catch (const sae::DataError& e) {
        throw sae::DataError(sae::cat(out, "/manifest.json: a text position: ", e.what()));
      }
    };
    sae::TextStory story;
    // Shards written before that are missing or broken: written again from the text.
    for (const auto& [index, problem] : writer.damaged_shards()) {
      const std::string file = writer.manifest().shards[index].file;
      reader.seek(text_position(writer.shard_start(index)));
      writer.begin_rewrite(index);
      while (writer.rewriting() && reader.next(story)) cache_story(story);
      if (writer.rewriting())
        throw sae::DataError(sae::cat(text, ": ended before ", out, "/", file,
                                      " was rewritten: the text has changed since the cache was written"));
      std::printf("sae_cache: rewrote %s/%s (%s)\n", out.c_str(), file.c_str(), problem.c_str());
    }
    if (writer.manifest().complete) {
      std::printf("sae_cache: %s is complete already (%lld tokens, %lld stories)\n", out.c_str(),
                  (long long)writer.manifest().tokens, (long long)writer.manifest().stories);
      return 0;
    }
    reader.rewind();
    if (writer.manifest().text_position.has("next_story")) reader.seek(text_position(writer.manifest().text_position));
    const int64_t start_story = reader.position().next_story;
    if (start_story > 0) std::printf("sae_cache: continuing %s at story %lld\n", out.c_str(), (long long)start_story);
    sae::Progress progress(sae::parse_progress_mode(parsed["progress"].as<std::string>()),
                           static_cast<int64_t>(fs::file_size(text)), reader.file_offset(), "sae_cache ");
    while ((max_stories == 0 || reader.position().next_story < max_stories) && reader.next(story)) {
      cache_story(story);
      progress.update_position(reader.file_offset(), tokens, sae::cat(reader.position().next_story, " stories"));
    }
    // The same refusal as sae_train's for a corpus without a single token.
    if (tokens == 0) throw sae::DataError(sae::cat(text, ": the text holds no stories"));
    writer.finish();
    progress.finish();
    std::printf("sae_cache: wrote %s: %lld tokens of %lld stories in %lld windows, %zu shards, d %lld, %s, %s of %s\n",
                out.c_str(), (long long)writer.manifest().tokens, (long long)reader.position().next_story,
                (long long)writer.manifest().stories,
                writer.manifest().shards.size(), (long long)d, dtype.c_str(), sae::hook_name(site).c_str(),
                model_dir.c_str());
    return 0;
  });
}
