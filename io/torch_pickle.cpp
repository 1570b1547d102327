// PyTorch torch.save reader (see torch_pickle.h): the archive's layout, the pickle machine, the
// tensors' checks against their storages, the strided read.
#include "io/torch_pickle.h"

#include <cstring>
#include <deque>
#include <limits>
#include <unordered_map>

#include "io/float_convert.h"
#include "tensor/error.h"

namespace sae {

namespace {

constexpr size_t kMaxNames = size_t(1) << 16;     // dict entries visited for names (tensors, numbers, others)
constexpr size_t kMaxValues = size_t(1) << 20;    // objects the pickle makes (a state dict: a few dozen per tensor)
constexpr size_t kMaxGlobalName = 256;            // bytes of a GLOBAL's module or name line
constexpr size_t kMaxPickleBytes = size_t(64) << 20;
// The first bytes of torch.save's legacy format (before PyTorch 1.6, or
// _use_new_zipfile_serialization=False): a pickled magic number.
constexpr unsigned char kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

// A value of the pickle machine. Objects live in the machine's arena and refer to each other by
// pointer (a pickle can make a container hold itself).
struct Value {
  enum Kind { None, Bool, Int, Float, String, Tuple, List, Dict, Global, Storage, TensorRef, Mark } kind = None;
  int64_t i = 0;
  double f = 0;
  std::string s;                                  // String; Global "module.name"
  std::vector<Value*> items;                      // Tuple, List
  std::vector<std::pair<Value*, Value*>> pairs;  // Dict
  TorchTensorEntry tensor;                        // Storage (dtype, element_size), TensorRef
  std::string storage_key;                        // Storage, TensorRef: its data/KEY
  int64_t storage_numel = 0;                      // Storage, TensorRef: the storage's elements
};

struct StorageType {
  const char* name;
  const char* dtype;
  size_t bytes;
};
constexpr StorageType kStorageTypes[] = {
    {"torch.FloatStorage", "F32", 4}, {"torch.DoubleStorage", "F64", 8}, {"torch.HalfStorage", "F16", 2},
    {"torch.BFloat16Storage", "BF16", 2}, {"torch.LongStorage", "I64", 8}, {"torch.IntStorage", "I32", 4},
    {"torch.ShortStorage", "I16", 2},    {"torch.CharStorage", "I8", 1},   {"torch.ByteStorage", "U8", 1},
    {"torch.BoolStorage", "BOOL", 1}};

const StorageType* storage_type(const std::string& global) {
  for (const StorageType& t : kStorageTypes)
    if (global == t.name) return &t;
  return nullptr;
}

bool known_global(const std::string& g) {
  return g == "collections.OrderedDict" || g == "torch._utils._rebuild_tensor_v2" ||
         g == "torch._utils._rebuild_parameter" || storage_type(g) != nullptr;
}

// The pickle machine: runs data.pkl's opcodes over a stack, with the memo and the marks.
class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, const std::string& where) : p_(data), end_(data + size), where_(where) {}

