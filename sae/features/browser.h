// The feature browser (docs/contract.md §5, sae_browser): one self-contained static HTML page per run
// (no server, no network, nothing downloaded), its data embedded as JSON and read by plain JS and CSS
// written here (browser_page.cpp). The page lists the features by density with a search by index, and
// shows for the chosen one: its density, a histogram of its activations (inline SVG), its top
// activations in context with every token shaded by the feature's strength (the value in the title
// on hover), the tokens its decoder direction promotes and suppresses most through the unembedding
// (W_dec[i,:] . W_U[v,:], W_U the model's lm_head; text runs with a model), and on synthetic data the
// planted concept it matches best, with the cosine.
// Every text reaches the page through JSON whose <, >, & and line separators are escaped, and the
// script writes it with textContent and setAttribute only, so token text cannot become markup.
// Letters: F features, D = d_in, V vocabulary, K top activations, W = 2C + 1 context tokens.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/json.h"
#include "sae/params.h"
#include "sae/train/feature_stats.h"

namespace sae {

struct BrowserOptions {
  std::string run;       // a run folder (config.json, sae/) or an SAE folder (cfg.json, sae_weights...)
  std::string model;     // a model folder: its tokenizer and unembedding ("" = the run's own --model, if any)
  std::string hook;      // the SAE's hook point ("" = the run's --hook, else its cfg.json's hook_name)
  std::string stats;     // feature_stats.safetensors ("" = the one in the SAE folder)
  int64_t top_tokens = 10;  // promoted and suppressed tokens shown per feature
};

// The page's data, held compactly (a tree of Json values takes about 50x its text): every field but
// the features as a Json, and each feature's object as its compact JSON text, in index order (n, d,
// h, top, up, down, sn, c: browser_page.cpp reads them).
struct BrowserData {
  Json head;                          // title, about, has_*, edges, vocab
  std::vector<std::string> features;  // one JSON object per feature
  Json feature(int64_t i) const { return Json::parse(features.at(static_cast<size_t>(i))); }
};

// Reads the run, the SAE, its statistics, and the model or the synthetic concepts. DataError naming
// the file for anything missing or malformed; `notes` gets one line per thing left out (a model
// folder that is gone, ...).
BrowserData browser_data(const BrowserOptions& options, std::string* notes = nullptr);

// The tokens each feature's decoder row promotes and suppresses most: logits = W_dec W_U^T, computed
// in blocks of features; per feature the `count` largest and smallest, best first (none for a row that
// moves every logit alike, such as a zero row).
struct TokenLogit {
  int32_t id;
  float logit;
};
struct PromotedTokens {
  std::vector<std::vector<TokenLogit>> promoted, suppressed;  // one list per feature
};
PromotedTokens promoted_tokens(const Tensor& W_dec, const Tensor& unembedding, int64_t count);

// The page: the data as JSON in a <script type="application/json"> element (json_for_script), our
// CSS and JS, handed to `write` in pieces of about a megabyte (never held whole).
void write_browser_html(const BrowserData& data, const std::function<void(const std::string&)>& write);
std::string browser_html(const BrowserData& data);  // the same page as one string
// JSON text made safe inside a <script> element: <, >, & and U+2028/U+2029 written as \u escapes.
std::string json_for_script(const std::string& json_text);

}  // namespace sae
