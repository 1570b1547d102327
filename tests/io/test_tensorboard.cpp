// Tests of the TensorBoard writer: CRC-32C check values, the TFRecord mask, and a reader written
// here (framing, both CRCs, protobuf decoding) that reads back what the writer wrote, including a
// corrupted byte that the CRCs must catch. The CRC in the reader is a bitwise one, independent of
// the writer's table. Set SAE_TB_DEMO_DIR=<dir> to keep the demo log for scripts/check_tensorboard.py.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>

#include "io/tensorboard.h"
#include "sae/report/run_log.h"  // its purge on a resume (the reader is here)
#include "tensor/error.h"
#include "tests/util/test_util.h"

using namespace sae;
namespace fs = std::filesystem;

using sae::testing::read_file;
using sae::testing::TempDir;

namespace {

// ---- an independent reader ----

uint32_t bitwise_crc32c(const std::string& s) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char c : s) {
    crc ^= c;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
  }
  return ~crc;
}
uint32_t bitwise_masked(const std::string& s) {
  uint32_t crc = bitwise_crc32c(s);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

uint64_t read_le(const std::string& s, size_t at, int nbytes) {
  uint64_t v = 0;
  for (int i = 0; i < nbytes; ++i) v |= uint64_t(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

// Splits a TFRecord file into record payloads; throws naming the record when framing or a CRC is bad.
std::vector<std::string> read_records(const std::string& bytes) {
  std::vector<std::string> records;
  size_t at = 0;
  while (at < bytes.size()) {
    std::string where = "record " + std::to_string(records.size());
    if (bytes.size() - at < 12) throw std::runtime_error(where + ": truncated header");
    std::string length_bytes = bytes.substr(at, 8);
    uint64_t length = read_le(bytes, at, 8);
    if (read_le(bytes, at + 8, 4) != bitwise_masked(length_bytes)) throw std::runtime_error(where + ": length crc mismatch");
    at += 12;
    if (bytes.size() - at < length + 4) throw std::runtime_error(where + ": truncated data");
    std::string data = bytes.substr(at, length);
    if (read_le(bytes, at + length, 4) != bitwise_masked(data)) throw std::runtime_error(where + ": data crc mismatch");
    at += length + 4;
    records.push_back(data);
  }
  return records;
}

struct Field {
  uint32_t number = 0;
  uint32_t wire_type = 0;
  uint64_t number_value = 0;  // varint, fixed64 or fixed32 payload
  std::string bytes;          // length-delimited payload
};

uint64_t read_varint(const std::string& s, size_t& at) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (at >= s.size()) throw std::runtime_error("truncated varint");
    unsigned char b = static_cast<unsigned char>(s[at++]);
    v |= uint64_t(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
  throw std::runtime_error("varint too long");
}

std::vector<Field> decode_message(const std::string& s) {
  std::vector<Field> fields;
  size_t at = 0;
  while (at < s.size()) {
    uint64_t key = read_varint(s, at);
    Field f;
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire_type = static_cast<uint32_t>(key & 7);
    if (f.wire_type == 0) {
      f.number_value = read_varint(s, at);
    } else if (f.wire_type == 1 || f.wire_type == 5) {
      int n = f.wire_type == 1 ? 8 : 4;
      if (s.size() - at < size_t(n)) throw std::runtime_error("truncated fixed field");
      f.number_value = read_le(s, at, n);
      at += n;
    } else if (f.wire_type == 2) {
      uint64_t n = read_varint(s, at);
      if (s.size() - at < n) throw std::runtime_error("truncated bytes field");
      f.bytes = s.substr(at, n);
      at += n;
    } else {
      throw std::runtime_error("unexpected wire type " + std::to_string(f.wire_type));
    }
    fields.push_back(f);
  }
  return fields;
}

struct ScalarValue {
  std::string tag;
  float simple_value = std::numeric_limits<float>::quiet_NaN();
};
struct Event {
  double wall_time = -1;
  int64_t step = -12345;
  std::string file_version;
  bool has_summary = false;
  std::vector<ScalarValue> values;
  int64_t session_status = -1;  // SessionLog.status, when the event has one
};

Event decode_event(const std::string& data) {
  Event e;
  for (const Field& f : decode_message(data)) {
    if (f.number == 1 && f.wire_type == 1) {
      std::memcpy(&e.wall_time, &f.number_value, 8);
    } else if (f.number == 2 && f.wire_type == 0) {
      e.step = static_cast<int64_t>(f.number_value);
    } else if (f.number == 3 && f.wire_type == 2) {
      e.file_version = f.bytes;
    } else if (f.number == 5 && f.wire_type == 2) {
      e.has_summary = true;
      for (const Field& sv : decode_message(f.bytes)) {
        if (sv.number != 1 || sv.wire_type != 2) throw std::runtime_error("unexpected Summary field");
        ScalarValue v;
        for (const Field& vf : decode_message(sv.bytes)) {
          if (vf.number == 1 && vf.wire_type == 2) {
            v.tag = vf.bytes;
          } else if (vf.number == 2 && vf.wire_type == 5) {
            uint32_t bits = static_cast<uint32_t>(vf.number_value);
            std::memcpy(&v.simple_value, &bits, 4);
          } else {
            throw std::runtime_error("unexpected Summary.Value field " + std::to_string(vf.number));
          }
        }
        e.values.push_back(v);
      }
    } else if (f.number == 7 && f.wire_type == 2) {
      for (const Field& sf : decode_message(f.bytes)) {
        if (sf.number != 1 || sf.wire_type != 0) throw std::runtime_error("unexpected SessionLog field");
        e.session_status = static_cast<int64_t>(sf.number_value);
      }
    } else {
      throw std::runtime_error("unexpected Event field " + std::to_string(f.number));
    }
  }
  return e;
}

std::vector<Event> read_events(const std::string& path) {
  std::vector<Event> events;
  for (const std::string& r : read_records(read_file(path))) events.push_back(decode_event(r));
  return events;
}

struct Scalar {
  std::string tag;
  int64_t step;
  double value;
  double wall_time;
};

void expect_scalars(const std::vector<Event>& events, const std::vector<Scalar>& expected) {
  ASSERT_EQ(events.size(), expected.size() + 1);
  for (size_t i = 0; i < expected.size(); ++i) {
    const Event& e = events[i + 1];
    SCOPED_TRACE("scalar " + std::to_string(i));
    EXPECT_TRUE(e.has_summary);
    EXPECT_EQ(e.file_version, "");
    EXPECT_EQ(e.step, expected[i].step);
    EXPECT_EQ(e.wall_time, expected[i].wall_time);
    ASSERT_EQ(e.values.size(), 1u);
    EXPECT_EQ(e.values[0].tag, expected[i].tag);
    float want = static_cast<float>(expected[i].value);
    EXPECT_EQ(std::memcmp(&e.values[0].simple_value, &want, 4), 0)
        << e.values[0].simple_value << " vs " << want;  // bit-exact, so NaN and -0 count too
  }
}

void expect_file_version_event(const Event& e, double before, double after) {
  EXPECT_EQ(e.file_version, "brain.Event:2");
  EXPECT_EQ(e.step, 0);
  EXPECT_FALSE(e.has_summary);
  EXPECT_GE(e.wall_time, before - 1e-3);
  EXPECT_LE(e.wall_time, after + 1e-3);
}

}  // namespace

TEST(Crc32c, StandardCheckValues) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the CRC catalogue check value
  EXPECT_EQ(crc32c("", 0), 0u);
  // RFC 3720 (iSCSI) appendix B.4: 32 bytes of zeros and 32 bytes of 0xFF.
  std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(Crc32c, MaskedValues) {
  // Reference values from tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c.
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5u);
  EXPECT_EQ(masked_crc32c("", 0), 0xA282EAD8u);
  const unsigned char length24[8] = {24, 0, 0, 0, 0, 0, 0, 0};  // uint64 24, little endian
  EXPECT_EQ(masked_crc32c(length24, 8), 0x224B7FA3u);
}

TEST(Crc32c, TableMatchesBitwiseOnRandomBytes) {
  std::mt19937 gen(7);
  for (int len : {1, 3, 8, 17, 255, 1000}) {
    std::string s(len, '\0');
    for (char& c : s) c = static_cast<char>(gen() & 0xFF);
    EXPECT_EQ(crc32c(s.data(), s.size()), bitwise_crc32c(s)) << "length " << len;
    EXPECT_EQ(masked_crc32c(s.data(), s.size()), bitwise_masked(s)) << "length " << len;
  }
}

TEST(TensorBoard, RoundTripTagsStepsValues) {
  TempDir dir("roundtrip");
  std::vector<Scalar> scalars = {
      {"loss/total", 0, 0.1, 1700000000.25},
      {"loss/rec", 1, 3.5, 1700000001.5},
      {"loss/l1", 2, -1.0e-3, 1700000002.75},
      {"metrics/l0", 1000000, 37.0, 1700000003.0},
      {"metrics/dead_fraction", 5000000000LL, 1.0e30, 1700000004.125},  // step beyond int32
      {"weird", -3, -0.0, 1700000005.0},                                 // negative step: 10-byte varint
      {"metrics/\xc3\xa9t\xc3\xa9 with space", 7, std::numeric_limits<double>::infinity(), 1700000006.0},
      {"nan", 8, std::numeric_limits<double>::quiet_NaN(), 1700000007.0},
  };
  double before = unix_time_now();
  std::string path;
  {
    TensorBoardWriter writer(dir.path.string());
    double after = unix_time_now();
    path = writer.path();
    EXPECT_EQ(fs::path(path).parent_path(), dir.path);
    EXPECT_EQ(fs::path(path).filename().string().rfind("events.out.tfevents.", 0), 0u) << path;
    for (const Scalar& s : scalars) writer.add_scalar(s.tag, s.step, s.value, s.wall_time);
    writer.flush();
    std::vector<Event> events = read_events(path);
    ASSERT_FALSE(events.empty());
    expect_file_version_event(events[0], before, after);
    expect_scalars(events, scalars);
  }
  EXPECT_EQ(read_events(path).size(), scalars.size() + 1);  // the destructor adds nothing twice
}

TEST(TensorBoard, PurgeFromWritesASessionStartAtItsStep) {
  // event.proto: Event.session_log = 7, SessionLog.status = 1, START = 1 (what TensorBoard's
  // EventAccumulator purges on: the earlier events at this step and after).
  TempDir dir("purge");
  std::string path;
  {
    TensorBoardWriter writer(dir.path.string());
    path = writer.path();
    writer.purge_from(41, 1700000000.5);
    writer.add_scalar("loss", 45, 1.0, 1700000001.0);
  }
  const std::vector<Event> events = read_events(path);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[1].step, 41);
  EXPECT_EQ(events[1].session_status, 1);
  EXPECT_EQ(events[1].wall_time, 1700000000.5);
  EXPECT_FALSE(events[1].has_summary);
  EXPECT_EQ(events[2].session_status, -1);
}