  // The pickled object. `storage(key, type, numel)` gives the archive entry of a persistent id's storage.
  Value* run() {
    for (;;) {
      const size_t at = consumed_;
      const uint8_t op = byte();
      switch (op) {
        case 0x80: byte(); break;                           // PROTO
        case 0x95: bytes(8); break;                         // FRAME (protocol 4): a length, ignored
        case '.': return finish();                          // STOP
        case '(': marks_.push_back(stack_.size()); break;   // MARK
        case '0': pop(); break;                             // POP
        case '1': pop_mark(); break;                        // POP_MARK
        case 'N': push(make(Value::None)); break;           // NONE
        case 0x88: push(boolean(true)); break;              // NEWTRUE
        case 0x89: push(boolean(false)); break;             // NEWFALSE
        case 'J': push(integer(static_cast<int32_t>(le(4)))); break;  // BININT
        case 'K': push(integer(byte())); break;             // BININT1
        case 'M': push(integer(static_cast<int64_t>(le(2)))); break;  // BININT2
        case 0x8a: push(long1()); break;                    // LONG1
        case 'G': push(binfloat()); break;                  // BINFLOAT
        case 'X': push(string(le(4))); break;               // BINUNICODE
        case 0x8c: push(string(byte())); break;             // SHORT_BINUNICODE
        case 0x8d: push(string(le(8))); break;              // BINUNICODE8
        case ')': push(make(Value::Tuple)); break;          // EMPTY_TUPLE
        case 0x85: push(tuple_of_top(1)); break;            // TUPLE1
        case 0x86: push(tuple_of_top(2)); break;            // TUPLE2
        case 0x87: push(tuple_of_top(3)); break;            // TUPLE3
        case 't': push(tuple_from_mark()); break;           // TUPLE
        case ']': push(make(Value::List)); break;           // EMPTY_LIST
        case '}': push(make(Value::Dict)); break;           // EMPTY_DICT
        case 'a': append(1); break;                         // APPEND
        case 'e': append(0); break;                         // APPENDS
        case 's': setitems(1); break;                       // SETITEM
        case 'u': setitems(0); break;                       // SETITEMS
        case 'q': memo_put(byte()); break;                  // BINPUT
        case 'r': memo_put(le(4)); break;                   // LONG_BINPUT
        case 0x94: memo_put(memo_.size()); break;           // MEMOIZE
        case 'h': push(memo_get(byte())); break;            // BINGET
        case 'j': push(memo_get(le(4))); break;             // LONG_BINGET
        case 'c': push(global_from_text()); break;          // GLOBAL
        case 0x93: push(stack_global()); break;             // STACK_GLOBAL
        case 'Q': push(persistent_id(pop())); break;        // BINPERSID
        case 'R': reduce(); break;                          // REDUCE
        case 'b': build(); break;                           // BUILD
        default:
          fail(cat("pickle opcode 0x", hex(op), " at byte ", at,
                   " is not one torch.save writes for a dict of tensors (not read)"));
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw DataError(cat(where_, ": ", what)); }
  static std::string hex(unsigned v) {
    const char* digits = "0123456789abcdef";
    return {digits[(v >> 4) & 15], digits[v & 15]};
  }

  const uint8_t* bytes(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) fail("the pickle ends in the middle of an opcode (truncated data.pkl)");
    const uint8_t* at = p_;
    p_ += n;
    consumed_ += n;
    return at;
  }
  uint8_t byte() { return *bytes(1); }
  uint64_t le(int n) {
    const uint8_t* b = bytes(n);
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | b[k];
    return v;
  }

  Value* make(Value::Kind kind) {
    if (arena_.size() >= kMaxValues)
      fail(cat("the pickle makes more than ", kMaxValues, " objects (a state dict makes a few dozen per tensor)"));
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }
  Value* boolean(bool b) {
    Value* v = make(Value::Bool);
    v->i = b;
    return v;
  }
  Value* integer(int64_t i) {
    Value* v = make(Value::Int);
    v->i = i;
    return v;
  }
  Value* long1() {
    const uint8_t n = byte();
    if (n > 8) fail(cat("a pickled integer of ", int(n), " bytes is too large"));
    const uint8_t* b = bytes(n);
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | b[k];
    if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
    return integer(static_cast<int64_t>(v));
  }
  Value* binfloat() {
    const uint8_t* b = bytes(8);
    uint64_t bits = 0;
    for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];  // big-endian
    Value* v = make(Value::Float);
    std::memcpy(&v->f, &bits, 8);
    return v;
  }
  Value* string(uint64_t n) {
    const uint8_t* b = bytes(n);
    Value* v = make(Value::String);
    v->s.assign(reinterpret_cast<const char*>(b), n);
    return v;
  }

