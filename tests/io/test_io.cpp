// File I/O layer tests: JSON round trips and malformed input, atomic writes, memory mapping,
// safetensors and .npy round trips, exact F16/BF16 conversion, row-block reads, every rejection
// path, and fixtures in tests/ref/ written by independent writers (numpy, the safetensors package,
// torch, a hand-rolled Python writer; see scripts/gen_io_fixtures.py).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "io/atomic_file.h"
#include "io/file_fingerprint.h"
#include "io/file_lock.h"
#include "io/utf8.h"
#include "tensor/rng.h"
#include "io/float_convert.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "tests/util/gpu.h"
#include "tests/util/test_util.h"

using namespace sae;
using sae::testing::expect_error;
using sae::testing::raw_bytes;
using sae::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string ref(const std::string& name) { return std::string(SAE_SOURCE_DIR) + "/tests/ref/" + name; }

template <typename F>
void expect_data_error(F f, const std::vector<std::string>& parts) {
  expect_error<DataError>(f, parts);
}

// Equal bit for bit, except that any NaN matches any NaN.
void expect_same_floats(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    float g = static_cast<float>(got[i]), w = static_cast<float>(want[i]);
    if (std::isnan(w)) {
      EXPECT_TRUE(std::isnan(g)) << what << " index " << i;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(g), std::bit_cast<uint32_t>(w)) << what << " index " << i << ": " << g << " vs " << w;
    }
  }
}

// The fixtures' ramp: (k - 17) / 4 for k = 0..34, shape [7, 5].
std::vector<double> ramp_values() {
  std::vector<double> v;
  for (int k = 0; k < 35; ++k) v.push_back((k - 17) / 4.0);
  return v;
}

std::string u64_le(uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }

// A safetensors file from a header text and a data region, exactly as given (no padding).
std::string make_safetensors(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

template <typename T>
std::string raw_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// JSON

TEST(Json, ParsesValuesAndKeepsKeyOrder) {
  Json j = Json::parse(" {\"z\": 1, \"a\": [true, false, null], \"m\": \"x\\ny\", \"d\": -0.5e-3, \"o\": {}} ");
  ASSERT_TRUE(j.is_object());
  ASSERT_EQ(j.size(), 5u);
  EXPECT_EQ(j.items()[0].first, "z");
  EXPECT_EQ(j.items()[1].first, "a");
  EXPECT_EQ(j.items()[4].first, "o");
  EXPECT_EQ(j.at("z").as_int(), 1);
  EXPECT_TRUE(j.at("a").at(0).as_bool());
  EXPECT_FALSE(j.at("a").at(1).as_bool());
  EXPECT_TRUE(j.at("a").at(2).is_null());
  EXPECT_EQ(j.at("m").as_string(), "x\ny");
  EXPECT_EQ(j.at("d").as_number(), -0.0005);
  EXPECT_TRUE(j.at("o").is_object());
  EXPECT_EQ(j.at("o").size(), 0u);
  EXPECT_TRUE(j.has("m"));
  EXPECT_FALSE(j.has("q"));
  // erase removes one member and keeps the others' order; a missing key is no error.
  j.erase("a");
  j.erase("q");
  EXPECT_EQ(j.dump(), "{\"z\":1,\"m\":\"x\\ny\",\"d\":-5e-04,\"o\":{}}");
  EXPECT_THROW(Json(1).erase("a"), DataError);
}

TEST(Json, FirstDifferenceNamesWhereTwoValuesPart) {
  const Json a = Json::parse(R"({"kind": "file", "reads": [1, 2, 3], "inner": {"x": 1, "y": "long"}})");
  EXPECT_EQ(first_difference(a, a), "");
  Json b = a;
  b["inner"]["y"] = "other";
  EXPECT_EQ(first_difference(a, b), "inner.y: \"long\" (was) / \"other\" (now)");
  b = Json::parse(R"({"kind": "file", "reads": [1, 5, 3], "inner": {"x": 1, "y": "long"}})");
  EXPECT_EQ(first_difference(a, b), "reads[1]: 2 (was) / 5 (now)");
  b = Json::parse(R"({"kind": "file", "reads": [1, 2, 3]})");
  EXPECT_EQ(first_difference(a, b).rfind("inner: {", 0), 0u) << first_difference(a, b);
  b["extra"] = std::string(200, 'z');
  b["inner"] = a.at("inner");
  const std::string extra = first_difference(a, b);
  EXPECT_EQ(extra.rfind("extra: (absent) (was) / \"zzz", 0), 0u) << extra;
  EXPECT_LT(extra.size(), 120u);  // the value cut
  EXPECT_EQ(first_difference(Json(1), Json("1")), "the value: 1 (was) / \"1\" (now)");
}

TEST(Json, StringEscapesAndSurrogatePairs) {
  Json j = Json::parse(R"("q\" b\\ s\/ \b\f\n\r\t \u00e9 \u2603 \ud83d\ude00 \u0000end")");
  std::string want = std::string("q\" b\\ s/ \b\f\n\r\t \xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 ") + '\0' + "end";
  EXPECT_EQ(j.as_string(), want);
  // Raw UTF-8 passes through; dumping escapes only what JSON requires, and reads back the same.
  Json raw = Json::parse("\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
  EXPECT_EQ(raw.as_string(), "caf\xc3\xa9 \xf0\x9f\x98\x80");
  EXPECT_EQ(Json(want).dump(), R"("q\" b\\ s/ \b\f\n\r\t )" "\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 " R"(\u0000end")");
  EXPECT_EQ(Json::parse(Json(want).dump()).as_string(), want);
  EXPECT_EQ(Json(std::string("\x01\x1f")).dump(), "\"\\u0001\\u001f\"");
  // Bytes that are not UTF-8 (a Latin-1 file name) made a file no JSON reader reads back: refused,
  // as the parser refuses them (a lone byte, a cut sequence, an overlong form, a surrogate).
  for (const std::string bad : {"a\xff.npy", "caf\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"}) {
    EXPECT_THROW(Json(bad).dump(), Error) << printable(bad);
    EXPECT_THROW(Json::parse("\"" + bad + "\""), DataError) << printable(bad);
  }
  try {
    Json(std::string("data/caf\xe9.npy")).dump();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "JSON: cannot write \"data/caf\\xe9.npy\": it is not UTF-8 text");
  }
}

TEST(Json, NumbersRoundTripExactly) {
  EXPECT_EQ(Json::parse("9007199254740992").as_int(), int64_t(1) << 53);
  EXPECT_EQ(Json::parse("-9007199254740992").as_int(), -(int64_t(1) << 53));
  EXPECT_EQ(Json(int64_t(1) << 53).dump(), "9007199254740992");
  EXPECT_EQ(Json(768).dump(), "768");
  EXPECT_EQ(Json(-3.0).dump(), "-3");
  EXPECT_EQ(Json(0.1).dump(), "0.1");
  EXPECT_EQ(Json(1e-5).dump(), "1e-05");
  EXPECT_EQ(Json(-0.0).dump(), "-0");
  expect_data_error([] { Json::parse("1.5").as_int(); }, {"integer"});
  expect_data_error([] { Json::parse("1e300").as_int(); }, {"integer"});
  const double values[] = {0.1, 1e-5, 1.0 / 3.0, 6.02214076e23, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                           -0.0, 123456789012345678.0, 9007199254740993.0, -1e-300, 3.4028234663852886e38, 1e22, 1e23};
  for (double v : values) {
    std::string text = Json(v).dump();
    double back = Json::parse(text).as_number();
    EXPECT_EQ(std::bit_cast<uint64_t>(back), std::bit_cast<uint64_t>(v)) << text;
  }
  EXPECT_EQ(Json::parse("1E+2").as_number(), 100.0);
  EXPECT_EQ(Json::parse("-0").as_number(), 0.0);
  EXPECT_TRUE(std::signbit(Json::parse("-0").as_number()));
  expect_error<Error>([] { Json(std::nan("")).dump(); }, {"NaN"});
  expect_error<Error>([] { Json(std::numeric_limits<double>::infinity()).dump(); }, {"Inf"});
}

TEST(Json, DumpCompactAndPretty) {
  Json j = Json::object();
  j["name"] = Json("sae");
  j["d_in"] = Json(768);
  j["lr"] = Json(1e-5);
  j["list"] = Json::array();
  j["list"].push_back(Json(1));
  j["list"].push_back(Json(2.5));
  j["list"].push_back(Json());
  j["empty_list"] = Json::array();
  j["empty_object"] = Json::object();
  j["nested"]["flag"] = Json(true);  // operator[] turns null into an object
  EXPECT_EQ(j.dump(),
            R"({"name":"sae","d_in":768,"lr":1e-05,"list":[1,2.5,null],"empty_list":[],"empty_object":{},"nested":{"flag":true}})");
  // Same text as Python's json.dumps(value, indent=2).
  const char* pretty = R"({
  "name": "sae",
  "d_in": 768,
  "lr": 1e-05,
  "list": [
    1,
    2.5,
    null
  ],
  "empty_list": [],
  "empty_object": {},
  "nested": {
    "flag": true
  }
})";
  EXPECT_EQ(j.dump(2), pretty);
  EXPECT_EQ(Json::parse(j.dump()), j);
  EXPECT_EQ(Json::parse(j.dump(2)), j);
  EXPECT_EQ(Json::parse(pretty).dump(2), pretty);
  Json other = Json::parse(pretty);
  other["d_in"] = Json(769);
  EXPECT_NE(other, j);
}