// A run's log opened again (a resume) writes the purge from the step after the one resumed, also
// from step 0 (a run killed before its first checkpoint: everything it logged is dropped); a fresh
// run's writes none.
TEST(TensorBoard, ARunLogOpenedAgainPurgesWhatFollowsItsStep) {
  TempDir dir("run_log_purge");
  auto session_starts = [&] {
    std::vector<int64_t> steps;
    for (const auto& entry : fs::directory_iterator(dir.path / "tensorboard"))
      for (const Event& e : read_events(entry.path().string()))
        if (e.session_status == 1) steps.push_back(e.step);
    std::sort(steps.begin(), steps.end());
    return steps;
  };
  {
    RunLog log(dir.path.string(), 0);
    log.write({{"step", 10.0}, {"loss", 1.0}});
  }
  EXPECT_TRUE(session_starts().empty());
  { RunLog log(dir.path.string(), 0); }
  EXPECT_EQ(session_starts(), std::vector<int64_t>{1});
  { RunLog log(dir.path.string(), 5000); }
  EXPECT_EQ(session_starts(), (std::vector<int64_t>{1, 5001}));
}

TEST(TensorBoard, DefaultWallTimeIsNow) {
  TempDir dir("walltime");
  TensorBoardWriter writer(dir.path.string());
  double before = unix_time_now();
  writer.add_scalar("x", 4, 2.0);
  double after = unix_time_now();
  writer.flush();
  std::vector<Event> events = read_events(writer.path());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_GE(events[1].wall_time, before);
  EXPECT_LE(events[1].wall_time, after);
  EXPECT_GT(events[1].wall_time, 1.6e9);  // seconds since 1970, not milliseconds or 0
  EXPECT_LT(events[1].wall_time, 1.0e10);
}

