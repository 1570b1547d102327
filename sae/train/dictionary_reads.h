// What a run reads and what it reconstructs (docs/architectures.md §2.13): an SAE reads one
// activation and reconstructs it; a transcoder reads one and reconstructs another (of any width); a
// crosscoder reads several of one width, side by side, and reconstructs them all. Each activation is
// named by a read: a hook of --model ("blocks.2.ln2.hook_normalized", "hidden_states[2]"), the same
// of --model-b ("model_b:blocks.2.hook_resid_post"), or an activation file or cache (its path).
// Runs trained together read the union of their reads from one data stream (one pass of each
// model), each taking its own columns.
#pragma once
#include <string>
#include <vector>

#include "lm/hook_points.h"

namespace sae {

struct TrainConfig;

enum class DictionaryKind { Sae, Transcoder, Crosscoder };
const char* dictionary_kind_name(DictionaryKind kind);  // "sae", "transcoder", "crosscoder"

struct DictionaryReads {
  DictionaryKind kind = DictionaryKind::Sae;
  std::vector<std::string> in, out;  // out = in for an SAE and a crosscoder
  bool text = false;                 // hooks of models (else files)
};

// The run's reads, from its options. UsageError (one line naming the options) for combinations that
// say nothing or contradict each other: --hook-in without --hook-out (and no --transcoder),
// --target-data with text or synthetic data, --hooks with --hook, fewer than two crosscoder sources,
// a hook read twice, --skip without a transcoder, a unit that does not train this kind
// (ArchUnit::trains_transcoders / trains_crosscoders), --normalize story for a transcoder or a
// crosscoder.
DictionaryReads dictionary_reads(const TrainConfig& c);
inline DictionaryKind dictionary_kind(const TrainConfig& c) { return dictionary_reads(c).kind; }

// A text read's model (0: --model, 1: --model-b) and hook site (unresolved).
struct TextReadName {
  int model = 0;
  HookSite site;
};
TextReadName parse_text_read(const std::string& read);
std::string text_read_name(int model, const std::string& hook);

// The width d of the activation the run reads (one source's for a crosscoder, the input's for a
// transcoder): the generator's, a file's or cache's header, or the model's config.json at the hook.
// DataError for data or a model folder that cannot be read.
int64_t dictionary_read_width(const TrainConfig& c);

// --expansion-factor E (SAELens's and sparsify's): sets --features to E d for a fresh run (not a
// --resume, which keeps its recorded width). UsageError beside --features given on the command line,
// or --init (whose SAE sets the width).
void resolve_expansion_factor(TrainConfig& c);

}  // namespace sae
