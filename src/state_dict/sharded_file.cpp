// read_sharded_state_dict: the per-rank safetensors files of a sharded dict (write_state_dict of
// DTensors and ShardedTensors) put back together into full tensors.
#include <sys/stat.h>

#include <cstring>
#include <map>

#include "c10dtest/state_dict_file.hpp"
#include "common/text.hpp"
#include "state_dict/metadata_json.hpp"
#include "state_dict/state_dict_file_internal.hpp"

namespace c10dtest {
namespace {

using Json = nlohmann::ordered_json;
using detail::metadata_object;
using detail::shape_text;

[[noreturn]] void fail(const std::string& what) { throw FileFormatError(what); }

std::vector<std::int64_t> non_negative_ints(const std::string& file, const std::string& name,
                                            const Json& entry, const char* field) {
  const std::string where = file + ": " + detail::kShardsKey + ": the entry of '" + name + "'";
  if (!entry.contains(field) || !entry[field].is_array()) {
    fail(where + " has no \"" + field + "\" list");
  }
  std::vector<std::int64_t> out;
  for (const auto& e : entry[field]) {
    if (!e.is_number_integer() || e.get<std::int64_t>() < 0) {
      fail(where + ": \"" + field + "\" holds " + e.dump() + ", not a non-negative integer");
    }
    out.push_back(e.get<std::int64_t>());
  }
  return out;
}

// Bit for bit: replicas are copies of one value (NaN payloads and signed zeros included).
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous();
  const at::Tensor y = b.contiguous();
  return x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

struct PieceSeen {
  std::string file;
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> sizes;
};

// A key put together from pieces.
struct Assembly {
  at::Tensor full;
  at::Tensor covered;  // kBool, the same shape: which elements some piece gave
  std::vector<std::int64_t> global_shape;
  std::vector<PieceSeen> pieces;
};

bool overlaps(const PieceSeen& p, const std::vector<std::int64_t>& offsets,
              c10::IntArrayRef sizes) {
  for (std::size_t d = 0; d < offsets.size(); ++d) {
    if (p.offsets[d] + p.sizes[d] <= offsets[d] || offsets[d] + sizes[d] <= p.offsets[d]) {
      return false;
    }
  }
  return true;
}

// The bytes every file together holds: pieces must cover each key, so a global shape needing
// more than this is wrong metadata, refused before anything is allocated for it.
std::uint64_t bytes_of_files(const std::vector<std::string>& paths) {
  std::uint64_t total = 0;
  for (const auto& p : paths) {
    struct stat s {};
    if (::stat(p.c_str(), &s) == 0) total += static_cast<std::uint64_t>(s.st_size);
  }
  return total;
}

}  // namespace

StateDict read_sharded_state_dict(const std::vector<std::string>& paths,
                                  const ReadFileOptions& options) {
  if (paths.empty()) fail("read_sharded_state_dict: no files given");
  const std::uint64_t file_bytes = bytes_of_files(paths);
  StateDict out;
  std::map<std::string, Assembly> assembled;        // keys written in pieces
  std::map<std::string, std::string> whole_from;    // keys written whole: the first file
  std::map<std::string, std::string> value_json;    // plain values: their JSON in that file
  for (const auto& path : paths) {
    StateDictFile f = read_state_dict_file(path, options);
    if (f.format != FileFormat::kSafetensors) {
      fail(path + ": a " + std::string(to_string(f.format)) +
           " file holds no per-rank pieces (write_state_dict writes them as safetensors)");
    }
    const Json shards = metadata_object(path, f.metadata, detail::kShardsKey);
    const Json values = options.restore_values
                            ? metadata_object(path, f.metadata, detail::kValuesKey)
                            : Json::object();
    for (auto it = shards.begin(); it != shards.end(); ++it) {
      if (!f.state_dict.contains(it.key()) || !f.state_dict.at(it.key()).is<at::Tensor>()) {
        fail(path + ": " + detail::kShardsKey + " names '" + it.key() +
             "', which is no tensor of the file");
      }
    }
    for (std::size_t i = 0; i < f.state_dict.size(); ++i) {
      const std::string& name = f.state_dict.keys()[i];
      const StateValue& v = f.state_dict.value(i);
      const auto shard = shards.find(name);
      if (shard == shards.end()) {
        // Written whole (a plain tensor or value): every file holding it holds the same.
        if (const auto a = assembled.find(name); a != assembled.end()) {
          fail(path + ": '" + name + "' is written whole here and in pieces in " +
               a->second.pieces.front().file);
        }
        if (!out.contains(name)) {
          out.insert(name, v);
          whole_from[name] = path;
          if (values.contains(name)) value_json[name] = values[name].dump();
          continue;
        }
        const StateValue& first = out.at(name);
        const bool same =
            v.is<at::Tensor>()
                ? first.is<at::Tensor>() && same_bits(first.as<at::Tensor>(), v.as<at::Tensor>())
                : !first.is<at::Tensor>() && values.contains(name) &&
                      value_json.count(name) != 0 && values[name].dump() == value_json[name];
        if (!same) {
          fail("'" + name + "' differs between the files: " + first.summary() + " in " +
               whole_from[name] + ", " + v.summary() + " in " + path);
        }
        continue;
      }
      // A piece of a DTensor or ShardedTensor.
      const Json& entry = shard.value();
      if (!entry.is_object() || !entry.contains("key") || !entry["key"].is_string()) {
        fail(path + ": " + detail::kShardsKey + ": the entry of '" + name +
             "' is not one c10dtest wrote: " + entry.dump().substr(0, 120));
      }
      const std::string key = entry["key"].get<std::string>();
      const auto global = non_negative_ints(path, name, entry, "global_shape");
      const auto offsets = non_negative_ints(path, name, entry, "offsets");
      const at::Tensor& piece = v.as<at::Tensor>();
      const std::string what = path + ": '" + key + "': the piece '" + name + "' of shape " +
                               shape_text(piece.sizes()) + " at offsets " + shape_text(offsets);
      if (global.size() != static_cast<std::size_t>(piece.dim()) ||
          offsets.size() != global.size()) {
        fail(what + " does not fit a global shape of " + std::to_string(global.size()) +
             " dims " + shape_text(global));
      }
      for (std::size_t d = 0; d < global.size(); ++d) {
        if (offsets[d] > global[d] || piece.size(static_cast<std::int64_t>(d)) > global[d] - offsets[d]) {
          fail(what + " lies outside the global shape " + shape_text(global));
        }
      }
      if (const auto w = whole_from.find(key); w != whole_from.end()) {
        fail(path + ": '" + key + "' is written in pieces here and whole in " + w->second);
      }
      auto a = assembled.find(key);
      if (a == assembled.end()) {
        std::uint64_t bytes = piece.element_size();
        for (const auto n : global) {
          if (__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(n), &bytes)) {
            bytes = UINT64_MAX;
            break;
          }
        }
        if (bytes > file_bytes) {
          fail(what + ": the global shape " + shape_text(global) + " needs " +
               std::to_string(bytes) + " bytes, more than all " + std::to_string(paths.size()) +
               " files hold (" + std::to_string(file_bytes) + "): files are missing or the metadata is wrong");
        }
        Assembly fresh;
        fresh.full = at::empty(global, piece.options());
        fresh.covered = at::zeros(global, at::kBool);
        fresh.global_shape = global;
        out.insert(key, fresh.full);
        a = assembled.emplace(key, std::move(fresh)).first;
      } else if (a->second.global_shape != global ||
                 a->second.full.scalar_type() != piece.scalar_type()) {
        fail(what + " is a piece of a " + std::string(c10::toString(piece.scalar_type())) + " " +
             shape_text(global) + ", but " + a->second.pieces.front().file + " has pieces of a " +
             c10::toString(a->second.full.scalar_type()) + " " + shape_text(a->second.global_shape));
      }
      Assembly& whole = a->second;
      at::Tensor region = whole.full;
      at::Tensor covered = whole.covered;
      for (std::size_t d = 0; d < global.size(); ++d) {
        const auto dim = static_cast<std::int64_t>(d);
        region = region.narrow(dim, offsets[d], piece.size(dim));
        covered = covered.narrow(dim, offsets[d], piece.size(dim));
      }
      if (piece.numel() > 0 && covered.any().item<bool>()) {
        // Replicas (or any overlap) must agree where they meet.
        const bool same = covered.all().item<bool>()
                              ? same_bits(region, piece)
                              : same_bits(region.masked_select(covered), piece.masked_select(covered));
        if (!same) {
          std::string other = "an earlier file";
          for (const auto& p : whole.pieces) {
            if (overlaps(p, offsets, piece.sizes())) {
              other = p.file + " (offsets " + shape_text(p.offsets) + ", shape " +
                      shape_text(p.sizes) + ")";
              break;
            }
          }
          fail(what + " differs from the overlapping piece in " + other +
               ": replicas must hold the same values");
        }
      }
      region.copy_(piece);
      covered.fill_(true);
      whole.pieces.push_back({path, offsets, piece.sizes().vec()});
    }
  }
  for (const auto& [key, whole] : assembled) {
    const std::int64_t have = whole.covered.sum().item<std::int64_t>();
    if (have == whole.covered.numel()) continue;
    const at::Tensor first = (~whole.covered).nonzero()[0];
    std::vector<std::int64_t> index(first.data_ptr<std::int64_t>(),
                                    first.data_ptr<std::int64_t>() + first.numel());
    fail("'" + key + "' " + shape_text(whole.global_shape) + ": " +
         std::to_string(whole.covered.numel() - have) + " of " +
         std::to_string(whole.covered.numel()) + " elements are in none of the " +
         std::to_string(paths.size()) + " files (the first at " + shape_text(index) +
         "): a rank's file is missing?");
  }
  return out;
}

}  // namespace c10dtest