TEST(TensorBoard, BufferedUntilFlushAndDestructorFlushes) {
  TempDir dir("buffer");
  std::string path;
  size_t header_size = 0;
  std::vector<Scalar> scalars;
  {
    TensorBoardWriter writer(dir.path.string());
    path = writer.path();
    header_size = fs::file_size(path);  // the file_version event is on disk from the start
    EXPECT_GT(header_size, 16u);
    for (int i = 0; i < 5; ++i) {
      scalars.push_back({"loss", i, 1.0 / (i + 1), 1.0e9 + i});
      writer.add_scalar("loss", i, 1.0 / (i + 1), 1.0e9 + i);
    }
    EXPECT_EQ(fs::file_size(path), header_size);  // still buffered
  }
  expect_scalars(read_events(path), scalars);
}

TEST(TensorBoard, ManyScalarsAutoFlush) {
  TempDir dir("many");
  TensorBoardWriter writer(dir.path.string());
  std::vector<Scalar> scalars;
  for (int i = 0; i < 20000; ++i) {
    Scalar s{i % 2 ? "odd/value" : "even/value", i, std::sin(0.01 * i) * 100.0, 1.0e9 + 0.5 * i};
    scalars.push_back(s);
    writer.add_scalar(s.tag, s.step, s.value, s.wall_time);
  }
  EXPECT_GT(fs::file_size(writer.path()), 256u * 1024u);  // the buffer went to disk on its own
  writer.flush();
  expect_scalars(read_events(writer.path()), scalars);
}