  void push(Value* v) { stack_.push_back(v); }
  Value* pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("the pickle pops an empty stack");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("the pickle reads an empty stack");
    return stack_.back();
  }
  // The items above the last mark, which is dropped.
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("the pickle has no MARK where one is needed");
    const size_t from = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(from), stack_.end());
    stack_.resize(from);
    return items;
  }
  Value* tuple_of_top(size_t n) {
    Value* t = make(Value::Tuple);
    t->items.resize(n);
    for (size_t k = n; k-- > 0;) t->items[k] = pop();
    return t;
  }
  Value* tuple_from_mark() {
    Value* t = make(Value::Tuple);
    t->items = pop_mark();
    return t;
  }
  void append(int one) {
    std::vector<Value*> items = one ? std::vector<Value*>{pop()} : pop_mark();
    Value* list = top();
    if (list->kind != Value::List) fail("the pickle appends to something that is not a list");
    list->items.insert(list->items.end(), items.begin(), items.end());
  }
  void setitems(int one) {
    std::vector<Value*> items;
    if (one) {
      Value* value = pop();
      Value* key = pop();
      items = {key, value};
    } else {
      items = pop_mark();
    }
    if (items.size() % 2 != 0) fail("the pickle sets a dict's items from an odd number of values");
    Value* dict = top();
    if (dict->kind != Value::Dict) fail("the pickle sets items of something that is not a dict");
    for (size_t k = 0; k < items.size(); k += 2) dict->pairs.push_back({items[k], items[k + 1]});
  }
  void memo_put(uint64_t index) { memo_[index] = top(); }
  Value* memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail(cat("the pickle reads memo entry ", index, ", which it never stored"));
    return it->second;
  }

  Value* global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    if (!known_global(full))
      fail(cat("the pickle calls ", printable(full), ": only dicts of tensors, numbers and strings are read "
               "(the file must be a state dict, as torch.save(module.state_dict()) writes)"));
    Value* v = make(Value::Global);
    v->s = full;
    return v;
  }
  std::string line() {
    std::string text;
    for (;;) {
      const uint8_t c = byte();
      if (c == '\n') return text;
      if (text.size() >= kMaxGlobalName) fail("a GLOBAL's name in the pickle is too long");
      text.push_back(static_cast<char>(c));
    }
  }
  Value* global_from_text() {
    const std::string module = line();
    const std::string name = line();
    return global(module, name);
  }
  Value* stack_global() {
    Value* name = pop();
    Value* module = pop();
    if (name->kind != Value::String || module->kind != Value::String) fail("STACK_GLOBAL without two strings");
    return global(module->s, name->s);
  }

  // ('storage', TYPE, KEY, LOCATION, NUMEL): the storage TYPE of NUMEL elements in data/KEY.
  Value* persistent_id(Value* pid) {
    if (pid->kind != Value::Tuple || pid->items.size() != 5 || pid->items[0]->kind != Value::String ||
        pid->items[0]->s != "storage" || pid->items[1]->kind != Value::Global || pid->items[2]->kind != Value::String ||
        pid->items[4]->kind != Value::Int)
      fail("a persistent id that is not ('storage', TYPE, KEY, LOCATION, NUMEL)");
    const StorageType* type = storage_type(pid->items[1]->s);
    if (type == nullptr) fail(cat("a storage of type ", printable(pid->items[1]->s), " (not a tensor storage)"));
    if (pid->items[4]->i < 0) fail(cat("a storage of ", pid->items[4]->i, " elements"));
    Value* v = make(Value::Storage);
    v->tensor.dtype = type->dtype;
    v->tensor.element_size = type->bytes;
    v->storage_key = pid->items[2]->s;
    v->storage_numel = pid->items[4]->i;
    return v;
  }

  std::vector<int64_t> int_tuple(Value* v, const char* what) {
    if (v->kind != Value::Tuple) fail(cat("a tensor's ", what, " is not a tuple"));
    std::vector<int64_t> out;
    for (Value* item : v->items) {
      if (item->kind != Value::Int || item->i < 0) fail(cat("a tensor's ", what, " holds something other than an integer >= 0"));
      out.push_back(item->i);
    }
    return out;
  }

  void reduce() {
    Value* args = pop();
    Value* callable = pop();
    if (callable->kind != Value::Global || args->kind != Value::Tuple) fail("REDUCE of something not a known function");
    const std::string& f = callable->s;
    if (f == "collections.OrderedDict") {
      if (!args->items.empty()) fail("OrderedDict called with arguments");
      push(make(Value::Dict));
    } else if (f == "torch._utils._rebuild_parameter") {
      if (args->items.size() < 2 || args->items[0]->kind != Value::TensorRef) fail("_rebuild_parameter without a tensor");
      push(args->items[0]);
    } else if (f == "torch._utils._rebuild_tensor_v2") {
      if (args->items.size() < 4 || args->items[0]->kind != Value::Storage || args->items[1]->kind != Value::Int)
        fail("_rebuild_tensor_v2 without (storage, offset, size, stride, ...)");
      const Value* storage = args->items[0];
      Value* t = make(Value::TensorRef);
      t->tensor = storage->tensor;
      t->storage_key = storage->storage_key;
      t->storage_numel = storage->storage_numel;
      t->tensor.offset = args->items[1]->i;
      t->tensor.shape = int_tuple(args->items[2], "size");
      t->tensor.strides = int_tuple(args->items[3], "stride");
      const TorchTensorEntry& e = t->tensor;
      if (e.shape.size() != e.strides.size()) fail("a tensor with sizes and strides of different lengths");
      if (e.shape.size() > static_cast<size_t>(Shape::kMaxDims))
        fail(cat("a tensor of ", e.shape.size(), " dims (at most ", Shape::kMaxDims, " are read)"));
      if (e.offset < 0) fail("a tensor at a negative offset");
      // Every viewed element inside the storage: offset + sum (size - 1) stride < numel, unless empty.
      const int64_t numel = storage->storage_numel;
      bool empty = false;
      uint64_t last = static_cast<uint64_t>(e.offset), count = 1;
      for (size_t d = 0; d < e.shape.size(); ++d) {
        if (e.shape[d] == 0) empty = true;
        if (e.shape[d] > 0) {
          const uint64_t span = static_cast<uint64_t>(e.shape[d] - 1);
          const uint64_t stride = static_cast<uint64_t>(e.strides[d]);
          if (stride != 0 && span > (std::numeric_limits<uint64_t>::max() / 2 - last) / stride)
            fail("a tensor's sizes and strides overflow");
          last += span * stride;
          if (static_cast<uint64_t>(e.shape[d]) > (uint64_t(1) << 40) / count) fail("a tensor of too many elements");
          count *= static_cast<uint64_t>(e.shape[d]);
        }
      }
      if (!empty && last >= static_cast<uint64_t>(numel))
        fail(cat("a tensor of sizes ", shape_text(e.shape), " views elements past its storage's ", numel));
      // More elements than the storage holds: views that overlap (a stride of 0), which a state dict
      // does not hold, and which would make a tiny file allocate without bound.
      if (!empty && count > static_cast<uint64_t>(numel))
        fail(cat("a tensor of sizes ", shape_text(e.shape), " views its storage's ", numel,
                 " elements more than once (overlapping strides are not read)"));
      push(t);
    } else {
      fail(cat(printable(f), " called (it is a type, not a function)"));
    }
  }
  static std::string shape_text(const std::vector<int64_t>& shape) {
    std::string out = "[";
    for (size_t d = 0; d < shape.size(); ++d) out += (d ? ", " : "") + std::to_string(shape[d]);
    return out + "]";
  }

  // BUILD: a dict's state (OrderedDict's __dict__, as state_dict's _metadata) and a tensor's are dropped.
  void build() {
    Value* state = pop();
    Value* target = top();
    if (target->kind != Value::Dict && target->kind != Value::TensorRef)
      fail("BUILD of something that is not a dict or a tensor");
    (void)state;
  }

  Value* finish() {
    if (stack_.size() != 1 || !marks_.empty()) fail("the pickle ends with other than one object on its stack");
    return stack_.back();
  }

  const uint8_t* p_;
  const uint8_t* end_;
  size_t consumed_ = 0;
  std::string where_;
  std::deque<Value> arena_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

}  // namespace

