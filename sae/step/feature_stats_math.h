// The formulas of the feature-statistics kernels (sae_kernels.h, "feature statistics"), written once
// for the CPU kernels (cpu_stats_kernels.cpp), the CUDA kernels (cuda_stats_kernels.cu) and the host
// side that merges their results (sae/train/feature_stats.cpp):
//   histogram_bin: half-octave bins read off a float's bits (docs/contract.md §4, feature_stats);
//   offer_candidate: how a feature's short list of its largest activations takes one more.
// Letters: K the list's capacity; a "group" is a set of rows that count once (the rows of one story).
#pragma once
#include <cstdint>
#include <cstring>

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

}  // namespace sae
