// The .npz reader (io/npz.h): numpy-written archives (np.savez stored, np.savez_compressed
// deflated, float64; scripts/gen_gemma_scope_fixture.py) read equally and agree with numpy's own
// numbers; hand-built archives (tests/util/npz_writer.h: float16, a ZIP64 end record, a comment)
// read back exactly; and every hostile archive (truncated, bad signatures, offsets past the end,
// duplicate names, encryption, other methods, multi-disk, bad CRC, a declared size deflate cannot
// produce, a corrupt or short or long deflate stream, a .npy inside that is not float or is cut)
// is a one-line DataError naming the file, never a crash or a huge allocation.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "io/npy.h"
#include "io/npz.h"
#include "tensor/ops.h"
#include "tests/util/compare.h"
#include "tests/util/fixture.h"
#include "tests/util/npz_writer.h"
#include "tests/util/test_util.h"

using namespace sae;
using namespace sae::testing;

namespace {

std::string ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/gemma_scope/" + name; }

// f throws a DataError whose one-line message holds every one of parts.
void expect_one_line_data_error(const std::function<void()>& f, const std::vector<std::string>& parts,
                                const std::string& label) {
  try {
    f();
    ADD_FAILURE() << label << ": expected a DataError mentioning '" << parts[0] << "'";
  } catch (const DataError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << label << ": " << message;
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << label << ": '" << part << "' not in: " << message;
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": wrong exception type: " << e.what();
  }
}

// Opens the archive and reads every array.
void open_and_read_all(const std::string& path) {
  const NpzFile file = NpzFile::open(path);
  for (const std::string& name : file.names()) file.read_f32(name);
}

std::vector<float> ramp(int n, float scale) {
  std::vector<float> v;
  for (int k = 0; k < n; ++k) v.push_back(scale * static_cast<float>(k - n / 2));
  return v;
}

}  // namespace

TEST(Npz, NumpyStoredDeflatedAndFloat64ArchivesReadEqually) {
  const NpzFile stored = NpzFile::open(ref("stored/params.npz")), deflated = NpzFile::open(ref("deflated.npz")),
                f64 = NpzFile::open(ref("f64.npz"));
  const std::vector<std::string> names = {"W_dec", "W_enc", "b_dec", "b_enc", "threshold"};
  EXPECT_EQ(stored.names(), names);
  EXPECT_EQ(deflated.names(), names);
  EXPECT_EQ(f64.names(), names);
  EXPECT_EQ(stored.entry("W_enc").method, 0);
  EXPECT_EQ(deflated.entry("W_enc").method, 8);
  EXPECT_LT(deflated.entry("W_enc").compressed, deflated.entry("W_enc").size);
  EXPECT_EQ(stored.entry("W_enc").name, "W_enc.npy");
  EXPECT_EQ(stored.entry("W_enc").array, "W_enc");
  EXPECT_EQ(stored.read_f32("W_enc").shape(), (Shape{32, 64}));
  EXPECT_EQ(stored.read_f32("W_dec").shape(), (Shape{64, 32}));
  EXPECT_EQ(stored.read_f32("threshold").shape(), (Shape{64}));
  for (const std::string& name : names) {
    const Tensor a = stored.read_f32(name), b = deflated.read_f32(name), c = f64.read_f32(name);
    EXPECT_EQ(a.shape(), b.shape()) << name;
    EXPECT_EQ(a.shape(), c.shape()) << name;
    EXPECT_EQ(max_abs_diff(a, b), 0.0) << name;  // the same float32 bits
    EXPECT_EQ(max_abs_diff(a, c), 0.0) << name;  // float64 copies of float32 values convert back exactly
  }
  // The values are numpy's: x W_enc + b_enc is the pre-activation numpy computed in float64.
  const test::Fixture expected(ref("expected.safetensors"));
  const Tensor x = NpyFile::open(ref("x.npy")).read_f32();
  const Tensor pre = add(matmul(x, stored.read_f32("W_enc")), stored.read_f32("b_enc"));
  const Tensor want = expected.tensor("pre", DType::F32);
  EXPECT_LE(max_abs_diff(pre, want), 1e-5 * (1.0 + max_abs(want)));
  EXPECT_GT(max_abs(want), 0.5);
  expect_one_line_data_error([&] { stored.read_f32("W_skip"); }, {ref("stored/params.npz"), "no array 'W_skip'"}, "missing");
  EXPECT_FALSE(stored.has("W_enc.npy"));
}

