// read_state_dict / write_state_dict: format detection, safetensors (memory-mapped), and the
// shared write path (temporary file, renamed at the end). torch.save is in torch_save.cpp.
#include "c10dtest/state_dict_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <random>

#include "common/text.hpp"
#include "state_dict/metadata_json.hpp"
#include "state_dict/safetensors.hpp"
#include "state_dict/state_dict_file_internal.hpp"

namespace c10dtest {
namespace {

using Json = nlohmann::ordered_json;
namespace st = detail::safetensors;

using detail::kShardsKey;
using detail::kValuesKey;

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw FileFormatError(file + ": " + what);
}

std::string errno_text(int err) { return std::strerror(err); }

// A read-only file, open until destroyed.
struct File {
  int fd = -1;
  std::uint64_t size = 0;
  File(const std::string& path) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, "cannot open: " + errno_text(errno));
    struct stat s {};
    if (::fstat(fd, &s) != 0) {
      const int err = errno;
      ::close(fd);
      fail(path, "cannot stat: " + errno_text(err));
    }
    if (!S_ISREG(s.st_mode)) {
      ::close(fd);
      fail(path, "not a regular file");
    }
    size = static_cast<std::uint64_t>(s.st_size);
  }
  ~File() {
    if (fd >= 0) ::close(fd);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  // Reads exactly n bytes at `offset` (fewer only if the file shrank: an error).
  void read_at(const std::string& path, std::uint64_t offset, char* out, std::uint64_t n) const {
    while (n > 0) {
      const ssize_t got = ::pread(fd, out, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(path, "read failed: " + errno_text(errno));
      if (got == 0) fail(path, "truncated while reading");
      out += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::uint64_t>(got);
    }
  }
};


// ----------------------------------------------------------------------------------------------
// Non-tensor values in safetensors metadata: {"path": {"int": 5}, ...}, types kept.

Json encode_value(const StateValue& v, const std::string& path) {
  if (v.is<StateNone>()) return Json{{"none", nullptr}};
  if (v.is<bool>()) return Json{{"bool", v.as<bool>()}};
  if (v.is<std::int64_t>()) return Json{{"int", v.as<std::int64_t>()}};
  if (v.is<double>()) {
    const double d = v.as<double>();
    if (std::isnan(d)) return Json{{"float", "nan"}};
    if (std::isinf(d)) return Json{{"float", d > 0 ? "inf" : "-inf"}};
    return Json{{"float", d}};
  }
  if (v.is<std::string>()) return Json{{"str", v.as<std::string>()}};
  if (v.is<StateList>()) {
    Json items = Json::array();
    for (const auto& e : v.as<StateList>()) items.push_back(encode_value(e, path));
    return Json{{"list", items}};
  }
  if (v.is<StateDict>() && v.as<StateDict>().empty()) return Json{{"dict", Json::object()}};
  throw FileFormatError(path + ": a " + std::string(v.type_name()) +
                        " cannot be kept in safetensors metadata");
}

StateValue decode_value(const std::string& file, const std::string& path, const Json& j,
                        int depth = 0) {
  auto bad = [&]() -> StateValue {
    fail(file, std::string(kValuesKey) + ": the value of " + path + " is not one c10dtest wrote: " +
                   j.dump().substr(0, 120));
  };
  if (depth > 100) {  // (dump() recurses: nothing this deep is printed)
    fail(file, std::string(kValuesKey) + ": the value of " + path +
                   " is not one c10dtest wrote: nested deeper than 100 levels");
  }
  if (!j.is_object() || j.size() != 1) return bad();
  const std::string type = j.begin().key();
  const Json& value = j.begin().value();
  if (type == "none" && value.is_null()) return StateNone{};
  if (type == "bool" && value.is_boolean()) return value.get<bool>();
  if (type == "int" && value.is_number_integer()) return value.get<std::int64_t>();
  if (type == "float" && value.is_number()) return value.get<double>();
  if (type == "float" && value.is_string()) {
    const auto s = value.get<std::string>();
    if (s == "nan") return std::nan("");
    if (s == "inf") return HUGE_VAL;
    if (s == "-inf") return -HUGE_VAL;
  }
  if (type == "str" && value.is_string()) return value.get<std::string>();
  if (type == "list" && value.is_array()) {
    StateList items;
    for (const auto& e : value) items.push_back(decode_value(file, path, e, depth + 1));
    return items;
  }
  if (type == "dict" && value.is_object() && value.empty()) return StateDict{};
  return bad();
}

bool plain(const StateValue& v) {
  if (v.is_tensor_like()) return false;
  if (v.is<StateDict>()) return v.as<StateDict>().empty();
  if (v.is<StateList>()) {
    for (const auto& e : v.as<StateList>()) {
      if (!plain(e) || e.is<StateDict>()) return false;
    }
  }
  return true;
}

// ----------------------------------------------------------------------------------------------
// Reading safetensors.

StateDictFile read_safetensors(const std::string& path, const File& file,
                               const ReadFileOptions& options) {
  StateDictFile out;
  out.format = FileFormat::kSafetensors;
  char length[8] = {};
  if (file.size >= 8) file.read_at(path, 0, length, 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(length[i]);
  // parse() checks n against the file and the limit before the header is read.
  std::string prefix(length, 8);
  if (file.size >= 8 && n <= file.size - 8 &&
      (options.max_header_bytes < 0 || n <= static_cast<std::uint64_t>(options.max_header_bytes))) {
    prefix.resize(8 + n);
    file.read_at(path, 8, prefix.data() + 8, n);
  }
  const st::Header h =
      st::parse(path, prefix.data(), prefix.size(), file.size, options.max_header_bytes);
  out.metadata = h.metadata;

  std::shared_ptr<detail::FileMapping> mapping;
  if (options.map && file.size > h.data_start) mapping = detail::map_file(path, file.fd, file.size);
  for (const auto& e : h.tensors) {
    const auto options_t = at::TensorOptions().dtype(e.dtype);
    const std::uint64_t bytes = e.end - e.begin;
    const std::uint64_t at_byte = h.data_start + e.begin;
    at::Tensor t;
    if (mapping && bytes > 0 && at_byte % c10::elementSize(e.dtype) == 0) {
      char* p = mapping->data + at_byte;
      t = at::from_blob(p, e.shape, [keep = mapping](void*) {}, options_t);
    } else {
      t = at::empty(e.shape, options_t);
      if (bytes > 0) {
        if (mapping) {
          std::memcpy(t.data_ptr(), mapping->data + at_byte, bytes);
        } else {
          file.read_at(path, at_byte, static_cast<char*>(t.data_ptr()), bytes);
        }
      }
    }
    out.state_dict.insert(e.name, t);
  }
  if (options.restore_values) {
    const Json j = detail::metadata_object(path, h.metadata, kValuesKey);
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (out.state_dict.contains(it.key())) {
        fail(path, std::string(kValuesKey) + " names " + it.key() + ", which is also a tensor");
      }
      out.state_dict.insert(it.key(), decode_value(path, it.key(), it.value()));
    }
  }
  return out;
}

// ----------------------------------------------------------------------------------------------
// Writing safetensors.

struct Piece {
  std::string name;  // in the file
  at::Tensor tensor;  // CPU, contiguous
  std::string dtype;
};

void collect(const StateValue& v, const std::string& path, std::vector<Piece>& pieces,
             Json& values, Json& shards) {
  auto add = [&](const std::string& name, const at::Tensor& t) {
    if (!t.defined()) throw FileFormatError(path + ": the tensor is undefined");
    if (t.device().type() == c10::DeviceType::Meta) {
      throw FileFormatError(path + ": the tensor is on the meta device: it holds no values");
    }
    Piece p{name, t.detach().cpu().contiguous(), st::dtype_name(t.scalar_type(), path)};
    pieces.push_back(std::move(p));
  };
  if (v.is<at::Tensor>()) {
    add(path, v.as<at::Tensor>());
  } else if (v.is<DTensor>()) {
    const DTensor& d = v.as<DTensor>();
    for (std::size_t i = 0; i < d.placements().size(); ++i) {
      if (std::holds_alternative<Partial>(d.placements()[i])) {
        throw FileFormatError(path + ": " + d.describe() +
                              " has a Partial placement: no piece of it is the tensor's values "
                              "(reduce it first: reduce_partials() or gather_state_dict)");
      }
    }
    const int me = d.mesh()->my_rank();
    if (!d.mesh()->contains(me)) return;  // a rank outside the mesh holds none of it
    add(path, d.local());
    shards[path] = Json{{"key", path},
                        {"global_shape", d.global_shape()},
                        {"offsets", d.global_offset_of(me)},
                        {"placements", to_string(d.placements())}};
  } else if (v.is<ShardedTensor>()) {
    const ShardedTensor& s = v.as<ShardedTensor>();
    const auto& local = s.local_shards();
    if (local.empty()) {
      // No piece here: an empty one keeps the key, its global shape and dtype in this file
      // (else a tensor whose pieces all are empty, such as [0, 3], would vanish from the files).
      const std::vector<std::int64_t> none(s.metadata().global_shape.size(), 0);
      add(path, at::empty(none, at::TensorOptions().dtype(s.metadata().dtype)));
      shards[path] = Json{{"key", path},
                          {"global_shape", s.metadata().global_shape},
                          {"offsets", none}};
      return;
    }
    for (std::size_t i = 0; i < local.size(); ++i) {
      const std::string name = local.size() == 1 ? path : path + "#" + std::to_string(i);
      add(name, local[i].tensor);
      shards[name] = Json{{"key", path},
                          {"global_shape", s.metadata().global_shape},
                          {"offsets", local[i].metadata.offsets}};
    }
  } else if (plain(v)) {
    values[path] = encode_value(v, path);
  } else if (v.is<StateDict>()) {
    const StateDict& d = v.as<StateDict>();
    for (std::size_t i = 0; i < d.size(); ++i) {
      collect(d.value(i), path.empty() ? d.keys()[i] : path + "." + d.keys()[i], pieces, values,
              shards);
    }
  } else {
    const StateList& l = v.as<StateList>();
    for (std::size_t i = 0; i < l.size(); ++i) {
      collect(l[i], path + "." + std::to_string(i), pieces, values, shards);
    }
  }
}

void write_safetensors(const std::string& path, const StateDict& sd,
                       const WriteFileOptions& options, std::ostream& out) {
  std::vector<Piece> pieces;
  Json values = Json::object();
  Json shards = Json::object();
  for (std::size_t i = 0; i < sd.size(); ++i) {
    collect(sd.value(i), sd.keys()[i], pieces, values, shards);
  }
  Json header = Json::object();
  Json metadata = Json::object();
  for (const auto& [k, v] : options.metadata) {
    if (k == kValuesKey || k == kShardsKey) {
      fail(path, "metadata key " + k + " is c10dtest's own (WriteFileOptions::metadata)");
    }
    metadata[k] = v;
  }
  auto dump = [&](const Json& j, const std::string& what) {
    try {
      return j.dump();
    } catch (const Json::exception& e) {
      fail(path, what + ": " + e.what());
    }
  };
  if (!values.empty()) metadata[kValuesKey] = dump(values, "a string value is not valid UTF-8");
  if (!shards.empty()) metadata[kShardsKey] = dump(shards, "a key is not valid UTF-8");
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t at = 0;
  for (const auto& p : pieces) {
    if (header.contains(p.name)) fail(path, "two values are both named '" + p.name + "'");
    const auto bytes = static_cast<std::uint64_t>(p.tensor.numel()) * p.tensor.element_size();
    header[p.name] = Json{{"dtype", p.dtype},
                          {"shape", p.tensor.sizes().vec()},
                          {"data_offsets", {at, at + bytes}}};
    at += bytes;
  }
  if (values.size() != 0) {
    for (auto it = values.begin(); it != values.end(); ++it) {
      if (header.contains(it.key())) fail(path, "two values are both named '" + it.key() + "'");
    }
  }
  std::string text = dump(header, "a key is not valid UTF-8");
  // Padded with spaces so that the data starts 8-byte aligned, as the safetensors library does.
  text.append((8 - text.size() % 8) % 8, ' ');
  char length[8];
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.write(length, 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& p : pieces) {
    const auto bytes = static_cast<std::uint64_t>(p.tensor.numel()) * p.tensor.element_size();
    out.write(static_cast<const char*>(p.tensor.data_ptr()), static_cast<std::streamsize>(bytes));
  }
}

bool is_zip(const File& file, const std::string& path) {
  if (file.size < 4) return false;
  char magic[4];
  file.read_at(path, 0, magic, 4);
  return std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

// torch.save's legacy format starts with a pickled magic number: PROTO 2, LONG1 of 10 bytes. (As
// a safetensors header length these bytes would claim more than 170 MB.)
bool is_legacy_pickle(const File& file, const std::string& path) {
  if (file.size < 4) return false;
  char magic[4];
  file.read_at(path, 0, magic, 4);
  return std::memcmp(magic, "\x80\x02\x8a\x0a", 4) == 0;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

namespace detail {

FileMapping::~FileMapping() {
  if (data != nullptr) ::munmap(data, static_cast<std::size_t>(size));
}

std::shared_ptr<FileMapping> map_file(const std::string& path, int fd, std::uint64_t size) {
  auto m = std::make_shared<FileMapping>();
  if (size == 0) return m;
  if (size > static_cast<std::uint64_t>(std::numeric_limits<std::size_t>::max())) {
    fail(path, "too large to map");
  }
  // MAP_NORESERVE: a large reference must not count against a strict overcommit limit; only
  // pages a tensor is written to get private copies.
  void* p = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) fail(path, "cannot map: " + errno_text(errno));
  m->data = static_cast<char*>(p);
  m->size = size;
  return m;
}

}  // namespace detail

const char* to_string(FileFormat format) {
  switch (format) {
    case FileFormat::kAuto: return "auto";
    case FileFormat::kTorchSave: return "torch.save";
    case FileFormat::kSafetensors: return "safetensors";
  }
  return "?";
}

StateDictFile read_state_dict_file(const std::string& path, const ReadFileOptions& options) {
  File file(path);
  FileFormat format = options.format;
  if (format == FileFormat::kAuto) {
    format = is_zip(file, path) ? FileFormat::kTorchSave : FileFormat::kSafetensors;
  }
  if (format == FileFormat::kTorchSave) {
    StateDictFile out;
    out.format = FileFormat::kTorchSave;
    out.state_dict = detail::read_torch_save(path, options.map);
    return out;
  }
  if (options.format == FileFormat::kAuto && is_legacy_pickle(file, path)) {
    fail(path, "a torch.save file in the format before PyTorch 1.6 (a bare pickle); save it again "
               "with torch.save(obj, path, _use_new_zipfile_serialization=True)");
  }
  return read_safetensors(path, file, options);
}

StateDict read_state_dict(const std::string& path, const ReadFileOptions& options) {
  return read_state_dict_file(path, options).state_dict;
}

void write_state_dict(const std::string& path, const StateDict& state_dict, FileFormat format,
                      const WriteFileOptions& options) {
  if (format == FileFormat::kAuto) {
    format = ends_with(path, ".safetensors") ? FileFormat::kSafetensors : FileFormat::kTorchSave;
  }
  // Everything that can fail on the values fails before the file is touched.
  std::vector<char> pickled;
  if (format == FileFormat::kTorchSave) {
    try {
      pickled = detail::write_torch_save(state_dict, options);
    } catch (const FileFormatError& e) {
      fail(path, e.what());
    }
  }
  std::random_device random;
  const std::string tmp = path + ".tmp" + std::to_string(::getpid()) + "." +
                          std::to_string(random() & 0xffffff);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(path, "cannot create " + tmp + ": " + errno_text(errno));
    try {
      if (format == FileFormat::kTorchSave) {
        out.write(pickled.data(), static_cast<std::streamsize>(pickled.size()));
      } else {
        write_safetensors(path, state_dict, options, out);
      }
    } catch (const FileFormatError& e) {
      out.close();
      std::remove(tmp.c_str());
      const std::string what = e.what();
      throw FileFormatError(what.rfind(path + ": ", 0) == 0 ? what : path + ": " + what);
    } catch (...) {
      out.close();
      std::remove(tmp.c_str());
      throw;
    }
    out.flush();
    if (!out) {
      const int err = errno;
      out.close();
      std::remove(tmp.c_str());
      fail(path, "write failed: " + errno_text(err));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    fail(path, "cannot rename " + tmp + " to it: " + errno_text(err));
  }
}

}  // namespace c10dtest