TEST(Json, RejectsMalformedInputWithPosition) {
  const std::vector<std::string> bad = {
      "", "   ", "{", "[", "[1,]", "[1 2]", "{\"a\":1,}", "{'a':1}", "{a:1}", "{\"a\" 1}", "{\"a\":1 \"b\":2}", "{\"a\":1,\"a\":2}",
      "01", "1.", ".5", "-", "+1", "1e", "1e+", "0x10", "tru", "nul", "True", "NaN", "Infinity", "-Infinity", "1e400", "\"abc",
      "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\ud800\"", "\"\\ud800x\"", "\"\\ud800\\u0041\"", "\"\\udc00\"", "\"a\tb\"", "\"a\nb\"",
      "[1] 2", "{} {}", "\"\xc3\x28\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xff\"", "\"\xe2\x98\"", "/* c */ 1", "[1,,2]",
  };
  for (const std::string& text : bad) {
    try {
      Json::parse(text);
      ADD_FAILURE() << "accepted malformed JSON: " << text;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("JSON parse error at line"), std::string::npos) << e.what();
    }
  }
  expect_data_error([] { Json::parse("{\n  \"a\": tru\n}"); }, {"line 2, column 8", "true"});
  expect_data_error([] { Json::parse("{\"k\": 1, \"k\": 2}"); }, {"duplicate", "\"k\""});
  // Deep nesting is an error, not a stack overflow.
  expect_data_error([] { Json::parse(std::string(100000, '[')); }, {"nesting"});
  Json deep = Json::parse(std::string(500, '[') + std::string(500, ']'));
  EXPECT_TRUE(deep.is_array());
}

TEST(Json, TypeErrorsNameWhatWasExpected) {
  Json j = Json::parse(R"({"a": 1, "s": "x"})");
  expect_data_error([&] { j.at("a").as_string(); }, {"expected a string", "found number"});
  expect_data_error([&] { j.at("s").as_number(); }, {"expected a number", "found string"});
  expect_data_error([&] { j.at("missing"); }, {"missing key", "\"missing\""});
  expect_data_error([&] { j.at(size_t(0)); }, {"expected an array", "found object"});
  expect_data_error([&] { Json::parse("[1]").at(size_t(3)); }, {"index 3"});
}

// ---------------------------------------------------------------------------------------------
// Atomic writes and memory mapping

namespace {
// Whether a temporary file of PATH (PATH.tmp-<pid>-<n>) is there.
bool has_temp(const std::string& path) {
  const std::filesystem::path p(path);
  for (const auto& entry : std::filesystem::directory_iterator(p.parent_path()))
    if (entry.path().filename().string().rfind(p.filename().string() + ".tmp", 0) == 0) return true;
  return false;
}
}  // namespace

TEST(AtomicFile, TwoWritersOfOnePathEachRenameTheirOwnWholeFile) {
  // Two writers at once (two processes given the same output): each writes a temporary file of its
  // own, so PATH ends as one of them whole, the one committed last (a shared PATH.tmp had mixed them).
  TempDir dir("io_two");
  const std::string path = dir.str("f.bin");
  AtomicFileWriter a(path), b(path);
  EXPECT_NE(a.temp_path(), b.temp_path());
  a.write(std::string(1000, 'a'));
  b.write(std::string(10, 'b'));
  a.write(std::string(5, 'A'));
  b.commit();
  EXPECT_EQ(sae::testing::read_file(path), std::string(10, 'b'));
  a.commit();
  EXPECT_EQ(sae::testing::read_file(path), std::string(1000, 'a') + std::string(5, 'A'));
  EXPECT_FALSE(has_temp(path));
  // A temporary file left by a process that is gone (killed while writing): removed by the next writer.
  const std::string stale = path + ".tmp-999999999-0";
  std::ofstream(stale) << "torn";
  write_file_atomic(path, "next");
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_EQ(sae::testing::read_file(path), "next");
}

TEST(AtomicFile, ANameOfNameMaxBytesIsWrittenToo) {
  // A legal 255-byte name leaves no room for ".tmp-<pid>-<n>": the temporary file takes a shortened
  // name (its first bytes, a hash), and a dead writer's leftover of that form is removed as well.
  TempDir dir("io_long_name");
  const std::string euro = "\xe2\x82\xac";  // a 3-byte character across the cut at byte 183
  for (const std::string& name : {std::string(200, 'n'), std::string(201, 'n'), std::string(255, 'n'),
                                  std::string(182, 'n') + euro + std::string(70, 'n')}) {
    const size_t length = name.size();
    const std::string path = dir.str(name);
    write_file_atomic(path, "whole");
    EXPECT_EQ(sae::testing::read_file(path), "whole") << length;
    AtomicFileWriter w(path);
    const std::string temp = std::filesystem::path(w.temp_path()).filename().string();
    EXPECT_LE(temp.size() + std::string(".gnuplot.log").size(), 255u) << temp;
    EXPECT_EQ(std::filesystem::path(w.temp_path()).parent_path(), dir.path) << w.temp_path();
    EXPECT_TRUE(utf8::is_valid(temp)) << temp;
    const std::string stale = dir.str(temp.substr(0, temp.find(".tmp-")) + ".tmp-999999999-0");
    std::ofstream(stale) << "torn";
    w.write(std::string("new"));
    w.commit();
    write_file_atomic(path, "again");
    EXPECT_FALSE(std::filesystem::exists(stale)) << length;
    EXPECT_EQ(sae::testing::read_file(path), "again");
  }
}

TEST(AtomicFile, SyncTreeFlushesAFolderCopiedBeforeItIsRenamed) {
  TempDir dir("sync_tree");
  std::filesystem::create_directories(dir.str("run/sae/inner"));
  std::ofstream(dir.str("run/metrics.csv")) << "step\n1\n";
  std::ofstream(dir.str("run/sae/inner/w.bin")) << "bytes";
  EXPECT_NO_THROW(sync_tree(dir.str("run")));
  EXPECT_EQ(sae::testing::read_file(dir.str("run/sae/inner/w.bin")), "bytes");  // untouched
  try {
    sync_tree(dir.str("missing"));
    FAIL() << "a missing folder was synced";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.str("missing")), std::string::npos) << e.what();
  }
}

TEST(AtomicFile, ReplacesWholeFileAndLeavesNoTemp) {
  TempDir dir("io");
  std::string path = dir.str("a.txt");
  write_file_atomic(path, "first version, longer");
  EXPECT_EQ(sae::testing::read_file(path), "first version, longer");
  write_file_atomic(path, "second");
  EXPECT_EQ(sae::testing::read_file(path), "second");
  EXPECT_FALSE(has_temp(path));
  {
    AtomicFileWriter out(path);
    out.write("abandoned", 9);
    EXPECT_TRUE(std::filesystem::exists(out.temp_path()));
    EXPECT_TRUE(has_temp(path));
  }  // destroyed without commit: the old file stays, the temp file goes
  EXPECT_EQ(sae::testing::read_file(path), "second");
  EXPECT_FALSE(has_temp(path));
  {
    AtomicFileWriter out(path);
    out.write(std::string("streamed "));
    out.write(std::string("in parts"));
    out.commit();
    expect_error<Error>([&] { out.write("x", 1); }, {"after commit"});
  }
  EXPECT_EQ(sae::testing::read_file(path), "streamed in parts");
  expect_data_error([&] { write_file_atomic(dir.str("no/such/dir/file"), "x"); }, {"no/such/dir/file", "No such file"});
}

// A holder that gives up removes the lock file (and an empty folder) while another process may have
// opened it: that process must end up holding the file the path names, or a third one could take
// the path's new file and both would work in the folder.
TEST(FileLock, ALockFileRemovedBetweenOpenAndLockIsLockedAgainAtItsPath) {
  TempDir dir("file_lock");
  const std::string folder = dir.str("run"), path = folder + "/.lock";
  fs::create_directories(folder);
  {
    FileLock second(path, [&] { fs::remove(path); });
    ASSERT_TRUE(fs::exists(path));
    expect_data_error([&] { FileLock third(path); }, {path, "another process (pid " + std::to_string(::getpid())});
  }
  {  // the folder removed too: made again, and locked there
    FileLock second(path, [&] { fs::remove_all(folder); });
    ASSERT_TRUE(fs::exists(path));
    expect_data_error([&] { FileLock third(path); }, {path, "another process"});
  }
  FileLock free_again(path);  // released when the holders ended
  expect_data_error([&] { FileLock held(dir.str("missing/.lock")); }, {"cannot create the lock file", "No such file"});
}

