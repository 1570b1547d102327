// Fuzzes PyTorch's torch.save files (io/torch_pickle.h), dictionary_learning's ae.pt and OpenAI's
// state dicts as load_checkpoint reads them (sae/train/dictionary_learning_file.h, openai_sae_file.h):
// the input's parts (fuzz_util.h kPartMarker) are ae.pt and config.json, written to a folder. Every
// tensor the reader accepts must read back with its shape's element count; a loaded SAE must be one
// of the units a class maps to, with consistent shapes and its unit's check passing.
#include <vector>

#include "fuzz_util.h"
#include "io/torch_pickle.h"
#include "sae/arch/registry.h"
#include "sae/train/checkpoint.h"

using namespace sae;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts = fuzz::split_parts(data, size);
  const char* files[2] = {"dl/ae.pt", "dl/config.json"};
  for (size_t i = 0; i < 2; ++i) {
    if (i < parts.size())
      fuzz::write_scratch_file(files[i], parts[i]);
    else
      fuzz::remove_scratch(files[i]);
  }
  fuzz::attempt([&] {
    const TorchFile file = TorchFile::open(fuzz::scratch_dir() + "/dl/ae.pt");
    for (const std::string& name : file.names()) {
      const TorchTensorEntry& e = file.entry(name);
      int64_t count = 1;
      for (int64_t s : e.shape) count *= s;
      if (e.dtype == "F32" || e.dtype == "F64" || e.dtype == "F16" || e.dtype == "BF16") {
        Tensor t;
        if (fuzz::attempt([&] { t = file.read_f32(name); }))
          fuzz::require(t.numel() == (e.shape.empty() ? 1 : count), "read_f32 returned the wrong number of elements");
      } else {
        std::vector<int64_t> v;
        if (fuzz::attempt([&] { v = file.read_integers(name); }))
          fuzz::require(static_cast<int64_t>(v.size()) == count, "read_integers returned the wrong number of elements");
      }
    }
  });
  Checkpoint c;
  if (!fuzz::attempt([&] { c = load_checkpoint(fuzz::scratch_dir() + "/dl", Device::CPU); })) return 0;
  const SaeParams& p = c.params;
  const int64_t d = p.d_in(), f = p.d_sae();
  fuzz::require(p.kind == "standard" || p.kind == "topk" || p.kind == "batchtopk" || p.kind == "matryoshka_batchtopk" ||
                    p.kind == "jumprelu" || p.kind == "gated",
                cat("an ae.pt loaded as ", p.kind));
  fuzz::require(!c.state && !p.transcoder, "an ae.pt loaded with a training state or as a transcoder");
  fuzz::require(d >= 1 && f >= 1 && p.W_enc.shape() == Shape({d, f}) && p.W_dec.shape() == Shape({f, d}) &&
                    p.b_dec.shape() == Shape({d}),
                "an ae.pt loaded with inconsistent shapes");
  fuzz::require(fuzz::attempt([&] { unit_of(p).check(p); }), "an ae.pt fails its unit's check");
  return 0;
}