TEST(Npz, HandBuiltArchivesReadBackExactly) {
  TempDir dir("npz");
  const std::vector<float> a = ramp(6, 0.25f), b = ramp(5, -1.5f);
  // float16 of exact values: 1, -2.5, 0.5, 65504.
  const std::vector<uint16_t> half = {0x3C00, 0xC100, 0x3800, 0x7BFF};
  const std::vector<double> wide = {1e-3, -7.0, 3.25};
  const std::vector<ZipMember> entries = {{"a.npy", npy_f32("(2, 3)", a), 0},
                                         {"b.npy", npy_f32("(5,)", b), 8},
                                         {"h.npy", npy_bytes("<f2", "(2, 2)", bytes_of(half)), 8},
                                         {"w.npy", npy_bytes("<f8", "(3,)", bytes_of(wide)), 0},
                                         {"s.npy", npy_f32("()", {4.5f}), 8},
                                         {"e.npy", npy_f32("(0, 4)", {}), 0}};
  int variant = 0;
  for (const ZipOptions& options : {ZipOptions{}, ZipOptions{true, ""}, ZipOptions{false, "a comment"},
                                    ZipOptions{true, "another comment"}}) {
    const std::string path = dir.str(cat("hand", variant++, ".npz"));
    sae::testing::write_file(path, make_zip(entries, options));
    const NpzFile f = NpzFile::open(path);
    EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b", "e", "h", "s", "w"})) << path;
    const Tensor ta = f.read_f32("a");
    EXPECT_EQ(ta.shape(), (Shape{2, 3}));
    EXPECT_EQ(ta.to_vector(), std::vector<double>(a.begin(), a.end()));
    EXPECT_EQ(f.read_f32("b").to_vector(), std::vector<double>(b.begin(), b.end()));
    EXPECT_EQ(f.read_f32("h").to_vector(), (std::vector<double>{1, -2.5, 0.5, 65504}));
    EXPECT_EQ(f.read_f32("w").to_vector(),
              (std::vector<double>{double(float(1e-3)), -7.0, 3.25}));  // rounded to float32
    EXPECT_EQ(f.read_f32("s").shape(), (Shape{1}));
    EXPECT_EQ(f.read_f32("s").to_vector(), (std::vector<double>{4.5}));
    EXPECT_EQ(f.read_f32("e").numel(), 0);
  }
  // Names without ".npy" stay as they are; a name that is only ".npy" is kept whole.
  sae::testing::write_file(dir.str("names.npz"), make_zip({{"plain", npy_f32("(1,)", {2.0f}), 0}, {".npy", npy_f32("(1,)", {3.0f}), 0}}));
  const NpzFile names = NpzFile::open(dir.str("names.npz"));
  EXPECT_EQ(names.read_f32("plain").to_vector(), (std::vector<double>{2.0}));
  EXPECT_EQ(names.read_f32(".npy").to_vector(), (std::vector<double>{3.0}));
}

