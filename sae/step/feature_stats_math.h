// The formulas of the feature-statistics kernels (sae_kernels.h, "feature statistics"), written once
// for the CPU kernels (cpu_stats_kernels.cpp), the CUDA kernels (cuda_stats_kernels.cu) and the host
// side that merges their results (sae/train/feature_stats.cpp):
//   histogram_bin: half-octave bins read off a float's bits (docs/contract.md §4, feature_stats);
//   offer_candidate: how a feature's short list of its largest activations takes one more;
//   merge_into_top_list: how one batch's candidates of a feature enter its top list (with their
//   payload: where each happened, its context's token ids and the feature's values there).
// Letters: K the list's capacity; a "group" is a set of rows that count once (the rows of one story).
#pragma once
#include <cstdint>
#include <cstring>

#include "tensor/half.h"
#include "tensor/host_device.h"

namespace sae {

// Bins of the activation histogram. Bin 0 holds every positive value below 2^-10; bin b in 1..47
// holds [lower(b), lower(b+1)) with lower(b) = 2^(floor((b-1)/2) - 10) * (b even ? 1.5 : 1), i.e. each
// octave [2^e, 2^(e+1)) is cut at 1.5 * 2^e; bin 47 holds everything from 2^13 up. The bin is read
// off the bits of the value as a float32: (exponent << 1 | top mantissa bit) - 233, clamped.
constexpr int kHistogramBins = 48;
constexpr int kHistogramKeyOffset = 233;  // 2 * (127 - 10) - 1: the key of 2^-10 is 234, bin 1

SAE_HOST_DEVICE inline int histogram_bin(float value) {
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
#endif
  const int key = static_cast<int>((bits >> 22) & 0x1FFu);  // 8 exponent bits and the top mantissa bit
  const int bin = key - kHistogramKeyOffset;
  return bin < 0 ? 0 : (bin >= kHistogramBins ? kHistogramBins - 1 : bin);
}

// Lower edge of bin b (0 for bin 0), in double.
inline double histogram_lower_edge(int bin) {
  if (bin <= 0) return 0.0;
  const int octave = (bin - 1) / 2 - 10;
  double edge = 1.0;
  for (int i = 0; i < (octave < 0 ? -octave : octave); ++i) edge = octave < 0 ? edge / 2 : edge * 2;
  return bin % 2 == 0 ? 1.5 * edge : edge;
}

// A feature's candidate list: values[0 .. count) in decreasing order, ties in the order they came,
// with the row and group of each. offer_candidate adds (value, row, group) for a row that comes after
// every row already offered: the list keeps the `capacity` largest values with at most one entry per
// group (the group's largest; of equal ones, the first). A value that does not beat the group's entry,
// or (full list, new group) the last entry, changes nothing.
template <typename T, typename G>
SAE_HOST_DEVICE inline bool offer_candidate(T* values, int32_t* rows, G* groups, int32_t& count, int32_t capacity,
                                            T value, int32_t row, G group) {
  int32_t same = -1;
  for (int32_t j = 0; j < count; ++j)
    if (groups[j] == group) {
      same = j;
      break;
    }
  int32_t at;  // the slot the new entry starts from, moving up past smaller values
  if (same >= 0) {
    if (!(value > values[same])) return false;
    at = same;  // the group's old entry leaves; everything above it is >= it
  } else if (count < capacity) {
    at = count++;
  } else {
    if (!(value > values[count - 1])) return false;
    at = count - 1;  // the last entry leaves
  }
  while (at > 0 && values[at - 1] < value) {
    values[at] = values[at - 1];
    rows[at] = rows[at - 1];
    groups[at] = groups[at - 1];
    --at;
  }
  values[at] = value;
  rows[at] = row;
  groups[at] = group;
  return true;
}

// ---------------------------------------------------------------- a feature's top list

// Bits of FeatureTopListsView::error (sae_kernels.h FeatureTopLists::error).
constexpr int32_t kStatsBadRow = 1;  // a candidate's row outside the batch
constexpr int32_t kStatsNoSlot = 2;  // a list without a free payload slot (a broken list)
constexpr int32_t kMaxTopK = 1000;   // the largest K (check_feature_stats_options)

// The top lists of all features as plain pointers: per feature [K] by rank (value, dedup key, the
// payload slot of each rank) and count; the payload [K] by slot (story, position, step, the batch row
// whose context is still to look up or -1) and [K, W] by slot (token ids, the feature's values).
struct FeatureTopListsView {
  float* value;
  int64_t* key;
  int32_t* slot;
  int32_t* count;
  float* threshold;  // [F]: the K-th value, 0 while a list has fewer
  int64_t* story;
  int64_t* position;
  int64_t* step;
  int32_t* pending_row;
  int32_t* tokens;
  float* values;
  int32_t k;
  int32_t context;  // C (W = 2C + 1)
};

// One batch as the merge reads it: the scan's candidates, where the rows came from (story null: not
// known), and the features to look up context values in (f [N, F] dense, or the by-feature lists).
struct FeatureStatsBatchView {
  const float* candidate_values;  // [F, K] in decreasing order
  const int32_t* candidate_rows;  // [F, K]
  const int32_t* candidate_count;  // [F]
  int64_t rows;                    // N
  const int64_t* story;            // [N], or null
  const int64_t* position;         // [N]
  const int32_t* tokens;           // [N, W]
  int64_t step;
  int64_t unknown_base;  // a row r of no known story gets key unknown_base - r
  const float* f;        // [N, F], or null with the lists or f_bf16
  const BFloat16* f_bf16;  // [N, F] stored as bf16 (widened as read), or null
  const int32_t* col_ptr;
  const int32_t* entry_rows;
  const float* entry_values;
  int64_t features;
};

// The feature's value at row r of the batch (0 where the sparse lists hold no entry: f was 0).
SAE_HOST_DEVICE inline float batch_feature_value(const FeatureStatsBatchView& b, int64_t r, int64_t j) {
  if (b.f) return b.f[r * b.features + j];
  if (b.f_bf16) return widen(b.f_bf16[r * b.features + j]);
  int32_t lo = b.col_ptr[j], hi = b.col_ptr[j + 1];  // the first entry with row >= r, by bisection
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (b.entry_rows[mid] < r)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < b.col_ptr[j + 1] && b.entry_rows[lo] == r ? b.entry_values[lo] : 0.0f;
}

// The key an entry is kept once per: its story; for data without stories (a story of -1, a position
// that is the token's index in the data) the token itself, so that a token seen again in a later
// epoch is not listed twice; rows of no known place (`unknown`, counted down from -1) each their own.
constexpr int64_t kTokenKeyBase = -(int64_t(1) << 62);
SAE_HOST_DEVICE inline int64_t top_entry_key(int64_t story, int64_t position, int64_t unknown) {
  if (story >= 0) return story;
  if (position >= 0) return kTokenKeyBase + position;
  return unknown;
}

// The payload slot no entry of the list uses, or -1.
SAE_HOST_DEVICE inline int32_t free_payload_slot(const int32_t* slot, int32_t count, int32_t k) {
  uint64_t used[(kMaxTopK + 63) / 64] = {};
  for (int32_t a = 0; a < count; ++a)
    if (slot[a] >= 0) used[slot[a] / 64] |= uint64_t(1) << (slot[a] % 64);
  for (int32_t s = 0; s < k; ++s)
    if (!(used[s / 64] >> (s % 64) & 1)) return s;
  return -1;
}

// Feature j's candidates of one batch enter its top list, in the order they came (offer_candidate:
// at most one entry per story, rows of no known story each on their own). A new entry takes a free
// payload slot and its row's token ids; then every new entry still in the list gets the feature's
// value at itself and at the neighbours the batch holds (same story, the positions next to it; NaN
// elsewhere), and the threshold is updated. Returns kStats* bits for what went wrong, or 0.
SAE_HOST_DEVICE inline int32_t merge_into_top_list(const FeatureTopListsView& l, const FeatureStatsBatchView& b,
                                                   int64_t j, float nan) {
  const int32_t k = l.k;
  const int64_t c = l.context, w = 2 * c + 1, at = j * k;
  int32_t error = 0;
  bool added = false;
  for (int32_t cand = 0; cand < b.candidate_count[j]; ++cand) {
    const float value = b.candidate_values[at + cand];
    const int32_t row = b.candidate_rows[at + cand];
    if (row < 0 || row >= b.rows) {
      error |= kStatsBadRow;
      continue;
    }
    const int64_t story = b.story ? b.story[row] : -1;
    const int64_t key = top_entry_key(story, b.story ? b.position[row] : -1, b.unknown_base - row);
    if (!offer_candidate(l.value + at, l.slot + at, l.key + at, l.count[j], k, value, int32_t(-1), key)) continue;
    int32_t rank = 0;  // the new entry holds slot -1
    while (l.slot[at + rank] != -1) ++rank;
    const int32_t slot = free_payload_slot(l.slot + at, l.count[j], k);
    if (slot < 0) {
      error |= kStatsNoSlot;
      l.slot[at + rank] = 0;
      continue;
    }
    l.slot[at + rank] = slot;
    const int64_t p = at + slot;
    l.story[p] = story;
    l.position[p] = b.story ? b.position[row] : -1;
    l.step[p] = b.step;
    l.pending_row[p] = row;
    for (int64_t o = 0; o < w; ++o) {
      l.tokens[p * w + o] = b.story ? b.tokens[row * w + o] : -1;
      l.values[p * w + o] = nan;
    }
    added = true;
  }
  if (!added) return error;
  for (int32_t rank = 0; rank < l.count[j]; ++rank) {
    const int64_t p = at + l.slot[at + rank];
    const int32_t row = l.pending_row[p];
    if (row < 0) continue;
    l.pending_row[p] = -1;
    l.values[p * w + c] = l.value[at + rank];
    if (!b.story) continue;
    for (int64_t o = -c; o <= c; ++o) {
      const int64_t t = row + o;
      if (o == 0 || t < 0 || t >= b.rows || b.story[t] != b.story[row] || b.position[t] != b.position[row] + o)
        continue;
      l.values[p * w + o + c] = batch_feature_value(b, t, j);
    }
  }
  l.threshold[j] = l.count[j] == k ? l.value[at + k - 1] : 0.0f;
  return error;
}

}  // namespace sae