TEST(TensorBoard, TwoWritersInOneDirectoryGetDistinctFiles) {
  TempDir dir("two");
  TensorBoardWriter a(dir.path.string());
  TensorBoardWriter b(dir.path.string());
  EXPECT_NE(a.path(), b.path());
  a.add_scalar("a", 1, 1.0, 10.0);
  b.add_scalar("b", 2, 2.0, 20.0);
  a.flush();
  b.flush();
  expect_scalars(read_events(a.path()), {{"a", 1, 1.0, 10.0}});
  expect_scalars(read_events(b.path()), {{"b", 2, 2.0, 20.0}});
}

TEST(TensorBoard, CorruptedBytesAreDetected) {
  TempDir dir("corrupt");
  std::string path;
  {
    TensorBoardWriter writer(dir.path.string());
    writer.add_scalar("loss", 3, 0.25, 1.0e9);
    path = writer.path();
  }
  const std::string good = read_file(path);
  ASSERT_EQ(read_records(good).size(), 2u);
  size_t second = 12 + read_le(good, 0, 8) + 4;  // offset of the second record

  std::string bad_data = good;
  bad_data[second + 12 + 5] ^= 0x01;  // one bit inside the scalar event's payload
  EXPECT_THROW(
      {
        try {
          read_records(bad_data);
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "record 1: data crc mismatch");
          throw;
        }
      },
      std::runtime_error);

  std::string bad_length = good;
  bad_length[second] ^= 0x02;  // the length field of the second record
  EXPECT_THROW(
      {
        try {
          read_records(bad_length);
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "record 1: length crc mismatch");
          throw;
        }
      },
      std::runtime_error);

  std::string bad_crc = good;
  bad_crc[good.size() - 1] ^= 0x80;  // the stored data CRC itself
  EXPECT_THROW(read_records(bad_crc), std::runtime_error);
  EXPECT_THROW(read_records(good.substr(0, good.size() - 2)), std::runtime_error);  // truncated
}

TEST(TensorBoard, BadLogDirThrowsDataErrorNamingPath) {
  TempDir dir("baddir");
  fs::create_directories(dir.path);
  std::string file = (dir.path / "plain_file").string();
  std::ofstream(file) << "not a directory";
  for (const std::string& log_dir : {file, file + "/sub"}) {
    try {
      TensorBoardWriter writer(log_dir);
      ADD_FAILURE() << "no error for " << log_dir;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(log_dir), std::string::npos) << e.what();
    }
  }
}

TEST(TensorBoard, EmptyTagThrows) {
  TempDir dir("emptytag");
  TensorBoardWriter writer(dir.path.string());
  EXPECT_THROW(writer.add_scalar("", 0, 1.0), Error);
}

// Writes a small known log; with SAE_TB_DEMO_DIR set the directory is kept so that
// `python3 scripts/check_tensorboard.py $SAE_TB_DEMO_DIR --expect ...` can read it.
TEST(TensorBoard, DemoLogForPythonCheck) {
  const char* keep = std::getenv("SAE_TB_DEMO_DIR");
  TempDir temp("demo");
  fs::path dir = keep ? fs::path(keep) : temp.path;
  std::vector<Scalar> scalars;
  for (int step = 0; step <= 40; step += 10) {
    scalars.push_back({"loss/rec", step, 1.0 / (1.0 + 0.1 * step), 1.7e9 + step});
    scalars.push_back({"loss/l1", step, 0.05 * step + 0.125, 1.7e9 + step});
    scalars.push_back({"metrics/l0", step, 100.0 - step * 1.5, 1.7e9 + step});
  }
  std::string path;
  {
    TensorBoardWriter writer(dir.string());
    path = writer.path();
    for (const Scalar& s : scalars) writer.add_scalar(s.tag, s.step, s.value, s.wall_time);
  }
  expect_scalars(read_events(path), scalars);
  if (keep) std::cout << "TensorBoard demo log: " << path << "\n";
}
