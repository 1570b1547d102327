// The text-to-cache work of sae_cache (text_cache.h).
#include "sae/data/text_cache.h"

#include <filesystem>
#include <optional>

#include "io/file_fingerprint.h"
#include "io/file_lock.h"
#include "lm/model_loader.h"
#include "lm/text_data.h"
#include "lm/tokenizer.h"
#include "sae/data/text_batches.h"
#include "tensor/error.h"

namespace sae {

namespace fs = std::filesystem;

TextCacheResult write_text_cache(const TextCacheOptions& o, const TextCacheEvents& events) {
  const HookChoice choice = o.choice.given() ? o.choice : hook_choice("", 2, true);
  // Only what the hook point needs is loaded: the blocks after it are never read from disk.
  const ModelFolder folder = read_model_config(o.model_dir);
  const HookSite site = resolve_hook_site(folder.config, choice.site, choice.option);
  DecoderModel model = load_decoder_model(o.model_dir, o.device, ModelPart::up_to(site, folder.config.num_layers));
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(o.model_dir);
  check_tokenizer_fits_model(tokenizer, model.config());
  const int64_t positions = model.config().max_positions, d = model.config().hook_width(site);
  const int64_t layer = hidden_states_index(site, folder.config.num_layers);
  Json source = Json::object();
  source["model"] = o.model_dir;
  source["text"] = o.text;
  source["hook_name"] = hook_name(site);
  if (layer >= 0) source["layer"] = layer;
  if (layer >= 0) source["hidden_states"] = cat("hidden_states[", layer, "]");
  source["tokenizer"] = tokenizer.source();
  source["long_stories"] = o.split_long_stories ? "split" : "error";
  if (o.context_size > positions)
    throw UsageError(cat("--context-size ", o.context_size, " is more than the model's ", positions, " positions"));
  const WindowOptions windows{resolve_bos(o.bos, tokenizer), o.context_size > 0 ? o.context_size : positions};
  check_window_options(windows);
  if (o.keep_bos && windows.bos < 0) throw UsageError(no_bos_to_keep(o.bos));
  if (o.text_field != "text") source["text_field"] = o.text_field;
  if (windows.bos >= 0) {
    source["bos_id"] = windows.bos;
    source["bos_activations"] = o.keep_bos ? "keep" : "skip";
  }
  if (o.context_size > 0) source["context_size"] = o.context_size;
  if (o.max_stories > 0) source["max_stories"] = o.max_stories;  // part of what the cache is
  // The text's size and fingerprint: a corpus rewritten between a killed run and its retry is
  // another source (the retry would seek to a byte of the old text), refused as one; so is a model
  // whose weights changed. Both are in the manifest, whose fingerprint a run from the cache records.
  const int64_t text_bytes = static_cast<int64_t>(fs::file_size(o.text));
  source["text_bytes"] = text_bytes;
  source["text_fingerprint"] = file_fingerprint(o.text);
  source["model_fingerprint"] = model_weights_fingerprint(o.model_dir);

  // A fresh cache that fails before it writes anything leaves no folder behind (as sae_train). The
  // lock outlives `made`: the folder and its .lock are removed while the lock is still held.
  std::optional<FileLock> lock;
  MadeFolders made(o.out);
  fs::create_directories(o.out);
  try {
    lock.emplace((fs::path(o.out) / ".lock").string());
  } catch (const DataError&) {
    made.keep();  // another process's folder after all
    throw;
  }
  ActivationCacheWriter writer(o.out, d, o.dtype, o.shard_tokens, source);
  StoryReader reader(o.text, o.text_field);
  int64_t tokens = writer.manifest().tokens;
  const auto note = [&](const std::string& line) {
    if (events.note) events.note(line);
  };
  // One story of the text into the cache: each window run through the model and added as a story.
  const auto cache_story = [&](const TextStory& story) {
    const std::vector<int32_t> ids = tokenizer.encode(story.text, story.where);
    if (ids.empty()) return;
    const int64_t length = static_cast<int64_t>(ids.size()) + (windows.bos >= 0 ? 1 : 0);
    if (o.context_size == 0 && length > positions && !o.split_long_stories)
      throw DataError(cat(story.where, ": ", length, " tokens", windows.bos >= 0 ? " with the BOS" : "",
                          ", more than the model's ", positions,
                          " positions (--long-stories split cuts such stories into pieces; --context-size N "
                          "into windows)"));
    const int64_t count = window_count(static_cast<int64_t>(ids.size()), windows);
    for (int64_t k = 0; k < count; ++k) {
      const TokenWindow window = document_window(ids, k, windows);
      const Tensor hidden = model.forward_to_site(window.input, site).to(Device::CPU);
      const int64_t skip = window.bos && !o.keep_bos ? 1 : 0;
      const std::vector<int32_t> piece(window.input.begin() + skip, window.input.end());
      Json after = Json::object();  // a shard never ends inside a cut story
      after["next_story"] = reader.position().next_story;
      after["byte_offset"] = reader.position().byte_offset;
      writer.add_story(story.index, piece, hidden.data<float>() + skip * d, after, k + 1 == count);
      tokens += static_cast<int64_t>(piece.size());
    }
  };
  const auto text_position = [&](const Json& j) {
    try {
      return TextPosition{j.at("next_story").as_int(), j.at("byte_offset").as_int()};
    } catch (const DataError& e) {
      throw DataError(cat(o.out, "/manifest.json: a text position: ", e.what()));
    }
  };
  TextCacheResult result;
  result.d = d;
  result.hook_name = hook_name(site);
  TextStory story;
  // Shards written before that are missing or broken: written again from the text.
  for (const auto& [index, problem] : writer.damaged_shards()) {
    const std::string file = writer.manifest().shards[index].file;
    reader.seek(text_position(writer.shard_start(index)));
    writer.begin_rewrite(index);
    while (writer.rewriting() && reader.next(story)) cache_story(story);
    if (writer.rewriting())
      throw DataError(cat(o.text, ": ended before ", o.out, "/", file,
                          " was rewritten: the text has changed since the cache was written"));
    note(cat("rewrote ", o.out, "/", file, " (", problem, ")"));
  }
  if (writer.manifest().complete) {
    result.manifest = writer.manifest();
    result.complete_already = true;
    return result;
  }
  reader.rewind();
  if (writer.manifest().text_position.has("next_story")) reader.seek(text_position(writer.manifest().text_position));
  const int64_t start_story = reader.position().next_story;
  if (start_story > 0) note(cat("continuing ", o.out, " at story ", start_story));
  if (events.begin) events.begin(text_bytes, reader.file_offset());
  while ((o.max_stories == 0 || reader.position().next_story < o.max_stories) && reader.next(story)) {
    cache_story(story);
    if (events.story_done) events.story_done(reader.file_offset(), tokens, reader.position().next_story);
  }
  // The same refusal as sae_train's for a corpus without a single token.
  if (tokens == 0) throw DataError(cat(o.text, ": the text holds no stories"));
  writer.finish();
  result.manifest = writer.manifest();
  result.stories_read = reader.position().next_story;
  return result;
}

}  // namespace sae