TorchFile TorchFile::open(const std::string& path) {
  TorchFile f;
  const std::string head = read_file_head(path, sizeof kLegacyMagic);
  if (head.size() == sizeof kLegacyMagic && std::memcmp(head.data(), kLegacyMagic, sizeof kLegacyMagic) == 0)
    throw DataError(cat(path, ": torch.save's legacy format (PyTorch before 1.6, or _use_new_zipfile_serialization="
                              "False) is not read: load it in Python and torch.save it again"));
  f.archive_ = std::make_unique<ZipArchive>(
      ZipArchive::open(path, "a PyTorch .pt file (a zip archive, as torch.save writes since PyTorch 1.6)"));
  // The record folder: the one PREFIX of PREFIX/data.pkl.
  const ZipEntry* pickle = nullptr;
  std::map<std::string, const ZipEntry*> by_name;
  for (const ZipEntry& e : f.archive_->entries()) {
    by_name[e.name] = &e;
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      if (pickle != nullptr) throw DataError(cat(path, ": two data.pkl records in the archive"));
      pickle = &e;
    }
  }
  if (pickle == nullptr)
    throw DataError(cat(path, ": a zip archive without PREFIX/data.pkl: not a torch.save file"));
  const std::string prefix = pickle->name.substr(0, pickle->name.size() - std::string("data.pkl").size());
  if (auto it = by_name.find(prefix + "byteorder"); it != by_name.end()) {
    const uint8_t* order = f.archive_->stored_bytes(*it->second);
    if (std::string(reinterpret_cast<const char*>(order), it->second->size) != "little")
      throw DataError(cat(path, ": saved on a big-endian machine (byteorder is not \"little\"): not read"));
  }
  if (pickle->size > kMaxPickleBytes) throw DataError(cat(path, ": data.pkl of ", pickle->size, " bytes is too large"));
  const uint8_t* code = f.archive_->stored_bytes(*pickle);
  Unpickler machine(code, static_cast<size_t>(pickle->size), cat(path, ": data.pkl"));
  const Value* root = machine.run();
  if (root->kind != Value::Dict)
    throw DataError(cat(path, ": the saved object is not a dict (a state dict, as torch.save(module.state_dict()) "
                          "writes, is read)"));

  // Names: the root's keys; a dict's under its key, one level down.
  auto key_text = [&](const Value* key) -> std::string {
    if (key->kind == Value::String) return key->s;
    if (key->kind == Value::Int) return std::to_string(key->i);
    throw DataError(cat(path, ": a dict key that is not a string or an integer"));
  };
  size_t visited = 0;  // every pair of the root and its dicts (a dict can be reached from many keys)
  auto add = [&](const std::string& name, const Value* value) {
    if (++visited > kMaxNames) throw DataError(cat(path, ": more than ", kMaxNames, " dict entries to name"));
    if (value->kind == Value::TensorRef) {
      TorchTensorEntry e = value->tensor;
      const auto it = by_name.find(prefix + "data/" + value->storage_key);
      if (it == by_name.end())
        throw DataError(cat(path, ": tensor ", printable(name), ": its storage data/", printable(value->storage_key),
                            " is not in the archive"));
      e.storage = it->second;
      // The storage's entry: stored, with exactly the elements the persistent id declares.
      const std::string where = cat(path, ": tensor ", printable(name), ": its storage data/", printable(value->storage_key));
      if (e.storage->method != 0) throw DataError(cat(where, " is compressed (torch.save stores storages)"));
      if (e.storage->size / e.element_size != static_cast<uint64_t>(value->storage_numel) ||
          e.storage->size % e.element_size != 0)
        throw DataError(cat(where, " holds ", e.storage->size, " bytes, not ", value->storage_numel, " elements of ",
                            e.dtype));
      f.tensors_[name] = e;
    } else if (value->kind == Value::Int || value->kind == Value::Bool) {
      f.scalars_[name] = static_cast<double>(value->i);
    } else if (value->kind == Value::Float) {
      f.scalars_[name] = value->f;
    } else if (value->kind == Value::String) {
      f.strings_[name] = value->s;
    }
  };
  for (const auto& [key, value] : root->pairs) {
    const std::string name = key_text(key);
    if (value->kind == Value::Dict) {
      for (const auto& [inner_key, inner] : value->pairs) add(name + "." + key_text(inner_key), inner);
    } else {
      add(name, value);
    }
  }
  return f;
}

