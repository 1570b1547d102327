// Fuzzes the .npz reader (io/npz.h) on the input as a file: open, every entry's bounds against the
// file (data inside it, stored sizes equal, a deflated size deflate can produce), read_f32 of every
// array (a stored one's element count against its .npy header); then the archive as a Gemma Scope
// params.npz through load_checkpoint, whose SAE must be a jumprelu SAE with consistent shapes.
#include <cstring>
#include <vector>

#include "fuzz_util.h"
#include "io/npy.h"
#include "io/npz.h"
#include "sae/train/checkpoint.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_scratch_file("params.npz", std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::attempt([&] {
    const NpzFile file = NpzFile::open(path);
    for (const std::string& name : file.names()) {
      const NpzEntry& e = file.entry(name);
      fuzz::require(e.method == 0 || e.method == 8, cat("method ", e.method, " was accepted"));
      fuzz::require(e.data_offset <= size && e.compressed <= size - e.data_offset, "an entry's data runs past the file");
      fuzz::require(e.method != 0 || e.compressed == e.size, "a stored entry with two sizes was accepted");
      fuzz::require(e.method != 8 || e.size / kMaxDeflateRatio <= e.compressed + 1,
                    "a deflated size larger than deflate can make was accepted");
      Tensor t;
      if (fuzz::attempt([&] { t = file.read_f32(name); }) && e.method == 0) {
        const NpyHeader h = parse_npy_header(data + e.data_offset, e.size, "stored");
        fuzz::require(t.numel() == (h.shape.empty() ? 1 : h.elements), "read_f32 returned the wrong size");
      }
    }
  });
  fuzz::attempt([&] {
    const Checkpoint c = load_checkpoint(path, Device::CPU, /*with_state=*/false);
    fuzz::require(c.params.kind == "jumprelu" && !c.npz.empty(), "a params.npz loaded as another kind");
    fuzz::require(c.params.d_in() >= 1 && c.params.d_sae() >= 1 && c.params.W_dec.size(0) == c.params.d_sae() &&
                      c.params.W_dec.size(1) == c.params.d_in(),
                  "a params.npz loaded with inconsistent shapes");
  });
  return 0;
}