TEST(FileFingerprint, TheWeightsKindSeesEveryTensorsEndsAndOlderRecordsCompareAsThen) {
  TempDir dir("fingerprint");
  // A MiB and 37 bytes, byte i = ((7 i + 3) ^ (i >> 9)) mod 256: the first and last MiB.
  std::string bytes((1 << 20) + 37, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(((i * 7 + 3) ^ (i >> 9)) & 255);
  const std::string path = dir.str("text.bin");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  // Recorded runs hold these: the hashes must never change. The values are an independent Python
  // implementation's of io/file_fingerprint.h's description (FNV-1a 64 over the bytes named there).
  EXPECT_EQ(file_fingerprint(path), "1048613:526142c50103f8e0");
  expect_data_error([&] { weights_fingerprint(path); }, {path, "safetensors"});  // not a weights file
  EXPECT_EQ(file_fingerprint(dir.str("missing")), "");
  EXPECT_EQ(weights_fingerprint(dir.str("missing")), "");
  ASSERT_EQ(::mkfifo(dir.str("fifo").c_str(), 0644), 0);
  EXPECT_EQ(file_fingerprint(dir.str("fifo")), "");  // not opened: a FIFO would block the open
  EXPECT_EQ(weights_fingerprint(dir.str("fifo")), "");

  // Weights: three 1 MiB tensors and a small one (the small one and the middle tensor lie outside
  // the file's first and last MiB), value j of tensor t = sin(j + 1000 t).
  const std::string weights = dir.str("model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int t = 0; t < 4; ++t) {
    std::vector<double> v(t == 1 ? 100 : 262144);
    for (size_t j = 0; j < v.size(); ++j) v[j] = std::sin(double(j) + 1000.0 * t);
    tensors.push_back({std::string("w") + char('a' + t), Tensor::from_vector(v, Shape{int64_t(v.size())})});
  }
  write_safetensors(weights, tensors);
  const std::string ends = file_fingerprint(weights), fingerprint = weights_fingerprint(weights);
  // The safetensors package writes the same bytes; the Python implementation gives this hash for them.
  EXPECT_EQ(fingerprint, "3146416:7beadc90d9109e95:tensors=839a8d4210c4cdcd");
  const std::string original = sae::testing::read_file(weights);
  const size_t data = 8 + size_t(original[0] & 255) + (size_t(original[1] & 255) << 8);  // header < 64 KiB here
  const size_t wc = data + 4 * (262144 + 100);  // tensors in name order: wa, wb (100), wc, wd
  auto with_byte = [&](size_t at) {
    std::string changed = original;
    changed[at] ^= 1;
    std::ofstream(weights, std::ios::binary | std::ios::trunc) << changed;
    return weights_fingerprint(weights);
  };
  for (const auto& [at, what] : {std::pair<size_t, const char*>{wc, "wc's first byte"},
                                 {wc + 4 * 262144 - 1, "wc's last byte"},
                                 {wc + 4095, "wc's 4096th byte"},
                                 {data + 4 * 262144 + 217, "inside the small wb"}}) {
    const std::string now = with_byte(at);
    EXPECT_EQ(file_fingerprint(weights), ends) << what << ": outside the first and last MiB";
    EXPECT_NE(now, fingerprint) << what;
  }
  // What it does not see, as file_fingerprint.h says: inside a large tensor, past its ends' 4 KiB.
  EXPECT_EQ(with_byte(wc + 2 * 262144), fingerprint);
  // The header (a name changed, same length) is in the tensors part too, not only in the first MiB.
  std::string renamed = original;
  renamed.replace(renamed.find("\"wc\""), 4, "\"wz\"");
  std::ofstream(weights, std::ios::binary | std::ios::trunc) << renamed;
  const std::string after = weights_fingerprint(weights);
  EXPECT_NE(after.substr(after.find(":tensors=")), fingerprint.substr(fingerprint.find(":tensors="))) << after;

  // Comparing: equal, or an older (first and last MiB) record against this build's, per file.
  const std::string other = "99:00000000000000cc:tensors=0123456789abcdef";
  EXPECT_TRUE(same_file_fingerprint(fingerprint, fingerprint));
  EXPECT_FALSE(same_file_fingerprint(fingerprint, other));
  EXPECT_TRUE(same_file_fingerprint(ends, fingerprint));
  EXPECT_TRUE(same_file_fingerprint(ends, ends + ":tensors=ffffffffffffffff"));  // what an older record cannot see
  EXPECT_FALSE(same_file_fingerprint(ends, other));
  EXPECT_FALSE(same_file_fingerprint(fingerprint, ends));  // a newer record is never satisfied by less
  const std::string index = "12:00000000000000aa";
  EXPECT_TRUE(same_file_fingerprint(index + "|a=" + ends, index + "|a=" + fingerprint));
  EXPECT_FALSE(same_file_fingerprint(index + "|a=" + ends, index + "|b=" + fingerprint));
  EXPECT_FALSE(same_file_fingerprint(index + "|a=" + fingerprint, index + "|a=" + other));

  // A description made now, aligned with a recorded one: a key the record lacks is left out, an older
  // spelling of the same files is taken over, and another file's stays as it is (and differs).
  Json recorded = Json::object(), now = Json::object();
  recorded["model_fingerprint"] = ends;
  now["model_fingerprint"] = fingerprint;
  now["model_b_fingerprint"] = fingerprint;
  now["text_fingerprint"] = ends;
  recorded["text_fingerprint"] = "5:0000000000000000";
  align_recorded_fingerprints(recorded, now, {"model_fingerprint", "model_b_fingerprint", "text_fingerprint"});
  EXPECT_EQ(now.at("model_fingerprint").as_string(), ends);
  EXPECT_FALSE(now.has("model_b_fingerprint"));
  EXPECT_EQ(now.at("text_fingerprint").as_string(), ends);
  EXPECT_NE(now, recorded);
}

TEST(MappedFile, MapsContentsAndReportsErrors) {
  TempDir dir("io");
  sae::testing::write_file(dir.str("f"), "hello");
  MappedFile m(dir.str("f"));
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(std::memcmp(m.data(), "hello", 5), 0);
  MappedFile moved = std::move(m);
  EXPECT_EQ(moved.size(), 5u);
  EXPECT_EQ(m.data(), nullptr);
  sae::testing::write_file(dir.str("empty"), "");
  EXPECT_EQ(MappedFile(dir.str("empty")).size(), 0u);
  expect_data_error([&] { MappedFile(dir.str("missing")); }, {dir.str("missing"), "No such file"});
  expect_data_error([&] { MappedFile(dir.str()); }, {dir.str(), "directory"});
  ASSERT_EQ(::mkfifo(dir.str("fifo").c_str(), 0600), 0);
  expect_data_error([&] { MappedFile(dir.str("fifo")); }, {"fifo", "not a regular file"});
  if (::geteuid() != 0) {  // root reads anything
    sae::testing::write_file(dir.str("locked"), "x");
    ::chmod(dir.str("locked").c_str(), 0);
    expect_data_error([&] { MappedFile(dir.str("locked")); }, {"locked", "Permission denied"});
  }
}

// copy_tree (a study's continuation, an extension's final model): the folder copied whole, and a
// full disk named as such (std::filesystem::copy had said "Input/output error").
TEST(CopyTree, CopiesFoldersWholeAndNamesAFullDisk) {
  TempDir dir("io_copy_tree");
  std::filesystem::create_directories(dir.path / "run/sae/deeper");
  sae::testing::write_file(dir.str("run/config.json"), "{}");
  sae::testing::write_file(dir.str("run/sae/weights"), std::string(3 << 20, '\7') + "end");
  sae::testing::write_file(dir.str("run/sae/deeper/empty"), "");
  copy_tree(dir.str("run"), dir.str("copy"));
  EXPECT_EQ(sae::testing::read_file(dir.str("copy/config.json")), "{}");
  EXPECT_EQ(sae::testing::read_file(dir.str("copy/sae/weights")), std::string(3 << 20, '\7') + "end");
  EXPECT_TRUE(std::filesystem::is_regular_file(dir.path / "copy/sae/deeper/empty"));
  EXPECT_EQ(std::filesystem::file_size(dir.path / "copy/sae/deeper/empty"), 0u);
  expect_data_error([&] { copy_tree(dir.str("run/sae/weights"), "/dev/full"); },
                    {"cannot write /dev/full: No space left on device"});
  expect_data_error([&] { copy_tree(dir.str("missing"), dir.str("x")); }, {dir.str("missing"), "No such file"});
}

// A mapped input cut short by another program (truncated while a run reads it): one line naming the
// file and exit 1, where the process had died of SIGBUS.
TEST(MappedFileDeathTest, AFileTruncatedWhileMappedEndsInOneLineNamingIt) {
  // Under AddressSanitizer too (make sanitize, clang): the handler installed here replaces ASan's
  // SIGBUS handler. (The skip this had named __SANITIZE_ADDRESS__, which clang 14 does not define:
  // the test has always run under make sanitize, and passed.)
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "ThreadSanitizer handles SIGBUS itself";
#endif
  GTEST_FLAG_SET(death_test_style, "fast");  // a fork: the child writes into this test's folder
  TempDir dir("io_sigbus");
  const std::string path = dir.str("shrinks.bin");
  sae::testing::write_file(path, std::string(3 * 4096, 'x'));
  // An output being written when it happens is removed (its temporary file had been left, up to the
  // whole output's size: the handler ends the process without destructors).
  EXPECT_EXIT(
      {
        report_truncated_mappings("prog");
        AtomicFileWriter output(dir.str("output.npy"));
        output.write("partial");
        MappedFile m(path);
        if (::truncate(path.c_str(), 100) != 0) std::_Exit(3);
        volatile uint8_t v = m.data()[2 * 4096 + 5];
        (void)v;
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(1),
      "^prog: error: .*shrinks\\.bin: the file became shorter while it was read \\(no data at byte 8197 of the "
      "12288 it had\\): another program truncated or replaced it");
  for (const auto& entry : std::filesystem::directory_iterator(dir.path))
    EXPECT_EQ(entry.path().filename().string().find("output.npy"), std::string::npos) << entry.path();
}

// ---------------------------------------------------------------------------------------------
// Float conversion

TEST(FloatConvert, HalfAndBfloat16AreExact) {
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC100), -2.5f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(std::bit_cast<uint32_t>(f16_to_f32(0x8000)), 0x80000000u);
  EXPECT_EQ(std::bit_cast<uint32_t>(f16_to_f32(0x8001)), std::bit_cast<uint32_t>(-std::ldexp(1.0f, -24)));
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));  // signalling NaN stays NaN, not inf
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC020), -2.5f);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));
  EXPECT_EQ(bf16_to_f32(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));
  // Every finite half: compare with an independent formula, (-1)^s * 2^(e-15) * (1 + m/1024).
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    uint32_t e = (bits >> 10) & 0x1F, m = bits & 0x3FF;
    if (e == 0x1F) continue;
    double magnitude = e == 0 ? std::ldexp(double(m), -24) : std::ldexp(1.0 + m / 1024.0, int(e) - 15);
    double want = (bits & 0x8000) ? -magnitude : magnitude;
    ASSERT_EQ(double(f16_to_f32(uint16_t(bits))), want) << "half bits " << bits;
  }
}

