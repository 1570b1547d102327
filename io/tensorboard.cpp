// TensorBoard event-file writer: CRC-32C, protobuf wire encoding and TFRecord framing by hand.
// Protobuf wire format: each field is a varint
// key (field_number << 3 | wire_type) followed by its payload; wire types used here are
// 0 varint (int64), 1 fixed64 (double), 2 length-delimited (string, sub-message), 5 fixed32 (float).
#include "io/tensorboard.h"

#include "io/atomic_file.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "tensor/error.h"

namespace sae {

namespace {

// Table for the reflected (LSB-first) CRC-32C, one entry per byte value.
std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t byte = 0; byte < 256; ++byte) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    table[byte] = crc;
  }
  return table;
}

// ---- protobuf encoding ----
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (uint64_t(field) << 3) | type); }

// Little-endian byte order, whatever the host's.
void put_fixed32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_fixed64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void put_double_field(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_key(out, field, kFixed64);
  put_fixed64(out, bits);
}
void put_float_field(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_key(out, field, kFixed32);
  put_fixed32(out, bits);
}
// int64 is a plain varint of the two's-complement bits (negative values take 10 bytes).
void put_int64_field(std::string& out, uint32_t field, int64_t v) {
  put_key(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(v));
}
void put_bytes_field(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event field numbers (event.proto) and Summary / Summary.Value field numbers (summary.proto).
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5, kEventSessionLog = 7;
constexpr uint32_t kSessionLogStatus = 1, kSessionStart = 1;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimpleValue = 2;

// An Event at `wall_time` and `step` whose one "what" field is `field` with `payload`.
std::string event_of(double wall_time, int64_t step, uint32_t field, const std::string& payload) {
  std::string event;
  put_double_field(event, kEventWallTime, wall_time);
  put_int64_field(event, kEventStep, step);
  put_bytes_field(event, field, payload);
  return event;
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// Distinguishes writers opened by this process in the same second (TensorBoard's _global_uid).
std::atomic<int64_t> g_writer_counter{0};

constexpr size_t kAutoFlushBytes = 256 * 1024;

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ bytes[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  uint32_t crc = crc32c(data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

double unix_time_now() {
  auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration<double>(since_epoch).count();
}

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(log_dir, ec);
  if (ec) throw DataError(cat("TensorBoardWriter: cannot create log directory '", log_dir, "': ", ec.message()));
  if (!fs::is_directory(log_dir, ec))
    throw DataError(cat("TensorBoardWriter: log path '", log_dir, "' is not a directory"));

  double start = unix_time_now();
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%010lld", static_cast<long long>(start));
  std::string stem = cat("events.out.tfevents.", seconds, ".", host_name(), ".", getpid(), ".");
  // "x" (C11 exclusive create) fails if the file exists; then try the next counter value.
  for (int attempt = 0; attempt < 1000 && file_ == nullptr; ++attempt) {
    path_ = (fs::path(log_dir) / cat(stem, g_writer_counter.fetch_add(1))).string();
    file_ = std::fopen(path_.c_str(), "wbx");
    if (file_ == nullptr && errno != EEXIST)
      throw DataError(cat("TensorBoardWriter: cannot create '", path_, "': ", std::strerror(errno)));
  }
  if (file_ == nullptr) throw DataError(cat("TensorBoardWriter: no free event file name like '", path_, "'"));

  append_record(event_of(start, 0, kEventFileVersion, "brain.Event:2"));
  try {
    flush();
  } catch (...) {
    std::fclose(file_);
    throw;
  }
}

// Silent: a run flushes its log where a failure can be reported (RunLog::flush, which throws); a
// writer destroyed unflushed is one unwinding from another error, whose one line is the message (a
// second line here had come before it).
TensorBoardWriter::~TensorBoardWriter() {
  try {
    flush();
  } catch (const std::exception&) {
  }
  std::fclose(file_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value, double wall_time) {
  if (tag.empty()) throw Error("TensorBoardWriter::add_scalar: empty tag");
  std::string summary_value;
  put_bytes_field(summary_value, kValueTag, tag);
  put_float_field(summary_value, kValueSimpleValue, static_cast<float>(value));
  std::string summary;
  put_bytes_field(summary, kSummaryValue, summary_value);
  append_record(event_of(wall_time, step, kEventSummary, summary));
  if (pending_.size() >= kAutoFlushBytes) flush();
}

void TensorBoardWriter::purge_from(int64_t step, double wall_time) {
  std::string session_log;
  put_int64_field(session_log, kSessionLogStatus, kSessionStart);
  append_record(event_of(wall_time, step, kEventSessionLog, session_log));
}

void TensorBoardWriter::append_record(const std::string& data) {
  std::string length;
  put_fixed64(length, data.size());
  pending_ += length;
  put_fixed32(pending_, masked_crc32c(length.data(), length.size()));
  pending_ += data;
  put_fixed32(pending_, masked_crc32c(data.data(), data.size()));
}

void TensorBoardWriter::flush() {
  // The buffer is dropped even when the write fails: retrying after a partial write would
  // duplicate bytes and corrupt the framing of every later record.
  std::string bytes;
  bytes.swap(pending_);
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), file_) != bytes.size())
    throw DataError(cat("TensorBoardWriter: writing '", path_, "' failed: ", std::strerror(errno)));
  if (std::fflush(file_) != 0)
    throw DataError(cat("TensorBoardWriter: flushing '", path_, "' failed: ", std::strerror(errno)));
}

void TensorBoardWriter::sync() {
  flush();
  sync_fd(::fileno(file_), path_);
}

}  // namespace sae