std::vector<std::string> TorchFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : tensors_) out.push_back(name);
  return out;
}

const TorchTensorEntry& TorchFile::entry(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw DataError(cat(path(), ": no tensor '", printable(name), "'"));
  return it->second;
}

std::vector<uint8_t> TorchFile::gather(const TorchTensorEntry& e) const {
  const uint8_t* storage = archive_->stored_bytes(*e.storage);
  int64_t count = 1;
  for (int64_t s : e.shape) count *= s;
  std::vector<uint8_t> out(static_cast<size_t>(count) * e.element_size);
  if (count == 0) return out;
  const size_t dims = e.shape.size();
  std::vector<int64_t> index(dims, 0);
  for (int64_t n = 0; n < count; ++n) {
    int64_t at = e.offset;
    for (size_t d = 0; d < dims; ++d) at += index[d] * e.strides[d];
    std::memcpy(out.data() + static_cast<size_t>(n) * e.element_size, storage + static_cast<size_t>(at) * e.element_size,
                e.element_size);
    for (size_t d = dims; d-- > 0;) {
      if (++index[d] < e.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

Tensor TorchFile::read_f32(const std::string& name) const {
  const TorchTensorEntry& e = entry(name);
  if (!is_float_dtype(e.dtype))
    throw DataError(cat(path(), ": tensor ", printable(name), " holds ", e.dtype, ", not floating point"));
  Shape shape = e.shape.empty() ? Shape{1} : Shape::from_vector(e.shape);
  Tensor out = Tensor::empty(shape, DType::F32);
  const std::vector<uint8_t> elements = gather(e);
  convert_to_f32(elements.data(), e.dtype, static_cast<size_t>(out.numel()), out.data<float>(),
                 cat(path(), ": tensor ", printable(name)));
  return out;
}

std::vector<int64_t> TorchFile::read_integers(const std::string& name) const {
  const TorchTensorEntry& e = entry(name);
  if (is_float_dtype(e.dtype))
    throw DataError(cat(path(), ": tensor ", printable(name), " holds ", e.dtype, ", not integers"));
  const std::vector<uint8_t> elements = gather(e);
  std::vector<int64_t> out(elements.size() / e.element_size);
  for (size_t k = 0; k < out.size(); ++k) {
    const uint8_t* b = elements.data() + k * e.element_size;
    if (e.dtype == "I64") {
      std::memcpy(&out[k], b, 8);
    } else if (e.dtype == "I32") {
      int32_t v;
      std::memcpy(&v, b, 4);
      out[k] = v;
    } else if (e.dtype == "I16") {
      int16_t v;
      std::memcpy(&v, b, 2);
      out[k] = v;
    } else if (e.dtype == "I8") {
      out[k] = static_cast<int8_t>(*b);
    } else {
      out[k] = *b;  // U8, BOOL
    }
  }
  return out;
}

}  // namespace sae