// ---------------------------------------------------------------------------------------------
// safetensors

TEST(Safetensors, WriteReadRoundTripF32F64) {
  TempDir dir("io");
  std::string path = dir.str("w.safetensors");
  std::vector<double> a_values, b_values;
  for (int i = 0; i < 12; ++i) a_values.push_back(0.1 * i - 0.55);
  for (int i = 0; i < 5; ++i) b_values.push_back(1.0 / (i + 3));
  Tensor a = Tensor::from_vector(a_values, Shape{3, 4}, DType::F32);
  Tensor b = Tensor::from_vector(b_values, Shape{5}, DType::F64);
  Tensor s = Tensor::scalar(2.5, DType::F32);
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "caf\xc3\xa9 \"q\""}};
  write_safetensors(path, {{"W_enc", a}, {"b_dec", b}, {"alpha", s}}, meta);
  EXPECT_FALSE(has_temp(path));

  // Byte layout: header length a multiple of 8, metadata first, F64 before F32, then by name.
  std::string bytes = sae::testing::read_file(path);
  uint64_t header_bytes;
  std::memcpy(&header_bytes, bytes.data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u);
  std::string header = bytes.substr(8, header_bytes);
  EXPECT_EQ(header.rfind("{\"__metadata__\":", 0), 0u) << header;
  EXPECT_LT(header.find("\"b_dec\""), header.find("\"W_enc\""));
  EXPECT_LT(header.find("\"W_enc\""), header.find("\"alpha\""));
  EXPECT_EQ(bytes.size(), 8 + header_bytes + 12 * 4 + 5 * 8 + 4);

  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"W_enc", "alpha", "b_dec"}));
  EXPECT_EQ(f.entry("W_enc").dtype, "F32");
  EXPECT_EQ(f.entry("W_enc").shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(f.entry("b_dec").dtype, "F64");
  EXPECT_EQ(f.entry("b_dec").bytes, 40u);
  EXPECT_EQ(f.entry("alpha").shape, (std::vector<int64_t>{1}));  // the library's scalars are [1]
  Tensor a_back = f.read_f32("W_enc");
  EXPECT_EQ(a_back.shape(), (Shape{3, 4}));
  expect_same_floats(a_back.to_vector(), a.to_vector(), "W_enc");
  std::vector<double> b_as_f32;
  for (double v : b_values) b_as_f32.push_back(static_cast<float>(v));
  expect_same_floats(f.read_f32("b_dec").to_vector(), b_as_f32, "b_dec");  // F64 rounded to F32
  double b0;
  std::memcpy(&b0, f.entry("b_dec").data, 8);
  EXPECT_EQ(b0, b_values[0]);  // stored at full precision
  EXPECT_EQ(f.read_f32("alpha").item(), 2.5);

  // Rewriting replaces the file atomically.
  write_safetensors(path, {{"only", a}});
  SafetensorsFile g = SafetensorsFile::open(path);
  EXPECT_EQ(g.names(), (std::vector<std::string>{"only"}));
  EXPECT_TRUE(g.metadata().empty());
  EXPECT_EQ(sae::testing::read_file(path).substr(8, 2), "{\"");
  EXPECT_EQ(sae::testing::read_file(path).find("__metadata__"), std::string::npos);

  expect_error<Error>([&] { write_safetensors(path, {{"x", a}, {"x", a}}); }, {"given twice"});
  expect_error<Error>([&] { write_safetensors(path, {{"__metadata__", a}}); }, {"reserved"});
  EXPECT_EQ(SafetensorsFile::open(path).names(), (std::vector<std::string>{"only"}));  // untouched
}

namespace {
// This process's resident pages of mapped files (/proc/self/status RssFile), in KiB.
int64_t rss_file_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8));
  return -1;
}
}  // namespace

TEST(Safetensors, AWholeTensorIsReadInPartsAndLeavesNoneOfTheFileMapped) {
  // read_f32 converts 64 MiB of the file at a time and drops each part's pages from the mapping once
  // copied, so that a multi-GB weight is never held twice (its copy and the mapped file). Here a
  // 72 MB float32 tensor (two parts) reads back whole and leaves no more than a few pages of the file
  // resident; a float64 value beyond float32's range in the second part is named by its index in the
  // whole tensor.
  TempDir dir("io_parts");
  const int64_t n = 18'000'000, m = 9'000'000, bad = 8'500'000;
  Tensor good = Tensor::empty(Shape{n});
  for (int64_t i = 0; i < n; ++i) good.data<float>()[i] = static_cast<float>(i % 4099) - 2049.5f;
  Tensor wide = Tensor::zeros(Shape{m}, DType::F64);
  wide.data<double>()[bad] = 1e300;
  write_safetensors(dir.str("big.safetensors"), {{"good", good}, {"wide", wide}}, {});
  good = Tensor();
  wide = Tensor();
  SafetensorsFile f = SafetensorsFile::open(dir.str("big.safetensors"));
  const int64_t before = rss_file_kib();
  ASSERT_GE(before, 0);
  const Tensor read = f.read_f32("good");
  const int64_t grown = rss_file_kib() - before;
  ASSERT_EQ(read.numel(), n);
  for (int64_t i : {int64_t{0}, int64_t{16'777'215}, int64_t{16'777'216}, n - 1})
    EXPECT_EQ(read.data<float>()[i], static_cast<float>(i % 4099) - 2049.5f) << i;
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += read.data<float>()[i] != static_cast<float>(i % 4099) - 2049.5f;
  EXPECT_EQ(wrong, 0);
  EXPECT_LT(grown, 8 * 1024) << "KiB of the 72 MB file still mapped after the read";
  RecordProperty("rss_file_growth_kib", static_cast<int>(grown));
  try {
    f.read_f32("wide");
    ADD_FAILURE() << "a float64 value beyond float32's range was read";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("element 8500000: float64 value 1e+300"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, WritesSixteenBitAndIntegerTensorsUnderTheirOwnDtype) {
  // Each dtype under its own name, its bytes as held (16-bit tensors used to be named F64 and refused).
  TempDir dir("io");
  const std::vector<double> values = {1.0, -2.5, 0.15625, 65504.0};  // exact in bf16 and f16 but 65504 (bf16: 65536)
  const Tensor f32 = Tensor::from_vector(values, Shape{2, 2}, DType::F32);
  const Tensor ints = Tensor::from_vector({7, -3, 2147483647, -2147483648.0}, Shape{4}, DType::I32);
  const std::string path = dir.str("mixed.safetensors");
  write_safetensors(path, {{"b", f32.to(DType::BF16)}, {"h", f32.to(DType::F16)}, {"i", ints}});
  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.entry("b").dtype, "BF16");
  EXPECT_EQ(f.entry("h").dtype, "F16");
  EXPECT_EQ(f.entry("i").dtype, "I32");
  EXPECT_EQ(f.entry("b").bytes, 8u);
  EXPECT_EQ(f.entry("b").shape, (std::vector<int64_t>{2, 2}));
  expect_same_floats(f.read_f32("b").to_vector(), {1.0, -2.5, 0.15625, 65536.0}, "BF16");
  expect_same_floats(f.read_f32("h").to_vector(), values, "F16");
  EXPECT_EQ(f.read_i64("i"), (std::vector<int64_t>{7, -3, 2147483647, -2147483648LL}));
}

TEST(Safetensors, StreamedTensorsInPiecesAndViewsAreWrittenAsTheirBytes) {
  TempDir dir("io");
  // Pieces: the same file as the tensors written whole.
  const std::vector<float> a = {1.5f, -2.0f, 3.25f}, b = {7.0f, 8.0f};
  write_safetensors_raw(dir.str("whole.safetensors"), {{"a", "F32", {3}, raw_bytes(a)}, {"b", "F32", {2}, raw_bytes(b)}},
                        {{"k", "v"}});
  const std::vector<SafetensorsSpec> specs = {{"a", "F32", {3}}, {"b", "F32", {2}}};
  write_safetensors_streamed(dir.str("pieces.safetensors"), specs, {{"k", "v"}},
                             [&](const std::string& name, const SafetensorsSink& write) {
                               const std::vector<float>& v = name == "a" ? a : b;
                               for (const float& x : v) write(&x, sizeof x);  // one element at a time
                             });
  EXPECT_EQ(sae::testing::read_file(dir.str("pieces.safetensors")), sae::testing::read_file(dir.str("whole.safetensors")));
  // Too few or too many bytes: refused, and nothing is left at the path (the write is atomic).
  const std::string path = dir.str("bad.safetensors");
  expect_error<Error>([&] {
    write_safetensors_streamed(path, specs, {}, [&](const std::string&, const SafetensorsSink& write) { write(a.data(), 8); });
  }, {"tensor 'a' has 8 bytes for shape [3] of F32"});
  expect_error<Error>([&] {
    write_safetensors_streamed(path, specs, {}, [&](const std::string&, const SafetensorsSink& write) {
      write(a.data(), 12);
      write(b.data(), 4);
    });
  }, {"tensor 'a' has more than 12 bytes for shape [3] of F32"});
  EXPECT_FALSE(std::filesystem::exists(path));
  // A view (rows 1..2 of a [4, 2] tensor): its own bytes, not the storage's first ones.
  const Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7}, Shape{4, 2});
  write_safetensors(dir.str("view.safetensors"), {{"v", t.slice_rows(1, 3)}});
  expect_same_floats(SafetensorsFile::open(dir.str("view.safetensors")).read_f32("v").to_vector(), {2, 3, 4, 5}, "view");
}

