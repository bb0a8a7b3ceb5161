// State dicts in PyTorch's own files, both directions: read a reference that Python wrote with
// torch.save or safetensors, verify sharded C++ state against it, and write files Python loads.
//
//   // Python: torch.save(model.state_dict(), "ref.pt")  or  save_file(sd, "ref.safetensors")
//   c10dtest::StateDict ref = c10dtest::read_state_dict("ref.safetensors");
//   C10DTEST_EXPECT_STATE_DICT_MATCHES(ref, get_model_state_dict(*sharded, {}, layouts));
//
//   c10dtest::write_state_dict("out.pt", gather_state_dict(sd), c10dtest::FileFormat::kTorchSave);
//
// Both formats are memory-mapped: a tensor read from a file costs no memory until its bytes are
// read, so a rank that verifies its shards against a large reference touches only the slices of
// its own shards (the shard-local strategy reads nothing else). What each format keeps is in
// docs/files.md.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "c10dtest/error.hpp"
#include "c10dtest/state_dict.hpp"

namespace c10dtest {

// A file that cannot be read or written as asked. The message names the file and what is wrong
// ("ref.safetensors: tensor 'w': data_offsets [0, 96] hold 96 bytes, but shape [4, 4] of F32
// needs 64"). Never a crash: every length, offset and count in a file is checked before use.
class FileFormatError : public Error {
 public:
  using Error::Error;
};

enum class FileFormat {
  kAuto,         // reading: by content (a zip archive is torch.save's); writing: by extension
                 // (".safetensors" is safetensors, anything else torch.save)
  kTorchSave,    // torch.save's zip archive (pickle plus one record per storage)
  kSafetensors,  // 8-byte little-endian header length, JSON header, raw little-endian data
};

// "auto", "torch.save", "safetensors".
const char* to_string(FileFormat format);

struct ReadFileOptions {
  FileFormat format = FileFormat::kAuto;
  // Tensors point into a private, copy-on-write mapping of the file (writing to them never
  // changes the file). The mapping lives as long as any tensor read from it. A tensor whose data
  // is not aligned to its element size (or a compressed torch.save record) is copied. false:
  // every tensor is copied into memory of its own at once (use it when the file may be
  // truncated or rewritten in place while tensors read from it are alive: a mapped page that is
  // gone is a SIGBUS).
  bool map = true;
  // safetensors: values that write_state_dict kept in the metadata (non-tensor values) are
  // restored under their keys. false: only the tensors.
  bool restore_values = true;
  // The largest JSON header accepted, as the safetensors library's own limit (100 MB).
  std::int64_t max_header_bytes = 100'000'000;
};

struct StateDictFile {
  FileFormat format = FileFormat::kAuto;  // what the file turned out to be
  // torch.save: the saved object as it was: a dict (OrderedDict) with string keys, integer keys
  // written as decimal strings ("0" for an optimizer's parameter 0), tuples as lists.
  // safetensors: one entry per tensor, under the file's names (usually flat FQNs such as
  // "state.l1.weight.exp_avg"; the verifier matches them with nested dicts).
  StateDict state_dict;
  // safetensors' "__metadata__" (string to string), as written; empty for torch.save.
  std::map<std::string, std::string> metadata;
};

// Reads `path`. FileFormatError names the file and the problem: missing or unreadable,
// truncated, a header too large or not JSON, offsets out of range, overlapping or leaving gaps,
// an unknown or unsupported dtype, a pickle holding a type a state dict cannot hold.
StateDictFile read_state_dict_file(const std::string& path, const ReadFileOptions& options = {});
// The same, the state dict only.
StateDict read_state_dict(const std::string& path, const ReadFileOptions& options = {});

struct WriteFileOptions {
  // safetensors: written into "__metadata__" beside c10dtest's own entries (below).
  std::map<std::string, std::string> metadata;
  // torch.save: keys made only of decimal digits are written as Python ints, as PyTorch's
  // optimizer state dicts have them ({"state": {0: ...}, "param_groups": [{"params": [0, 1]}]}).
  bool integer_keys = false;
};

// Writes `state_dict` to `path` (through a temporary file in the same directory, renamed over
// `path` at the end: a failed write leaves no partial file). Tensors are written from CPU,
// contiguous, with their dtype and shape.
// - kTorchSave: a zip archive torch.load reads (LibTorch's pickle_save): nested dicts stay dicts,
//   lists stay lists, plain values stay values. Every value must be full: FileFormatError names a
//   DTensor or ShardedTensor key (gather_state_dict first).
// - kSafetensors: one tensor per leaf under its flat path ("state.l1.weight.exp_avg",
//   "param_groups.0.lr"); non-tensor values (and lists of them) go into the metadata entry
//   "c10dtest.values" (JSON, types kept), so read_state_dict gives them back. A DTensor or
//   ShardedTensor writes this rank's pieces only, with their global shape and offsets in the
//   metadata entry "c10dtest.shards": one file per rank, which Python can reassemble
//   (docs/files.md). A Partial placement has no piece to write (FileFormatError).
// Not collective: each rank writes what it holds.
void write_state_dict(const std::string& path, const StateDict& state_dict,
                      FileFormat format = FileFormat::kAuto, const WriteFileOptions& options = {});

// Reads the safetensors files that write_state_dict wrote for a sharded dict, one per rank (any
// number of ranks, any order), and puts every DTensor and ShardedTensor back together from its
// pieces: the full state dict, flat as read_state_dict gives it, in the order keys first appear.
// Tensors and values written whole (plain tensors, plain values) come from the first file that
// holds them; every other file holding them must hold the same. Not collective: any process can
// read another world size's files (a sharded checkpoint written at 4 ranks, verified at 2).
// FileFormatError names the file(s) and the key when the pieces do not make a whole: an element
// no piece covers (the first such index), a piece outside its global shape, pieces of one key
// that disagree on the global shape or the dtype, replicas (overlapping pieces) that differ,
// a key written whole in one file and in pieces in another, values that differ between files,
// a torch.save file, metadata that is not c10dtest's. Pieces are copied into full tensors;
// whole tensors stay mapped as options.map says.
StateDict read_sharded_state_dict(const std::vector<std::string>& paths,
                                  const ReadFileOptions& options = {});

}  // namespace c10dtest
