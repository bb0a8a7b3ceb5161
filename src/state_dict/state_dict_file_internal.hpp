// Private: the torch.save half of state_dict_file.hpp (torch_save.cpp), kept apart because
// LibTorch's pickler headers are heavy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "c10dtest/state_dict_file.hpp"

namespace c10dtest::detail {

// safetensors metadata entries of c10dtest's own: plain values (JSON, types kept) and the
// global place of each per-rank piece.
inline constexpr const char* kValuesKey = "c10dtest.values";
inline constexpr const char* kShardsKey = "c10dtest.shards";

// A private, copy-on-write mapping of a whole file (PROT_READ | PROT_WRITE, MAP_PRIVATE: tensors
// over it can be written to, the file never changes). Unmapped when the last owner goes.
struct FileMapping {
  char* data = nullptr;
  std::uint64_t size = 0;
  FileMapping() = default;
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  ~FileMapping();
};
// FileFormatError naming `path` when the mapping fails. An empty file gives an empty mapping.
std::shared_ptr<FileMapping> map_file(const std::string& path, int fd, std::uint64_t size);

// The object a torch.save zip archive holds, as a StateDict (a dict at the top). FileFormatError
// naming `file` for anything else. With `map`, storages stored uncompressed (as PyTorch writes
// them: aligned to 64 bytes) point into a mapping of the file; others are read into memory.
StateDict read_torch_save(const std::string& file, bool map);
// The bytes of a torch.save zip archive holding `sd` as a dict. FileFormatError names a value
// that cannot be written (without the file's name: the caller adds it).
std::vector<char> write_torch_save(const StateDict& sd, const WriteFileOptions& options);

}  // namespace c10dtest::detail