TEST(CudaSafetensors, AGpuTensorIsWrittenInBlocksOfRowsAsItsHostCopy) {
  // 72 MB (more than one 64 MiB block of rows, the last block short) and a small one, from the GPU:
  // the same file as from their host copies.
  SKIP_WITHOUT_GPU();
  TempDir dir("io");
  Rng rng(5);
  const Tensor big = uniform_tensor(Shape{1100, 16384}, -1, 1, rng), small = uniform_tensor(Shape{3, 5}, -1, 1, rng);
  write_safetensors(dir.str("host.safetensors"), {{"big", big}, {"small", small}});
  write_safetensors(dir.str("gpu.safetensors"), {{"big", big.to(Device::CUDA)}, {"small", small.to(Device::CUDA)}});
  EXPECT_EQ(sae::testing::read_file(dir.str("gpu.safetensors")), sae::testing::read_file(dir.str("host.safetensors")));
}

TEST(Safetensors, ReadRowsBlockInTheMiddle) {
  TempDir dir("io");
  std::vector<double> values;
  for (int i = 0; i < 10 * 3; ++i) values.push_back(i * 1.5 - 7);
  Tensor t = Tensor::from_vector(values, Shape{10, 3}, DType::F32);
  write_safetensors(dir.str("r.safetensors"), {{"activations", t}});
  SafetensorsFile f = SafetensorsFile::open(dir.str("r.safetensors"));
  std::vector<float> out(3 * 3 + 1, -999.0f);  // poisoned, one guard element
  f.read_rows_f32("activations", 4, 3, out.data());
  for (int i = 0; i < 9; ++i) EXPECT_EQ(out[i], static_cast<float>(values[12 + i])) << i;
  EXPECT_EQ(out[9], -999.0f);  // nothing written past the block
  Tensor block = f.read_rows_f32("activations", 9, 1);
  EXPECT_EQ(block.shape(), (Shape{1, 3}));
  expect_same_floats(block.to_vector(), {values[27], values[28], values[29]}, "last row");
  EXPECT_EQ(f.read_rows_f32("activations", 10, 0).shape(), (Shape{0, 3}));
  expect_error<Error>([&] { f.read_rows_f32("activations", 8, 3); }, {"rows [8, 11)", "10 rows"});
  expect_error<Error>([&] { f.read_rows_f32("activations", -1, 1); }, {"out of range"});
  // Rows past the end of an empty tensor of huge rows: refused before a buffer is made (16 TiB here).
  sae::testing::write_raw_safetensors(dir.str("empty.safetensors"), {{"activations", "F32", {0, int64_t(1) << 40, 4}, ""}});
  const SafetensorsFile empty = SafetensorsFile::open(dir.str("empty.safetensors"));
  expect_error<Error>([&] { empty.read_rows_f32("activations", 0, 1); }, {"rows [0, 1) out of range: it has 0 rows"});
}

TEST(Safetensors, HandBuiltF16BF16AndIntegers) {
  TempDir dir("io");
  std::vector<uint16_t> f16 = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00, 0xFC00, 0x8000, 0x7E00};
  std::vector<uint16_t> bf16 = {0x3F80, 0xC020, 0x7F7F, 0x0001, 0x7F80, 0xFF80, 0x8000, 0x7FC0};
  std::vector<int32_t> i32 = {7, -3, 2147483647, -2147483647 - 1};
  std::vector<int64_t> i64 = {int64_t(1) << 40, -5, 0};
  std::vector<double> f64 = {0.1, -1e300};
  std::string data = raw_of(f16) + raw_of(bf16) + raw_of(i32) + raw_of(i64) + raw_of(f64) + "\x01\x02\x03";
  std::string header =
      R"({"h":{"dtype":"F16","shape":[2,4],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"BF16","shape":[2,4],"data_offsets":[16,32]},)"
      R"("i":{"dtype":"I32","shape":[4],"data_offsets":[32,48]},)"
      R"("l":{"dtype":"I64","shape":[3],"data_offsets":[48,72]},)"
      R"("d":{"dtype":"F64","shape":[2],"data_offsets":[72,88]},)"
      R"("u":{"dtype":"U8","shape":[3],"data_offsets":[88,91]},)"
      R"("__metadata__":{"layer":"2"}})";
  std::string path = dir.str("h.safetensors");
  sae::testing::write_file(path, make_safetensors(header, data));
  SafetensorsFile f = SafetensorsFile::open(path);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const float tiny_half = std::ldexp(1.0f, -24), tiny_bf16 = std::ldexp(1.0f, -133);
  expect_same_floats(f.read_f32("h").to_vector(), {1.0, -2.5, 65504.0, tiny_half, inf, -inf, -0.0, nan}, "F16");
  expect_same_floats(f.read_f32("b").to_vector(), {1.0, -2.5, 3.3895313892515355e38, tiny_bf16, inf, -inf, -0.0, nan}, "BF16");
  expect_same_floats(f.read_rows_f32("h", 1, 1).to_vector(), {inf, -inf, -0.0, nan}, "F16 row 1");
  // A finite float64 beyond float32's range: it became -inf, then read as "non-finite activation (inf)".
  expect_data_error([&] { f.read_f32("d"); },
                    {path, "tensor 'd': element 1: float64 value -1e+300 is outside float32's range (it rounds to inf"});
  expect_data_error([&] { f.read_rows_f32("d", 1, 1); }, {"tensor 'd': row 1, column 0: float64 value -1e+300"});
  expect_same_floats(f.read_rows_f32("d", 0, 1).to_vector(), {0.1f}, "F64 row 0");
  EXPECT_EQ(f.read_i64("i"), (std::vector<int64_t>{7, -3, 2147483647, -2147483648LL}));
  EXPECT_EQ(f.read_i64("l"), i64);
  EXPECT_EQ(f.metadata().at("layer"), "2");
  EXPECT_EQ(f.entry("u").bytes, 3u);
  expect_data_error([&] { f.read_f32("i"); }, {path, "'i' is I32", "expected F32, F16, BF16 or F64"});
  expect_data_error([&] { f.read_f32("u"); }, {"'u' is U8"});
  expect_data_error([&] { f.read_i64("h"); }, {path, "'h' is F16", "expected I32 or I64"});
  expect_data_error([&] { f.entry("activations"); }, {path, "no tensor named 'activations'", "has: b, d, h, i, l, u"});
  expect_data_error([&] { f.read_rows_f32("nope", 0, 1); }, {"no tensor named 'nope'"});
}

