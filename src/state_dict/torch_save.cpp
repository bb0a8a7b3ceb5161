// torch.save's zip archive, both directions. LibTorch's own unpickler (torch::pickle_load) cannot
// be used: up to at least LibTorch 2.x it turns a collections.OrderedDict (what
// model.state_dict() returns) into None and then fails on its items, and it stops on the first
// unknown class without saying where. Here the archive's records are read with LibTorch's
// PyTorchStreamReader and the pickle by pickle.cpp; stored records are used in place through a
// mapping of the file, found through the zip's central directory.
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>

#include "common/text.hpp"
#include "state_dict/pickle.hpp"
#include "state_dict/state_dict_file_internal.hpp"

namespace c10dtest::detail {
namespace {

// The archive's bytes, read with pread; a read beyond the end is an error, not a crash.
class BoundedFileAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BoundedFileAdapter(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw FileFormatError(path + ": cannot open: " + std::strerror(errno));
    struct stat s {};
    if (::fstat(fd_, &s) != 0) {
      ::close(fd_);
      throw FileFormatError(path + ": cannot stat: " + std::strerror(errno));
    }
    size_ = static_cast<std::size_t>(s.st_size);
  }
  ~BoundedFileAdapter() override { ::close(fd_); }
  std::size_t size() const override { return size_; }
  std::size_t read(std::uint64_t pos, void* buf, std::size_t n, const char* = "") const override {
    if (pos > size_ || n > size_ - pos) throw std::runtime_error("a read beyond the end of the file");
    std::size_t done = 0;
    while (done < n) {
      const ssize_t got = ::pread(fd_, static_cast<char*>(buf) + done, n - done,
                                  static_cast<off_t>(pos + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) throw std::runtime_error("the file shrank while it was read");
      done += static_cast<std::size_t>(got);
    }
    return n;
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::size_t size_ = 0;
};

// ----------------------------------------------------------------------------------------------
// Where each record's bytes lie in the archive, from the zip's central directory (ZIP64 too), so
// that stored (uncompressed) records can be used in place. Every field is bounds-checked; an
// archive this cannot follow is simply read through PyTorchStreamReader.

struct ZipRecord {
  std::uint64_t offset = 0;  // of the data, in the file
  std::uint64_t size = 0;    // compressed size (== size for a stored record)
  std::uint16_t method = 0;  // 0: stored
};

class ZipDirectory {
 public:
  // Empty when the directory cannot be followed.
  ZipDirectory(const char* data, std::uint64_t size) : d_(data), n_(size) {
    try {
      read();
    } catch (const std::out_of_range&) {
      records_.clear();
    }
  }
  // The record whose name is `suffix` after one leading directory ("archive/data/0").
  const ZipRecord* find(const std::string& suffix) const {
    auto it = records_.find(suffix);
    return it == records_.end() ? nullptr : &it->second;
  }

 private:
  std::uint64_t u(std::uint64_t at, int bytes) const {
    if (at > n_ || static_cast<std::uint64_t>(bytes) > n_ - at) throw std::out_of_range("zip");
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(d_[at + i]);
    return v;
  }
  void read() {
    if (n_ < 22) return;
    // End of central directory: the last signature within the last 64 KiB + 22 bytes.
    std::uint64_t eocd = n_ - 22;
    const std::uint64_t lowest = n_ > 22 + 65535 ? n_ - 22 - 65535 : 0;
    while (u(eocd, 4) != 0x06054b50) {
      if (eocd == lowest) return;
      --eocd;
    }
    std::uint64_t entries = u(eocd + 10, 2);
    std::uint64_t cd = u(eocd + 16, 4);
    if (entries == 0xffff || cd == 0xffffffff) {
      if (eocd < 20 || u(eocd - 20, 4) != 0x07064b50) return;
      const std::uint64_t z = u(eocd - 20 + 8, 8);
      if (u(z, 4) != 0x06064b50) return;
      entries = u(z + 32, 8);
      cd = u(z + 48, 8);
    }
    std::uint64_t at = cd;
    for (std::uint64_t i = 0; i < entries; ++i) {
      if (u(at, 4) != 0x02014b50) throw std::out_of_range("zip");
      ZipRecord r;
      r.method = static_cast<std::uint16_t>(u(at + 10, 2));
      std::uint64_t csize = u(at + 20, 4);
      std::uint64_t usize = u(at + 24, 4);
      const std::uint64_t name_len = u(at + 28, 2);
      const std::uint64_t extra_len = u(at + 30, 2);
      const std::uint64_t comment_len = u(at + 32, 2);
      std::uint64_t local = u(at + 42, 4);
      if (at + 46 + name_len > n_) throw std::out_of_range("zip");
      const std::string name(d_ + at + 46, static_cast<std::size_t>(name_len));
      // ZIP64 extra field: the 64-bit values of the fields set to 0xffffffff, in this order.
      std::uint64_t e = at + 46 + name_len;
      const std::uint64_t e_end = e + extra_len;
      while (e + 4 <= e_end) {
        const std::uint64_t id = u(e, 2);
        const std::uint64_t len = u(e + 2, 2);
        if (id == 0x0001) {
          std::uint64_t f = e + 4;
          if (usize == 0xffffffff) { usize = u(f, 8); f += 8; }
          if (csize == 0xffffffff) { csize = u(f, 8); f += 8; }
          if (local == 0xffffffff) { local = u(f, 8); }
        }
        e += 4 + len;
      }
      if (u(local, 4) != 0x04034b50) throw std::out_of_range("zip");
      r.offset = local + 30 + u(local + 26, 2) + u(local + 28, 2);
      r.size = csize;
      if (r.method != 0 || csize != usize || r.offset > n_ || r.size > n_ - r.offset) {
        r.method = 0xffff;  // not usable in place
      }
      const auto slash = name.find('/');
      if (slash != std::string::npos) records_[name.substr(slash + 1)] = r;
      at += 46 + name_len + extra_len + comment_len;
    }
  }

  const char* d_;
  std::uint64_t n_;
  std::map<std::string, ZipRecord> records_;
};

}  // namespace

StateDict read_torch_save(const std::string& file, bool map) {
  auto fail = [&](const std::string& what) { return FileFormatError(file + ": " + what); };
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(
        std::make_shared<BoundedFileAdapter>(file));
  } catch (const FileFormatError&) {
    throw;
  } catch (const std::exception& e) {
    throw fail("not a torch.save archive: " + first_line(e.what()));
  }
  std::string pickle;
  try {
    if (!reader->hasRecord("data.pkl")) throw fail("a zip archive without data.pkl: not torch.save's");
    if (reader->hasRecord("byteorder")) {
      auto [order, n] = reader->getRecord("byteorder");
      const std::string text(static_cast<const char*>(order.get()), n);
      if (text != "little") {
        throw fail("written with byte order '" + text.substr(0, 16) +
                   "': only little-endian archives are read");
      }
    }
    auto [data, size] = reader->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
  } catch (const FileFormatError&) {
    throw;
  } catch (const std::exception& e) {
    throw fail("cannot read data.pkl: " + first_line(e.what()));
  }
  // Stored records are used in place, through a copy-on-write mapping of the file.
  std::shared_ptr<FileMapping> mapping;
  std::unique_ptr<ZipDirectory> directory;
  if (map) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
    struct stat s {};
    const bool ok = ::fstat(fd, &s) == 0;
    try {
      if (ok) mapping = map_file(file, fd, static_cast<std::uint64_t>(s.st_size));
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    if (mapping && mapping->data) directory = std::make_unique<ZipDirectory>(mapping->data, mapping->size);
  }
  auto load_storage = [&](const std::string& key, c10::ScalarType dtype, std::int64_t numel) {
    const std::string name = "data/" + key;
    const auto item = static_cast<std::int64_t>(c10::elementSize(dtype));
    std::int64_t need = 0;
    if (__builtin_mul_overflow(numel, item, &need)) throw pickle::PickleError("storage " + key + " is too large");
    if (numel == 0) return at::empty({0}, at::TensorOptions().dtype(dtype));
    if (directory) {
      const ZipRecord* r = directory->find(name);
      // The reader agrees on where the record's data starts (it read the same local header).
      // (The reader throws c10::Error on a damaged entry: that is this archive's error.)
      bool agree = false;
      if (r && r->method == 0 && r->offset % static_cast<std::uint64_t>(item) == 0 &&
          r->size >= static_cast<std::uint64_t>(need)) {
        try {
          agree = reader->hasRecord(name) && reader->getRecordOffset(name) == r->offset;
        } catch (const std::exception& e) {
          throw pickle::PickleError("cannot read record " + name + ": " + first_line(e.what()));
        }
      }
      if (agree) {
        return at::from_blob(mapping->data + r->offset, {numel}, [keep = mapping](void*) {},
                             at::TensorOptions().dtype(dtype));
      }
    }
    std::tuple<at::DataPtr, std::size_t> record;
    try {
      if (!reader->hasRecord(name)) throw pickle::PickleError("storage " + key + " has no record " + name);
      record = reader->getRecord(name);
    } catch (const pickle::PickleError&) {
      throw;
    } catch (const std::exception& e) {
      throw pickle::PickleError("cannot read record " + name + ": " + first_line(e.what()));
    }
    if (static_cast<std::int64_t>(std::get<1>(record)) < need) {
      throw pickle::PickleError("storage " + key + " holds " + std::to_string(std::get<1>(record)) +
                        " bytes, fewer than its " + std::to_string(numel) + " elements of " +
                        c10::toString(dtype) + " need");
    }
    auto owner = std::make_shared<at::DataPtr>(std::move(std::get<0>(record)));
    void* p = owner->get();
    if (reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(item) != 0) {
      at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(dtype));
      std::memcpy(t.data_ptr(), p, static_cast<std::size_t>(need));
      return t;
    }
    return at::from_blob(p, {numel}, [owner](void*) {}, at::TensorOptions().dtype(dtype));
  };
  try {
    return pickle::read(pickle.data(), pickle.size(), load_storage);
  } catch (const pickle::PickleError& e) {
    throw fail(std::string("data.pkl: ") + e.what());
  } catch (const FileFormatError& e) {
    throw fail(e.what());
  }
}

std::vector<char> write_torch_save(const StateDict& sd, const WriteFileOptions& options) {
  std::vector<at::Tensor> storages;
  const std::string pickled = pickle::write(sd, options.integer_keys, &storages);
  std::vector<char> out;
  caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, std::size_t n) {
    const char* c = static_cast<const char*>(data);
    out.insert(out.end(), c, c + n);
    return n;
  });
  writer.writeRecord("data.pkl", pickled.data(), pickled.size());
  writer.writeRecord("byteorder", "little", 6);
  for (std::size_t i = 0; i < storages.size(); ++i) {
    const at::Tensor& t = storages[i];
    writer.writeRecord("data/" + std::to_string(i), t.data_ptr(),
                       static_cast<std::size_t>(t.numel()) * t.element_size());
  }
  writer.writeEndOfFile();
  return out;
}

}  // namespace c10dtest::detail
