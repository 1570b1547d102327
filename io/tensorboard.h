// TensorBoard scalar logging, written by hand: no protobuf or TensorFlow library.
// Owns one event file per writer, `events.out.tfevents.<unix seconds>.<host>.<pid>.<n>` (the name
// TensorBoard's own EventFileWriter uses), holding TFRecord-framed Event protos:
//   record = uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
//   Event   { wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5,
//             session_log = 7 }
//   SessionLog { status = 1 (enum: START = 1) }
//   Summary { value = 1 (repeated Value) },  Value { tag = 1 (string), simple_value = 2 (float) }
// (tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto,
//  tensorflow/core/lib/io/record_writer.cc). The first record is the file_version "brain.Event:2" event.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sae {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF).
uint32_t crc32c(const void* data, size_t n);
// The TFRecord mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8, applied to crc32c(data).
uint32_t masked_crc32c(const void* data, size_t n);

// Seconds since the Unix epoch, with sub-second precision (the Event wall_time).
double unix_time_now();

class TensorBoardWriter {
 public:
  // Creates log_dir (and parents) if missing, opens a new event file in it and writes the
  // file_version event to disk. Throws DataError naming the path on any I/O failure.
  explicit TensorBoardWriter(const std::string& log_dir);
  // Flushes; never throws (an error is printed to stderr).
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Appends one scalar event to the in-memory buffer (stored as float32, as TensorBoard does);
  // the buffer goes to disk on flush(), when it grows past a few hundred KiB, and in the destructor.
  void add_scalar(const std::string& tag, int64_t step, double value, double wall_time = unix_time_now());
  // A SessionLog START event at `step`: TensorBoard then drops the events of earlier files at this
  // step and after (a resumed run's steps past its checkpoint, written by the run it continues; as
  // PyTorch's SummaryWriter(purge_step=step) does).
  void purge_from(int64_t step, double wall_time = unix_time_now());
  // Writes the buffer to the file and flushes the C stream. Throws DataError naming the path.
  void flush();
  // flush(), then the file to disk (fsync), as before a checkpoint. Throws DataError naming the path.
  void sync();
  // Full path of the event file.
  const std::string& path() const { return path_; }

 private:
  void append_record(const std::string& data);

  std::string path_;
  std::FILE* file_ = nullptr;
  std::string pending_;  // framed records not yet handed to the file
};

}  // namespace sae