TEST(Safetensors, RejectsBadFilesNamingFileAndExpectation) {
  TempDir dir("io");
  std::string path = dir.str("bad.safetensors");
  std::string eight_floats(32, '\0');
  auto open_bytes = [&](const std::string& bytes) {
    sae::testing::write_file(path, bytes);
    SafetensorsFile::open(path);
  };
  auto open_header = [&](const std::string& header, const std::string& data) { open_bytes(make_safetensors(header, data)); };
  const std::string good_entry = R"({"x":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}})";
  open_header(good_entry, eight_floats);  // the baseline is accepted

  expect_data_error([&] { SafetensorsFile::open(dir.str("missing.safetensors")); }, {"missing.safetensors", "No such file"});
  expect_data_error([&] { SafetensorsFile::open(dir.str()); }, {dir.str(), "directory"});
  expect_data_error([&] { open_bytes(""); }, {path, "too short"});
  expect_data_error([&] { open_bytes(std::string("\x10\x00\x00", 3)); }, {path, "too short"});
  expect_data_error([&] { open_bytes(u64_le(1000) + "{}"); }, {path, "header length 1000", "runs past the end"});
  expect_data_error([&] { open_bytes(u64_le(uint64_t(1) << 62) + "{}"); }, {path, "100 MB"});
  expect_data_error([&] { open_header(good_entry.substr(0, good_entry.size() - 1), eight_floats); }, {path, "not valid JSON", "line 1"});
  expect_data_error([&] { open_header("[1, 2]", ""); }, {path, "must be a JSON object"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"Q7","shape":[2,4],"data_offsets":[0,32]}})", eight_floats); },
                    {path, "'x'", "unknown dtype \"Q7\"", "F32"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":7,"shape":[2,4],"data_offsets":[0,32]}})", eight_floats); },
                    {path, "dtype must be a string"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[2,4]}})", eight_floats); }, {path, "'x'", "data_offsets"});
  expect_data_error([&] { open_header(R"({"x":[1,2]})", eight_floats); }, {path, "must be an object"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[2,-4],"data_offsets":[0,32]}})", eight_floats); },
                    {path, "shape[1]", "non-negative integer"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[2,4.5],"data_offsets":[0,32]}})", eight_floats); },
                    {path, "shape[1]"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,32]}})", eight_floats); },
                    {path, "'x' is F32[2, 3] = 24 bytes", "span 32 bytes"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F16","shape":[2,4],"data_offsets":[0,32]}})", eight_floats); },
                    {path, "16 bytes", "span 32"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,32]}})", eight_floats); },
                    {path, "too large"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[2,4],"data_offsets":[32,0]}})", eight_floats); },
                    {path, "end before begin"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[2,4],"data_offsets":[0]}})", eight_floats); },
                    {path, "[begin, end]"});
  // Data beyond the end of the file (a truncated file).
  expect_data_error([&] { open_header(good_entry, eight_floats.substr(0, 20)); }, {path, "[0, 32]", "run past the data region (20 bytes"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[2,4],"data_offsets":[8,40]}})", eight_floats); },
                    {path, "run past"});
  // Overlaps, gaps and trailing bytes.
  expect_data_error([&] {
    open_header(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"y":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                eight_floats.substr(0, 24));
  }, {path, "overlap", "'x'"});
  expect_data_error([&] {
    open_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})",
                eight_floats);
  }, {path, "'y'", "gap", "begin at 8"});
  expect_data_error([&] { open_header(good_entry, eight_floats + "junk"); }, {path, "cover 32 bytes", "has 36"});
  expect_data_error([&] { open_header(R"({"__metadata__":{"a":1}})", ""); }, {path, "__metadata__", "must be a string"});
  expect_data_error([&] { open_header(R"({"__metadata__":[]})", ""); }, {path, "__metadata__", "object"});
  expect_data_error([&] { open_header(R"({"x":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]}})", std::string(4, '\0'));
                          SafetensorsFile::open(path).read_f32("x"); },
                    {path, "at most 4 dims"});
  // An empty header object is a valid (empty) file.
  open_header("{}", "");
  EXPECT_TRUE(SafetensorsFile::open(path).names().empty());
}

// ---------------------------------------------------------------------------------------------
// .npy

TEST(Npy, WriteReadRoundTripAndRows) {
  TempDir dir("io");
  std::string path = dir.str("a.npy");
  std::vector<double> values;
  for (int i = 0; i < 6 * 4; ++i) values.push_back(std::sin(i) * 100);
  Tensor t = Tensor::from_vector(values, Shape{6, 4}, DType::F32);
  write_npy(path, t);
  EXPECT_FALSE(has_temp(path));
  std::string bytes = sae::testing::read_file(path);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  uint16_t header_bytes;
  std::memcpy(&header_bytes, bytes.data() + 8, 2);
  EXPECT_EQ((10 + header_bytes) % 64, 0u);
  EXPECT_EQ(bytes[10 + header_bytes - 1], '\n');
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), }";
  EXPECT_EQ(bytes.substr(10, dict.size() + 1), dict + " ");
  EXPECT_EQ(bytes.size(), 10u + header_bytes + 6 * 4 * 4);

  NpyFile f = NpyFile::open(path);
  EXPECT_EQ(f.descr(), "<f4");
  EXPECT_EQ(f.dtype(), "F32");
  EXPECT_EQ(f.shape(), (std::vector<int64_t>{6, 4}));
  expect_same_floats(f.read_f32().to_vector(), t.to_vector(), "npy round trip");
  std::vector<float> out(2 * 4 + 1, -999.0f);
  f.read_rows_f32(2, 2, out.data());
  for (int i = 0; i < 8; ++i) EXPECT_EQ(out[i], static_cast<float>(values[8 + i])) << i;
  EXPECT_EQ(out[8], -999.0f);
  EXPECT_EQ(f.read_rows_f32(5, 1).shape(), (Shape{1, 4}));
  expect_error<Error>([&] { f.read_rows_f32(5, 2); }, {"rows [5, 7)", "6 rows"});

  Tensor v = Tensor::from_vector({1, 2, 3}, Shape{3}, DType::F32);
  write_npy(dir.str("v.npy"), v);
  EXPECT_NE(sae::testing::read_file(dir.str("v.npy")).find("'shape': (3,), }"), std::string::npos);
  NpyFile g = NpyFile::open(dir.str("v.npy"));
  EXPECT_EQ(g.shape(), (std::vector<int64_t>{3}));
  expect_same_floats(g.read_rows_f32(1, 2).to_vector(), {2, 3}, "1-D rows");
  expect_error<Error>([&] { write_npy(dir.str("d.npy"), Tensor::zeros(Shape{2}, DType::F64)); }, {"float32"});
}

// NpyRowWriter (sae_apply's outputs, block by block): the same file as write_npy of the whole
// matrix; a writer that did not get every row commits nothing and leaves no file.
TEST(Npy, RowWriterWritesWhatWriteNpyWrites) {
  TempDir dir("npy_rows");
  std::vector<double> values(7 * 3);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.25 * double(i) - 1;
  const Tensor whole = Tensor::from_vector(values, Shape{7, 3}, DType::F32);
  write_npy(dir.str("whole.npy"), whole);
  {
    NpyRowWriter rows(dir.str("rows.npy"), 7, 3);
    rows.write_rows(whole.data<float>(), 2);
    rows.write_rows(whole.data<float>() + 2 * 3, 0);
    rows.write_rows(whole.data<float>() + 2 * 3, 5);
    rows.commit();
  }
  EXPECT_EQ(sae::testing::read_file(dir.str("rows.npy")), sae::testing::read_file(dir.str("whole.npy")));
  {
    NpyRowWriter short_of_rows(dir.str("short.npy"), 7, 3);
    short_of_rows.write_rows(whole.data<float>(), 6);
    EXPECT_THROW(short_of_rows.commit(), Error);
    EXPECT_THROW(short_of_rows.write_rows(whole.data<float>(), 2), Error);  // 8 of 7
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir.path))
    EXPECT_EQ(entry.path().filename().string().find("short.npy"), std::string::npos) << entry.path();
}