TEST(Npz, HostileArchivesAreOneLineDataErrors) {
  TempDir dir("npz_hostile");
  const std::string good_stored = sae::testing::read_file(ref("stored/params.npz")), good_deflated = sae::testing::read_file(ref("deflated.npz"));
  ASSERT_GT(good_stored.size(), 1000u);
  int n = 0;
  // Writes `bytes`, then opens and reads every array: a DataError naming the file and `parts`.
  auto expect_refused = [&](const std::string& bytes, const std::vector<std::string>& parts, const std::string& label) {
    const std::string path = dir.str(cat("h", n++, ".npz"));
    sae::testing::write_file(path, bytes);
    std::vector<std::string> all = {path};
    all.insert(all.end(), parts.begin(), parts.end());
    expect_one_line_data_error([&] { open_and_read_all(path); }, all, label);
  };
  const size_t central0 = find_signature(good_stored, 0x02014b50, 0), end0 = find_signature(good_stored, 0x06054b50);
  ASSERT_NE(central0, std::string::npos);
  ASSERT_EQ(end0, good_stored.size() - 22);

  // Not an archive, or cut.
  expect_refused("", {"too short"}, "empty");
  expect_refused("PK\x05\x06", {"too short"}, "four bytes");
  expect_refused(std::string(4000, 'x'), {"no end-of-central-directory record"}, "not a zip");
  expect_refused(good_stored.substr(0, good_stored.size() / 2), {"no end-of-central-directory record"}, "first half");
  expect_refused(good_stored.substr(0, good_stored.size() - 1), {"no end-of-central-directory record"}, "last byte cut");
  // The end record's comment length disagrees with the file's end: no valid end record.
  {
    std::string b = good_stored + "trailing";
    expect_refused(b, {"no end-of-central-directory record"}, "bytes after the end record");
  }
  // The front of the archive cut off (the offsets point at the wrong bytes).
  expect_refused(good_stored.substr(100), {"central directory"}, "front cut");

  // End record fields.
  {
    std::string b = good_stored;
    put_le16(b, end0 + 4, 1);  // disk number
    expect_refused(b, {"multi-disk"}, "disk 1");
  }
  {
    std::string b = good_stored;
    put_le32(b, end0 + 16, uint32_t(good_stored.size()));  // central directory offset past the end
    expect_refused(b, {"central directory", "outside the file"}, "cd past end");
  }
  {
    std::string b = good_stored;
    put_le16(b, end0 + 8, 0xFFFF);
    put_le16(b, end0 + 10, 0xFFFF);
    expect_refused(b, {"ZIP64"}, "saturated without locator");
  }
  {
    std::string b = good_stored;
    put_le16(b, end0 + 8, 60000);
    put_le16(b, end0 + 10, 60000);
    expect_refused(b, {"60000 entries cannot fit"}, "too many entries");
  }
  // A ZIP64 locator pointing nowhere.
  {
    std::vector<ZipMember> entries = {{"a.npy", npy_f32("(2,)", {1, 2}), 0}};
    std::string b = make_zip(entries, ZipOptions{true, ""});
    const size_t locator = find_signature(b, 0x07064b50);
    b.replace(locator + 8, 8, le64(uint64_t(1) << 40));
    expect_refused(b, {"ZIP64 locator"}, "locator past the end");
  }

  // Central directory entries.
  {
    std::string b = good_stored;
    b[central0] = 'Q';
    expect_refused(b, {"bad signature"}, "central signature");
  }
  {
    std::string b = good_stored;
    put_le16(b, central0 + 10, 99);  // method
    expect_refused(b, {"W_enc.npy", "compression method 99"}, "method 99");
  }
  {
    std::string b = good_stored;
    put_le16(b, central0 + 8, 1);  // flags: encrypted
    expect_refused(b, {"W_enc.npy", "encrypted"}, "encrypted");
  }
  {
    std::string b = good_stored;
    put_le32(b, central0 + 42, uint32_t(good_stored.size() - 10));  // local header offset near the end
    expect_refused(b, {"W_enc.npy", "no local header"}, "local offset");
  }
  {
    std::string b = good_stored;
    put_le32(b, central0 + 20, 8321);  // compressed size != size for a stored entry
    expect_refused(b, {"W_enc.npy", "stored entry"}, "stored sizes");
  }
  {
    std::string b = good_stored;
    put_le16(b, central0 + 28, 60000);  // name length past the directory
    expect_refused(b, {"run past the central directory"}, "name length");
  }
  {
    // The ZIP64 extra field is required for saturated sizes.
    std::string b = good_stored;
    put_le32(b, central0 + 20, 0xFFFFFFFF);
    put_le32(b, central0 + 24, 0xFFFFFFFF);
    expect_refused(b, {"W_enc.npy", "no ZIP64 extra field"}, "saturated sizes without extra");
  }
  // Duplicate names, the same array twice.
  expect_refused(make_zip({{"a.npy", npy_f32("(1,)", {1}), 0}, {"a.npy", npy_f32("(1,)", {2}), 8}}),
                 {"a.npy", "appears twice"}, "duplicate");
  // Local header.
  {
    std::string b = good_stored;
    b[0] = 'Q';
    expect_refused(b, {"W_enc.npy", "no local header"}, "local signature");
  }
  {
    std::string b = good_stored;
    b[30] = 'X';  // the first letter of the local name "W_enc.npy"
    expect_refused(b, {"W_enc.npy", "disagrees with the central directory"}, "local name");
  }
  {
    std::string b = good_stored;
    put_le32(b, 14, 0x12345678);  // local CRC
    expect_refused(b, {"W_enc.npy", "disagrees with the central directory (CRC or sizes)"}, "local crc");
  }

  // Data: a flipped byte fails the CRC-32 (stored and deflated).
  {
    std::string b = good_stored;
    b[central0 - 100] ^= 0x01;  // inside the last entry's data (threshold.npy)
    expect_refused(b, {"threshold.npy", "CRC-32 mismatch"}, "stored data byte");
  }
  {
    std::vector<ZipMember> entries = {{"a.npy", npy_f32("(64,)", ramp(64, 0.5f)), 8}};
    std::string b = make_zip(entries);
    const size_t central = find_signature(b, 0x02014b50);
    put_le32(b, central + 16, 0xDEADBEEF);
    put_le32(b, 14, 0xDEADBEEF);
    expect_refused(b, {"a.npy", "CRC-32 mismatch"}, "deflated crc");
  }
  // A declared size deflate cannot produce from the compressed bytes: refused at open, nothing allocated.
  {
    std::vector<ZipMember> entries = {{"a.npy", npy_f32("(64,)", ramp(64, 0.5f)), 8}};
    std::string b = make_zip(entries);
    const size_t central = find_signature(b, 0x02014b50);
    put_le32(b, central + 24, 0xFFFFFFF0u);  // 4 GB from about 100 bytes
    expect_refused(b, {"a.npy", "more than deflate can make"}, "oversized deflated");
    const NpzEntry fine = NpzFile::open([&] {
      const std::string p = dir.str("ok.npz");
      sae::testing::write_file(p, make_zip(entries));
      return p;
    }()).entry("a");
    EXPECT_LT(fine.compressed, fine.size);
  }
  // A deflate stream that is corrupt, ends before the declared size, or holds more.
  {
    const std::string npy = npy_f32("(64,)", ramp(64, 0.5f));
    std::string b = make_zip({{"a.npy", npy, 8}});
    const size_t data = 30 + 5 + 20;  // local header + name + ZIP64 extra
    b[data] = char(0xFF);              // block type 3 (reserved): invalid
    b[data + 1] = char(0xFF);
    expect_refused(b, {"a.npy", "corrupt deflated data"}, "corrupt deflate");

    // The stream inflates to 8 bytes less (more) than the archive and the .npy header declare.
    for (int delta : {+2, -2}) {
      const std::string header_part = npy_f32(cat("(", 64 + delta, ",)"), {}), data = bytes_of(ramp(64, 0.5f));
      std::string c = make_zip({{"a.npy", header_part + data, 8}});
      const size_t central = find_signature(c, 0x02014b50);
      const uint32_t size = uint32_t(header_part.size() + 4 * (64 + delta));
      put_le32(c, central + 24, size);
      c.replace(30 + 5 + 4, 8, le64(size));  // the local ZIP64 extra's size
      expect_refused(c, {"a.npy", delta > 0 ? "ends after" : "more than its declared"},
                     delta > 0 ? "stream shorter" : "stream longer");
    }
    // The compressed bytes cut short (the sizes say so consistently).
    std::string d = make_zip({{"a.npy", npy, 8}});
    const size_t central = find_signature(d, 0x02014b50);
    const uint32_t compressed = uint32_t(raw_deflate(npy).size());
    put_le32(d, central + 20, compressed - 10);
    d.replace(30 + 5 + 12, 8, le64(compressed - 10));
    expect_refused(d, {"a.npy", "deflated data"}, "stream cut");
  }
  // The .npy inside: not float, cut, a header longer than the entry, not a .npy at all.
  expect_refused(make_zip({{"a.npy", npy_bytes("<i4", "(2,)", bytes_of(std::vector<int32_t>{1, 2})), 0}}),
                 {"a.npy", "'<i4'"}, "int array");
  expect_refused(make_zip({{"a.npy", npy_bytes("<i8", "(2,)", bytes_of(std::vector<int64_t>{1, 2})), 8}}),
                 {"a.npy", "'<i8'"}, "int array deflated");
  expect_refused(make_zip({{"a.npy", npy_f32("(4,)", {1, 2, 3}), 0}}), {"a.npy", "truncated .npy data"}, "npy cut");
  expect_refused(make_zip({{"a.npy", npy_f32("(4,)", {1, 2, 3}), 8}}), {"a.npy", "truncated .npy data"},
                 "npy cut deflated");
  expect_refused(make_zip({{"a.npy", "hello, not numpy", 8}}), {"a.npy", "not a .npy file"}, "not npy");
  {
    std::string npy = npy_f32("(2,)", {1, 2});
    npy[6] = 2;  // version 2.0: a 4-byte header length, here huge
    npy.replace(8, 4, le32(0x7FFFFFF0));
    expect_refused(make_zip({{"a.npy", npy, 8}}), {"a.npy", "runs past the end"}, "npy header length");
  }
  // The deflated fixture cut just before its central directory: no end record.
  expect_refused(good_deflated.substr(0, find_signature(good_deflated, 0x02014b50)), {"no end-of-central-directory"},
                 "deflated cut");
  // Every hostile variant above also failed without crashing; a few random byte flips must too.
  for (size_t at : {size_t(5), size_t(27), size_t(200), central0 + 3, central0 + 30, end0 + 12}) {
    std::string b = good_stored;
    b[at] = char(b[at] ^ 0x5A);
    const std::string path = dir.str("flip.npz");
    sae::testing::write_file(path, b);
    try {
      open_and_read_all(path);
    } catch (const DataError& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
}
