// Hook names (see hook_points.h).
#include "lm/hook_points.h"

#include "tensor/error.h"

namespace sae {

bool reached_before(const HookSite& a, const HookSite& b, bool parallel_blocks) {
  if (a.layer != b.layer) return a.layer < b.layer;
  const auto rank = [parallel_blocks](HookPoint p) {
    if (parallel_blocks && p == HookPoint::Ln2Normalized) return static_cast<double>(HookPoint::ResidPre) + 0.5;
    return static_cast<double>(p);
  };
  return rank(a.point) < rank(b.point);
}

namespace {

struct PointName {
  HookPoint point;
  const char* suffix;  // after "blocks.L."
};
constexpr PointName kPointNames[] = {
    {HookPoint::ResidPre, "hook_resid_pre"},         {HookPoint::AttnZ, "attn.hook_z"},
    {HookPoint::AttnOut, "hook_attn_out"},           {HookPoint::ResidMid, "hook_resid_mid"},
    {HookPoint::Ln2Normalized, "ln2.hook_normalized"}, {HookPoint::MlpOut, "hook_mlp_out"},
    {HookPoint::ResidPost, "hook_resid_post"},
};

constexpr const char* kSupported =
    "blocks.L.hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, ln2.hook_normalized, "
    "attn.hook_z, or hidden_states[K]";

// A decimal index of at most 6 digits, or -1.
int64_t parse_index(const std::string& digits) {
  if (digits.empty() || digits.size() > 6) return -1;
  int64_t n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n;
}

}  // namespace

std::string hook_name(const HookSite& site) {
  if (site.point == HookPoint::FinalOutput) return cat("hidden_states[", site.layer, "]");
  for (const PointName& p : kPointNames)
    if (p.point == site.point) return cat("blocks.", site.layer, ".", p.suffix);
  return "?";
}

HookSite parse_hook_name(const std::string& name, const std::string& what) {
  const std::string shown = printable(name);
  const std::string hidden = "hidden_states[";
  if (name.rfind(hidden, 0) == 0 && name.size() > hidden.size() + 1 && name.back() == ']') {
    const int64_t k = parse_index(name.substr(hidden.size(), name.size() - hidden.size() - 1));
    if (k < 0) throw UsageError(cat(what, " '", shown, "': expected hidden_states[K] with K a number"));
    return HookSite{k, HookPoint::FinalOutput};  // resolved against the model by hidden_states_site
  }
  const std::string blocks = "blocks.";
  if (name.rfind(blocks, 0) != 0) {
    // A module path as Hugging Face and sparsify name hook points: said in SAELens's terms.
    if (const std::optional<ModulePath> module = parse_module_path(name)) {
      const int64_t layer = module->layer;
      if (module->rest.empty())
        throw UsageError(cat(what, " '", shown, "' names a module (Hugging Face / sparsify): its output is blocks.",
                             layer, ".hook_resid_post (= hidden_states[", layer + 1, "], --layer ", layer + 1,
                             ", except after the last block)"));
      throw UsageError(cat(what, " '", shown, "' names a module (Hugging Face / sparsify): give the hook point by ",
                           "SAELens's name, e.g. blocks.", layer, ".hook_mlp_out or blocks.", layer,
                           ".hook_attn_out (expected ", kSupported, ")"));
    }
    throw UsageError(cat(what, " '", shown, "' is not a hook point we read: expected ", kSupported));
  }
  const size_t dot = name.find('.', blocks.size());
  const int64_t layer = dot == std::string::npos ? -1 : parse_index(name.substr(blocks.size(), dot - blocks.size()));
  if (layer < 0) throw UsageError(cat(what, " '", shown, "': expected blocks.L.<hook> with L a block number"));
  const std::string suffix = name.substr(dot + 1);
  for (const PointName& p : kPointNames)
    if (suffix == p.suffix) return HookSite{layer, p.point};
  throw UsageError(cat(what, " '", shown, "': ", printable(suffix), " is not a hook point we read: expected ",
                       kSupported));
}

std::optional<ModulePath> parse_module_path(const std::string& name) {
  std::string rest = name;
  for (const char* prefix : {"model.", "transformer.", "gpt_neox."})
    if (rest.rfind(prefix, 0) == 0) rest = rest.substr(std::string(prefix).size());
  for (const std::string list : {"layers.", "h."}) {
    if (rest.rfind(list, 0) != 0) continue;
    const std::string tail = rest.substr(list.size());
    const size_t dot = tail.find('.');
    const int64_t layer = parse_index(tail.substr(0, dot));
    if (layer < 0 || (dot != std::string::npos && dot + 1 == tail.size())) return std::nullopt;
    return ModulePath{layer, dot == std::string::npos ? std::string() : tail.substr(dot + 1)};
  }
  return std::nullopt;
}

HookSite hidden_states_site(int64_t k, int64_t layers) {
  if (k == layers) return HookSite{layers, HookPoint::FinalOutput};
  return HookSite{k, HookPoint::ResidPre};
}

HookSite canonical_site(const HookSite& site, int64_t layers) {
  const int64_t k = hidden_states_index(site, layers);
  return k >= 0 ? hidden_states_site(k, layers) : site;
}

int64_t hidden_states_index(const HookSite& site, int64_t layers) {
  if (site.point == HookPoint::ResidPre) return site.layer;
  if (site.point == HookPoint::ResidPost && site.layer + 1 < layers) return site.layer + 1;
  if (site.point == HookPoint::FinalOutput) return layers;
  return -1;
}

HookChoice hook_choice(const std::string& hook, int64_t layer, bool layer_given) {
  HookChoice choice;
  if (!hook.empty() && layer_given)
    throw UsageError("--hook and --layer both say where to read: give one (--layer K is hidden_states[K])");
  if (!hook.empty()) {
    choice.option = "--hook";
    choice.site = parse_hook_name(hook, "--hook");
  } else if (layer_given) {
    if (layer < 0 || layer > (1 << 20)) throw UsageError(cat("--layer must be a hidden_states index >= 0, got ", layer));
    choice.option = "--layer";
    choice.site = HookSite{layer, HookPoint::FinalOutput};
  }
  return choice;
}

int64_t blocks_needed(const HookSite& site, int64_t layers) {
  if (site.point == HookPoint::FinalOutput) return layers;
  if (site.point == HookPoint::ResidPre) return site.layer;
  return site.layer + 1;
}

}  // namespace sae