TEST(Npy, RejectsBadFiles) {
  TempDir dir("io");
  std::string path = dir.str("bad.npy");
  // A v1 file from a header dict and data, padded like NumPy.
  auto npy = [](const std::string& dict, const std::string& data, int major = 1) {
    std::string header = dict;
    size_t prefix = major == 1 ? 10 : 12;
    header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    std::string out = std::string("\x93NUMPY", 6) + char(major) + '\0';
    uint32_t n = static_cast<uint32_t>(header.size());
    out += std::string(reinterpret_cast<const char*>(&n), major == 1 ? 2 : 4);
    return out + header + data;
  };
  auto open_bytes = [&](const std::string& bytes) {
    sae::testing::write_file(path, bytes);
    NpyFile::open(path);
  };
  const std::string data24(24, '\0');
  open_bytes(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data24));  // baseline
  open_bytes(npy("{'shape': (2,3),'fortran_order':False,\"descr\":'<f2'}", data24.substr(0, 12), 2));  // any order, v2
  open_bytes(npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2L, 3L), }", data24 + data24));    // Python 2 ints

  expect_data_error([&] { NpyFile::open(dir.str("missing.npy")); }, {"missing.npy", "No such file"});
  expect_data_error([&] { open_bytes("not numpy at all"); }, {path, "magic"});
  expect_data_error([&] { open_bytes(std::string("\x93NUMPY\x01\x00\x40", 9)); }, {path, "truncated .npy header"});
  expect_data_error([&] { open_bytes(std::string("\x93NUMPY\x01\x00\x40\x00{}", 12)); }, {path, "header length 64", "runs past"});
  expect_data_error([&] {
    std::string b = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data24);
    b[6] = 4;
    open_bytes(b);
  }, {path, "version 4.0"});
  {  // rows past the end of an empty array whose rows are huge: refused before a buffer for them is
     // made (a fuzz finding: 32 GiB were allocated first; here 16 TiB, which no allocator gives)
    sae::testing::write_file(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1099511627776, 4), }", ""));
    const NpyFile empty = NpyFile::open(path);
    EXPECT_EQ(empty.read_rows_f32(0, 0).numel(), 0);
    try {
      empty.read_rows_f32(0, 1);
      ADD_FAILURE() << "a row of an empty array was read";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rows [0, 1) out of range: it has 0 rows"), std::string::npos) << e.what();
    }
  }
  expect_data_error([&] {  // numpy refuses a minor version other than 0 (we had read it as 1.0)
    std::string b = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data24);
    b[7] = 1;
    open_bytes(b);
  }, {path, "version 1.1", "expected 1.0, 2.0 or 3.0"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data24)); }, {path, "Fortran"});
  expect_data_error([&] { open_bytes(npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", data24)); },
                    {path, "big-endian", "'>f4'"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", data24)); },
                    {path, "dtype '<i4'", "'<f4'"});
  expect_data_error([&] { open_bytes(npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", data24)); },
                    {path, "structured"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data24.substr(0, 20))); },
                    {path, "truncated .npy data", "needs 24 bytes", "has 20"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data24 + "xxxx")); },
                    {path, "4 bytes after the data"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'shape': (2, 3), }", data24)); }, {path, "must contain"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", data24)); },
                    {path, "unexpected key 'x'"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3), }", data24)); },
                    {path, "True or False"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", data24)); },
                    {path, "non-negative integer"});
  expect_data_error([&] { open_bytes(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", data24)); }, {path, "bad .npy header"});
}

// ---------------------------------------------------------------------------------------------
// Fixtures from independent writers (scripts/gen_io_fixtures.py)

TEST(IoFixtures, NumpyWrittenNpyFiles) {
  const std::vector<double> ramp = ramp_values();
  for (const char* name : {"io_np_f32.npy", "io_np_f16.npy", "io_np_f64.npy", "io_np_v2.npy", "io_np_v3.npy"}) {
    NpyFile f = NpyFile::open(ref(name));
    EXPECT_EQ(f.shape(), (std::vector<int64_t>{7, 5})) << name;
    Tensor t = f.read_f32();
    EXPECT_EQ(t.shape(), (Shape{7, 5})) << name;
    expect_same_floats(t.to_vector(), ramp, name);
    expect_same_floats(f.read_rows_f32(3, 2).to_vector(), std::vector<double>(ramp.begin() + 15, ramp.begin() + 25), name);
  }
  EXPECT_EQ(NpyFile::open(ref("io_np_f16.npy")).descr(), "<f2");
  EXPECT_EQ(NpyFile::open(ref("io_np_f64.npy")).descr(), "<f8");
  expect_same_floats(NpyFile::open(ref("io_np_1d.npy")).read_f32().to_vector(), {0, 0.5, 1, 1.5, 2, 2.5}, "1-D");
  // numpy's own float16 -> float32 conversion of edge values, bit for bit.
  expect_same_floats(NpyFile::open(ref("io_np_special_f16.npy")).read_f32().to_vector(),
                     NpyFile::open(ref("io_np_special_f16_as_f32.npy")).read_f32().to_vector(), "numpy f16 specials");
  expect_data_error([] { NpyFile::open(ref("io_np_bad_fortran.npy")); }, {"io_np_bad_fortran.npy", "Fortran"});
  expect_data_error([] { NpyFile::open(ref("io_np_bad_bigendian.npy")); }, {"io_np_bad_bigendian.npy", "big-endian"});
  expect_data_error([] { NpyFile::open(ref("io_np_bad_int32.npy")); }, {"io_np_bad_int32.npy", "'<i4'"});
}

TEST(IoFixtures, SafetensorsPackageWrittenFile) {
  SafetensorsFile f = SafetensorsFile::open(ref("io_st_lib.safetensors"));
  const std::map<std::string, std::string> meta = {
      {"model", "tiny-test"}, {"layer", "2"}, {"note", "caf\xc3\xa9 \xe2\x98\x83 \"quoted\""}};
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"act_f16", "act_f64", "activations", "special_f16", "special_f16_as_f32",
                                                 "story_lengths", "token_ids"}));
  EXPECT_EQ(f.entry("act_f16").dtype, "F16");
  EXPECT_EQ(f.entry("act_f64").dtype, "F64");
  const std::vector<double> ramp = ramp_values();
  for (const char* name : {"activations", "act_f16", "act_f64"}) {
    expect_same_floats(f.read_f32(name).to_vector(), ramp, name);
    expect_same_floats(f.read_rows_f32(name, 2, 3).to_vector(), std::vector<double>(ramp.begin() + 10, ramp.begin() + 25), name);
  }
  expect_same_floats(f.read_f32("special_f16").to_vector(), f.read_f32("special_f16_as_f32").to_vector(), "numpy f16 specials");
  EXPECT_EQ(f.read_i64("story_lengths"), (std::vector<int64_t>{2, 4, 1}));
  EXPECT_EQ(f.read_i64("token_ids"), (std::vector<int64_t>{5, -1, 70000, 0, 2147483647, -2147483648LL, 42}));
}

TEST(IoFixtures, OurWriterMatchesTheReferenceByteForByte) {
  TempDir dir("io");
  Tensor w_enc = Tensor::from_vector(ramp_values(), Shape{7, 5}, DType::F32);
  Tensor b_enc = Tensor::from_vector({-2, -1, 0, 1, 2}, Shape{5}, DType::F32);
  Tensor b_dec = Tensor::from_vector({1.0 / 3, 2.0 / 3, 3.0 / 3}, Shape{3}, DType::F64);
  write_safetensors(dir.str("ours.safetensors"), {{"b_enc", b_enc}, {"W_enc", w_enc}, {"b_dec", b_dec}},
                    {{"sae_lens_version", "6.0.0"}});
  std::string ours = sae::testing::read_file(dir.str("ours.safetensors"));
  std::string reference = sae::testing::read_file(ref("io_st_ref_layout.safetensors"));
  ASSERT_FALSE(reference.empty());
  EXPECT_EQ(ours, reference);
}

TEST(IoFixtures, OurWriterOrdersDtypesAsTheReference) {
  // By dtype, not element size: ours put F64 before I64 (feature_stats.safetensors) and I32 before F32.
  TempDir dir("io_order");
  const auto raw = [](const std::string& name, const std::string& dtype, const auto& values) {
    return RawTensor{name, dtype, {2}, raw_bytes(values)};
  };
  write_safetensors_raw(dir.str("ours.safetensors"),
                        {raw("f_f16", "F16", std::vector<uint16_t>{f32_to_f16(0.25f), f32_to_f16(-2.0f)}),
                         raw("e_i16", "I16", std::vector<int16_t>{3, -4}),
                         raw("d_f32", "F32", std::vector<float>{1.5f, 2.5f}),
                         raw("c_i32", "I32", std::vector<int32_t>{7, -8}),
                         raw("b_i64", "I64", std::vector<int64_t>{-1, int64_t(1) << 40}),
                         raw("a_f64", "F64", std::vector<double>{0.5, -1.25})});
  const std::string reference = sae::testing::read_file(ref("io_st_ref_dtype_order.safetensors"));
  ASSERT_FALSE(reference.empty());
  EXPECT_EQ(sae::testing::read_file(dir.str("ours.safetensors")), reference);
}

TEST(IoFixtures, TorchWrittenBfloat16) {
  SafetensorsFile f = SafetensorsFile::open(ref("io_st_torch.safetensors"));
  EXPECT_EQ(f.metadata().at("writer"), "safetensors.torch");
  EXPECT_EQ(f.entry("act_bf16").dtype, "BF16");
  expect_same_floats(f.read_f32("act_bf16").to_vector(), ramp_values(), "act_bf16");
  expect_same_floats(f.read_f32("special_bf16").to_vector(), f.read_f32("special_bf16_as_f32").to_vector(), "torch bf16 specials");
}

TEST(IoFixtures, HandRolledPythonWriter) {
  // Unpadded header (unaligned data), metadata last, \u escapes with a surrogate pair.
  SafetensorsFile f = SafetensorsFile::open(ref("io_st_hand.safetensors"));
  EXPECT_EQ(f.metadata().at("writer"), "hand");
  EXPECT_EQ(f.metadata().at("unicode"), "\xc3\xbc\xf0\x9f\x98\x80");
  const std::vector<double> ramp = ramp_values();
  expect_same_floats(f.read_f32("activations").to_vector(), ramp, "activations");
  expect_same_floats(f.read_f32("act_bf16").to_vector(), ramp, "act_bf16");
  expect_same_floats(f.read_rows_f32("act_bf16", 5, 2).to_vector(), std::vector<double>(ramp.begin() + 25, ramp.end()), "act_bf16 rows");
  expect_same_floats(f.read_f32("special_bf16").to_vector(), f.read_f32("special_bf16_as_f32").to_vector(), "bf16 specials");
  EXPECT_EQ(f.read_i64("token_ids"), (std::vector<int64_t>{5, -1, 70000, 0, 2147483647, -2147483648LL, 42}));
  EXPECT_EQ(f.read_i64("story_lengths"), (std::vector<int64_t>{2, 4, 1}));
  EXPECT_TRUE(f.entry("scalar").shape.empty());
  Tensor scalar = f.read_f32("scalar");
  EXPECT_EQ(scalar.shape(), (Shape{1}));
  EXPECT_EQ(scalar.item(), static_cast<double>(0.1f));
  Tensor empty = f.read_f32("empty");
  EXPECT_EQ(empty.shape(), (Shape{0, 5}));
  EXPECT_EQ(f.read_rows_f32("empty", 0, 0).numel(), 0);
}

// ---- hostile files (the defects a careful attacker found; each must be one clean error or a
// correct read, never undefined behaviour, a huge allocation or a message that breaks the line)

namespace {
// A safetensors file with a hand-written header (padded to 8 bytes) and `data` after it.
void write_safetensors_header(const std::string& path, const std::string& header, const std::string& data = "") {
  std::string h = header;
  while (h.size() % 8) h += ' ';
  const uint64_t n = h.size();
  sae::testing::write_file(path, std::string(reinterpret_cast<const char*>(&n), 8) + h + data);
}
}  // namespace

TEST(HostileFiles, ZeroDimensionAfterHugeOnesIsAnEmptyTensor) {
  TempDir dir("hostile_numel");
  // 2^53 * 2^10 = 2^63 fits an unsigned count but not int64: the zero must make it empty, not overflow.
  const std::string p = dir.str("z.safetensors");
  write_safetensors_header(p, R"({"x":{"dtype":"F32","shape":[9007199254740992,1024,0],"data_offsets":[0,0]}})");
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.entry("x").numel(), 0);
  EXPECT_EQ(f.read_f32("x").numel(), 0);
  // Without the zero the product does not fit int64: refused.
  write_safetensors_header(p, R"({"x":{"dtype":"F32","shape":[9007199254740992,1024],"data_offsets":[0,0]}})");
  expect_data_error([&] { SafetensorsFile::open(p); }, {"too large"});
  // .npy likewise.
  const std::string q = dir.str("z.npy");
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (9007199254740992, 1024, 0), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  const uint16_t len = static_cast<uint16_t>(header.size());
  sae::testing::write_file(q, std::string("\x93NUMPY\x01\x00", 8) + std::string(reinterpret_cast<const char*>(&len), 2) + header);
  EXPECT_EQ(NpyFile::open(q).numel(), 0);
}

TEST(HostileFiles, HeaderThatIsNotAnObjectIsRefusedBeforeParsing) {
  TempDir dir("hostile_header");
  const std::string p = dir.str("a.safetensors");
  // A 20 MB array: refused on its first byte, so it is never built into a JSON tree.
  std::string array = "[";
  array.reserve(20'000'000);
  while (array.size() < 20'000'000) array += "1,";
  array += "1]";
  write_safetensors_header(p, array);
  expect_data_error([&] { SafetensorsFile::open(p); }, {"must be a JSON object"});
  // An object holding a huge array: the parser stops at its value cap.
  write_safetensors_header(p, "{\"x\":" + array + "}");
  expect_data_error([&] { SafetensorsFile::open(p); }, {"more than", "values"});
  // An offset beyond 2^53 is named as such.
  write_safetensors_header(p, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,18014398509481984]}})");
  expect_data_error([&] { SafetensorsFile::open(p); }, {"beyond 2^53"});
}

TEST(HostileFiles, ErrorMessagesStayOnOneLine) {
  TempDir dir("hostile_names");
  // A tensor name with a newline and a terminal escape, and an unknown dtype: the message escapes them.
  const std::string p = dir.str("n.safetensors");
  write_safetensors_header(p, "{\"a\\nb\\u001b[31m\":{\"dtype\":\"Q\\n\",\"shape\":[1],\"data_offsets\":[0,4]}}", "xxxx");
  try {
    SafetensorsFile::open(p);
    FAIL() << "accepted";
  } catch (const DataError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_EQ(m.find('\x1b'), std::string::npos) << m;
    EXPECT_NE(m.find("a\\x0ab\\x1b[31m"), std::string::npos) << m;
  }
  // A .npy header with a bad key and a newline inside: echoed escaped.
  const std::string q = dir.str("n.npy");
  std::string header = "{'descr': '<f4', 'shape': (1,), 'x\ny': 1, }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  const uint16_t len = static_cast<uint16_t>(header.size());
  sae::testing::write_file(q, std::string("\x93NUMPY\x01\x00", 8) + std::string(reinterpret_cast<const char*>(&len), 2) + header + "abcd");
  try {
    NpyFile::open(q);
    FAIL() << "accepted";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(q), std::string::npos) << e.what();
  }
  EXPECT_EQ(printable(std::string("ok\t\xff", 4)), "ok\\x09\\xff");
  EXPECT_EQ(printable(std::string(300, 'a')).size(), 123u);  // cut at 120 with "..."
}

TEST(Errors, EveryMessageIsOneLineWhateverTextWentIn) {
  // Found by make fuzz: config values, merges lines and vocabulary tokens reached messages raw.
  // Control characters become \xNN when the error is made; other bytes (UTF-8 text) stay.
  const DataError e(std::string("got '8\n' and \x1b[2J, tab\t, del\x7f, \xe2\x96\x81 kept"));
  EXPECT_EQ(std::string(e.what()), "got '8\\x0a' and \\x1b[2J, tab\\x09, del\\x7f, \xe2\x96\x81 kept");
  const UsageError u("a\rb");
  EXPECT_EQ(std::string(u.what()), "a\\x0db");
}

TEST(FloatConvert, NarrowingRoundsToNearestEven) {
  // Every half value comes back as itself; NaN stays NaN.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << h;
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << "half " << h;
  }
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = bf16_to_f32(static_cast<uint16_t>(b));
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f), b) << "bf16 " << b;
    }
  }
  // Any float: the result is a nearest representable value, and exact halfway cases go to the even
  // one (the neighbours are found by stepping the result's bits).
  Rng rng(7);
  for (int i = 0; i < 200000; ++i) {
    const double magnitude = std::ldexp(rng.uniform(1.0, 2.0), static_cast<int>(rng.below(50)) - 30);
    const float x = static_cast<float>(rng.below(2) ? magnitude : -magnitude);
    for (bool half : {true, false}) {
      const uint16_t r = half ? f32_to_f16(x) : f32_to_bf16(x);
      auto value = [&](uint16_t bits) { return double(half ? f16_to_f32(bits) : bf16_to_f32(bits)); };
      const double got = value(r);
      if (std::isinf(got)) {
        EXPECT_GT(std::abs(double(x)), half ? 65504.0 : 3e38) << x;
        continue;
      }
      const uint16_t magnitude_bits = r & 0x7FFF;
      for (int step : {-1, 1}) {
        if (magnitude_bits == 0 && step < 0) continue;
        const double neighbour = value(static_cast<uint16_t>((r & 0x8000) | (magnitude_bits + step)));
        if (std::isinf(neighbour)) continue;
        const double d_got = std::abs(got - double(x)), d_other = std::abs(neighbour - double(x));
        EXPECT_LE(d_got, d_other) << "x " << x << (half ? " f16" : " bf16");
        if (d_got == d_other) {
          EXPECT_EQ(r & 1, 0) << "tie not to even: x " << x;
        }
      }
    }
  }
  // Round trips through the bulk converter.
  std::vector<float> in = {1.0f, -2.5f, 65504.0f, 1e-8f, 3.14159265f};
  for (const char* dtype : {"F32", "F16", "BF16"}) {
    std::string bytes(in.size() * safetensors_dtype_size(dtype), '\0');
    convert_from_f32(in.data(), in.size(), dtype, bytes.data());
    std::vector<float> back(in.size());
    convert_to_f32(bytes.data(), dtype, in.size(), back.data());
    EXPECT_EQ(back[0], 1.0f) << dtype;
    EXPECT_EQ(back[1], -2.5f) << dtype;
    EXPECT_NEAR(back[4], 3.14159265f, std::string(dtype) == "BF16" ? 0.02 : 0.002) << dtype;
  }
}
