#include "c10dtest/distributed_state_dict.hpp"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "../sharding/assemble.hpp"
#include "comm/bytes.hpp"
#include "common/fields.hpp"
#include "common/hash.hpp"
#include "common/tensor.hpp"
#include "offload.hpp"
#include "c10dtest/context.hpp"

namespace c10dtest {

namespace {

struct Leaf {
  std::string path;
  StateValue* value;
};

// Every value of the tree, depth first, with its path ("state.l1.weight.exp_avg", "groups.0").
void leaves(StateValue& v, const std::string& path, std::vector<Leaf>* out) {
  if (v.is<StateDict>()) {
    auto& d = v.as<StateDict>();
    for (std::size_t i = 0; i < d.size(); ++i) {
      leaves(d.value(i), path.empty() ? d.keys()[i] : path + "." + d.keys()[i], out);
    }
  } else if (v.is<StateList>()) {
    auto& l = v.as<StateList>();
    for (std::size_t i = 0; i < l.size(); ++i) leaves(l[i], path + "." + std::to_string(i), out);
  } else {
    out->push_back({path, &v});
  }
}

using detail::fnv1a;

// Sharded leaves that travel over one group, in tree order.
struct GroupBatch {
  ProcessGroupPtr group;
  std::vector<Leaf> leaves;
  std::uint64_t layout_hash = detail::kFnvOffset;
  bool solo = false;
};

constexpr std::int64_t kSoloBytes = 1 << 20;

// Whether the group's pieces, back to back in group-rank order, are the full tensor: a 1-D mesh
// with Shard(0) and equal pieces, not empty (empty pieces are padded to one byte for the
// exchange, and the padding is not part of any tensor).
bool concatenation_is_full(const GroupBatch& b, const std::vector<std::int64_t>& sizes) {
  if (b.leaves.size() != 1 || !b.leaves[0].value->is<DTensor>() || sizes.empty() || sizes[0] == 0) {
    return false;
  }
  const auto& d = b.leaves[0].value->as<DTensor>();
  return d.mesh()->ndim() == 1 && d.placements()[0] == Placement(Shard{0}) &&
         std::all_of(sizes.begin(), sizes.end(), [&](std::int64_t s) { return s == sizes[0]; });
}

ProcessGroupPtr group_of_leaf(const StateValue& v) {
  return v.is<DTensor>() ? detail::group_of(v.as<DTensor>())
                         : detail::group_of(v.as<ShardedTensor>());
}

std::string layout_text(const Leaf& leaf) {
  std::ostringstream os;
  os << leaf.path << '|';
  if (leaf.value->is<DTensor>()) {
    const auto& d = leaf.value->as<DTensor>();
    os << static_cast<int>(d.dtype()) << to_string(d.placements());
    for (auto s : d.global_shape()) os << ',' << s;
  } else {
    const auto& m = leaf.value->as<ShardedTensor>().metadata();
    os << static_cast<int>(m.dtype) << '#' << m.shards.size();
    for (auto s : m.global_shape) os << ',' << s;
  }
  return os.str();
}

template <typename F>
auto for_leaf(const StateValue& v, F&& f) {
  return v.is<DTensor>() ? f(v.as<DTensor>()) : f(v.as<ShardedTensor>());
}

// What every member of a group states before the bulk transfer: its layout hash, the padded
// length it will send and its world rank. A mismatch is found here, not inside Gloo.
struct Preamble {
  std::uint64_t layout_hash;
  std::int64_t longest;
  std::int64_t world_rank;
};

// This process's world rank for gather_state_dict: see GatherOptions::context. A dict of
// ShardedTensors alone outside any context has no world: their group's ranks stand in.
int world_rank(const std::vector<Leaf>& all, const GatherOptions& options) {
  if (options.context) return options.context->rank();
  for (const auto& leaf : all) {
    if (leaf.value->is<DTensor>()) return leaf.value->as<DTensor>().mesh()->my_rank();
  }
  if (has_context()) return current_context()->rank();
  for (const auto& leaf : all) {
    if (leaf.value->is<ShardedTensor>()) {
      return leaf.value->as<ShardedTensor>().process_group()->getRank();
    }
  }
  return 0;
}

}  // namespace

namespace detail {

void offload_to_cpu(StateValue& value) {
  std::vector<Leaf> all;
  leaves(value, "", &all);
  for (const auto& leaf : all) {
    StateValue& v = *leaf.value;
    if (v.is<at::Tensor>()) v = v.as<at::Tensor>().cpu();
    if (v.is<DTensor>()) {
      const auto& d = v.as<DTensor>();
      v = DTensor(d.local().cpu(), d.mesh(), d.placements(), d.global_shape());
    }
  }
}

}  // namespace detail

StateDict gather_state_dict(const StateDict& state_dict, const GatherOptions& options) {
  StateValue root(state_dict);
  std::vector<Leaf> all;
  leaves(root, "", &all);
  std::vector<GroupBatch> batches;
  for (const auto& leaf : all) {
    if (!leaf.value->is<DTensor>() && !leaf.value->is<ShardedTensor>()) continue;
    if (leaf.value->is<DTensor>()) {
      const auto& d = leaf.value->as<DTensor>();
      if (!d.mesh()->contains(d.mesh()->my_rank())) {
        // Outside the DTensor's mesh: as PyTorch's full_tensor() there, the (empty) local
        // tensor; the mesh's ranks gather among themselves.
        *leaf.value = d.local().defined() ? d.local() : at::empty({0});
        continue;
      }
    }
    const ProcessGroupPtr g = group_of_leaf(*leaf.value);
    // Small values share a collective per group; a large one travels alone, which lets a dim-0
    // sharded tensor land in its final place without a copy. Every rank decides alike: the size
    // is the largest piece of any rank.
    std::int64_t largest = 0;
    for (int r = 0; r < g->getSize(); ++r) {
      largest = std::max(largest, for_leaf(*leaf.value,
                                           [r](const auto& t) { return detail::piece_bytes(t, r); }));
    }
    if (largest >= kSoloBytes) {
      batches.push_back({g, {leaf}, fnv1a(layout_text(leaf)), true});
      continue;
    }
    auto it = std::find_if(batches.begin(), batches.end(), [&](const GroupBatch& b) {
      return b.group.get() == g.get() && !b.solo;
    });
    if (it == batches.end()) {
      batches.push_back({g, {}, detail::kFnvOffset, false});
      it = batches.end() - 1;
    }
    it->leaves.push_back(leaf);
    it->layout_hash = fnv1a(layout_text(leaf), it->layout_hash);
  }

  const int me = world_rank(all, options);
  bool receive = !options.ranks_only ||
                 std::find(options.ranks_only->begin(), options.ranks_only->end(), me) !=
                     options.ranks_only->end();
  for (auto& batch : batches) {
    const int n = batch.group->getSize();
    std::vector<std::int64_t> sizes(static_cast<std::size_t>(n), 0);
    for (int r = 0; r < n; ++r) {
      for (const auto& leaf : batch.leaves) {
        sizes[static_cast<std::size_t>(r)] +=
            for_leaf(*leaf.value, [r](const auto& t) { return detail::piece_bytes(t, r); });
      }
    }
    const std::int64_t longest =
        std::max<std::int64_t>(1, *std::max_element(sizes.begin(), sizes.end()));
    // This rank's pieces, copied once into a buffer of the padded length (not at all when one
    // piece already has that length).
    at::Tensor mine;
    if (batch.leaves.size() == 1) {
      mine = for_leaf(*batch.leaves[0].value, [](const auto& t) { return detail::my_piece(t); });
    }
    if (!mine.defined() || mine.numel() != longest) {
      mine = at::empty({longest}, at::kByte);
      std::int64_t at_byte = 0;
      for (const auto& leaf : batch.leaves) {
        const at::Tensor piece =
            for_leaf(*leaf.value, [](const auto& t) { return detail::my_piece(t); });
        if (piece.numel() > 0) mine.narrow(0, at_byte, piece.numel()).copy_(piece);
        at_byte += piece.numel();
      }
    }
    const auto preambles = detail::all_gather_value(batch.group, Preamble{batch.layout_hash, longest, me});
    for (int r = 0; r < n; ++r) {
      const Preamble& p = preambles[static_cast<std::size_t>(r)];
      if (p.layout_hash != batch.layout_hash || p.longest != preambles[0].longest) {
        throw StateDictError("gather_state_dict: rank " + std::to_string(p.world_rank) +
                             " passed a state dict whose sharded entries differ from rank " +
                             std::to_string(me) + "'s (keys, dtypes, shapes or placements); "
                             "first sharded entry here: " + batch.leaves.front().path);
      }
    }
    std::vector<at::Tensor> pieces;
    if (!options.ranks_only && concatenation_is_full(batch, sizes)) {
      const auto& d = batch.leaves[0].value->as<DTensor>();
      // A full tensor lives where its shards did, or on CPU with cpu_offload.
      const c10::Device home = options.cpu_offload ? c10::Device(c10::DeviceType::CPU)
                                                   : d.local().device();
      const at::Tensor full =
          detail::from_bytes(detail::all_gather_padded(batch.group, mine), d.dtype(),
                             d.global_shape())
              .to(home);
      *batch.leaves[0].value = full;
      continue;
    }
    if (!options.ranks_only) {
      pieces = detail::all_gather_bytes(batch.group, mine, sizes);
    } else {
      for (int target : *options.ranks_only) {
        for (int r = 0; r < n; ++r) {
          if (preambles[static_cast<std::size_t>(r)].world_rank != target) continue;
          auto got = detail::gather_bytes(batch.group, mine, sizes, r);
          if (!got.empty()) pieces = std::move(got);
        }
      }
    }
    if (pieces.empty()) continue;  // this rank receives nothing from this group
    std::vector<std::int64_t> cursor(static_cast<std::size_t>(n), 0);
    for (const auto& leaf : batch.leaves) {
      std::vector<at::Tensor> mine_pieces;
      for (int r = 0; r < n; ++r) {
        const std::int64_t len =
            for_leaf(*leaf.value, [r](const auto& t) { return detail::piece_bytes(t, r); });
        mine_pieces.push_back(
            pieces[static_cast<std::size_t>(r)].narrow(0, cursor[static_cast<std::size_t>(r)], len));
        cursor[static_cast<std::size_t>(r)] += len;
      }
      at::Tensor full =
          for_leaf(*leaf.value, [&](const auto& t) { return detail::assemble(t, mine_pieces); });
      *leaf.value = options.cpu_offload ? full.cpu() : full;
    }
  }
  if (!receive) return StateDict();
  if (options.cpu_offload) detail::offload_to_cpu(root);
  return std::move(root.as<StateDict>());
}

namespace {

void encode(const StateValue& v, std::string& out, std::vector<at::Tensor>* tensors) {
  using detail::put_field;
  if (v.is<StateNone>()) {
    put_field(out, "N");
  } else if (v.is<bool>()) {
    put_field(out, v.as<bool>() ? "B1" : "B0");
  } else if (v.is<std::int64_t>()) {
    put_field(out, "I");
    put_field(out, std::to_string(v.as<std::int64_t>()));
  } else if (v.is<double>()) {
    std::string bits(sizeof(double), '\0');
    const double d = v.as<double>();
    std::memcpy(bits.data(), &d, sizeof(double));
    put_field(out, "F");
    put_field(out, bits);
  } else if (v.is<std::string>()) {
    put_field(out, "S");
    put_field(out, v.as<std::string>());
  } else if (v.is<at::Tensor>()) {
    const auto& t = v.as<at::Tensor>();
    put_field(out, "T");
    put_field(out, std::to_string(static_cast<int>(t.scalar_type())));
    put_field(out, std::to_string(t.dim()));
    for (auto s : t.sizes()) put_field(out, std::to_string(s));
    tensors->push_back(t);
  } else if (v.is<StateList>()) {
    put_field(out, "L");
    put_field(out, std::to_string(v.as<StateList>().size()));
    for (const auto& e : v.as<StateList>()) encode(e, out, tensors);
  } else if (v.is<StateDict>()) {
    const auto& d = v.as<StateDict>();
    put_field(out, "D");
    put_field(out, std::to_string(d.size()));
    for (std::size_t i = 0; i < d.size(); ++i) {
      put_field(out, d.keys()[i]);
      encode(d.value(i), out, tensors);
    }
  } else {
    throw StateDictError(std::string("broadcast_state_dict: rank 0 holds a ") + v.type_name() +
                         "; gather it first (rank 0 must hold full tensors)");
  }
}

StateValue decode(detail::FieldReader& in) {
  const std::string tag = in.next();
  if (tag == "N") return StateNone{};
  if (tag == "B1") return true;
  if (tag == "B0") return false;
  if (tag == "I") return static_cast<std::int64_t>(in.number());
  if (tag == "F") {
    const std::string bits = in.next();
    double d = 0;
    std::memcpy(&d, bits.data(), sizeof(double));
    return d;
  }
  if (tag == "S") return in.next();
  if (tag == "T") {
    const auto dtype = static_cast<at::ScalarType>(in.number());
    const auto ndim = in.number();
    std::vector<std::int64_t> shape;
    for (long long i = 0; i < ndim; ++i) shape.push_back(in.number());
    return at::empty(shape, at::TensorOptions().dtype(dtype));
  }
  if (tag == "L") {
    StateList l;
    const auto n = in.number();
    for (long long i = 0; i < n; ++i) l.push_back(decode(in));
    return l;
  }
  if (tag == "D") {
    StateDict d;
    const auto n = in.number();
    for (long long i = 0; i < n; ++i) {
      const std::string key = in.next();
      d.insert(key, decode(in));
    }
    return d;
  }
  throw StateDictError("broadcast_state_dict: malformed structure (tag '" + tag + "')");
}

std::vector<at::Tensor> tensors_in(StateValue& root) {
  std::vector<Leaf> all;
  leaves(root, "", &all);
  std::vector<at::Tensor> out;
  for (const auto& l : all) {
    if (l.value->is<at::Tensor>()) out.push_back(l.value->as<at::Tensor>());
  }
  return out;
}

}  // namespace

StateDict broadcast_state_dict(const StateDict& state_dict, ProcessGroupPtr group) {
  if (!group) group = current_context()->process_group();
  const bool root = group->getRank() == 0;
  std::string structure;
  std::vector<at::Tensor> tensors;
  if (root) encode(StateValue(state_dict), structure, &tensors);
  // 1: the structure's length, 2: the structure, 3: every tensor's bytes back to back.
  at::Tensor length = at::full({1}, static_cast<std::int64_t>(structure.size()), at::kLong);
  detail::broadcast_bytes(group, length, 0);
  at::Tensor text = at::empty({length.item<std::int64_t>()}, at::kByte);
  if (root && !structure.empty()) std::memcpy(text.data_ptr(), structure.data(), structure.size());
  detail::broadcast_bytes(group, text, 0);
  if (!root) structure.assign(static_cast<const char*>(text.data_ptr()), static_cast<std::size_t>(text.numel()));

  detail::FieldReader in(structure, "state dict structure");
  StateValue out = root ? StateValue(state_dict) : decode(in);
  std::vector<at::Tensor> parts;
  std::int64_t total = 0;
  // The decoded tensors share storage with the tree, so filling them fills the result.
  const auto targets = tensors_in(out);
  for (const auto& t : targets) total += t.numel() * static_cast<std::int64_t>(t.element_size());
  at::Tensor blob;
  if (root) {
    for (const auto& t : targets) parts.push_back(detail::as_bytes(t.cpu()));
    blob = parts.empty() ? at::empty({0}, at::kByte) : at::cat(parts);
  } else {
    blob = at::empty({total}, at::kByte);
  }
  detail::broadcast_bytes(group, blob, 0);
  if (root) return std::move(out.as<StateDict>());
  std::int64_t cursor = 0;
  for (const auto& t : targets) {
    const std::int64_t n = t.numel() * static_cast<std::int64_t>(t.element_size());
    at::Tensor target = t;
    target.copy_(detail::from_bytes(blob.narrow(0, cursor, n).clone(), t.scalar_type(), t.sizes()));
    cursor += n;
  }
  return std::move(out.as<StateDict>());
}

namespace {

StateValue distribute_value(const StateValue& full, const StateValue& like, const std::string& path) {
  if (like.is<StateDict>()) {
    if (!full.is<StateDict>()) {
      throw StateDictError("distribute_state_dict: '" + path + "' is a " + full.type_name() +
                           " in the full state dict, a dict in the sharded one");
    }
    const auto& l = like.as<StateDict>();
    const auto& f = full.as<StateDict>();
    StateDict out;
    for (std::size_t i = 0; i < l.size(); ++i) {
      const std::string& key = l.keys()[i];
      const std::string sub = path.empty() ? key : path + "." + key;
      if (!f.contains(key)) {
        throw StateDictError("distribute_state_dict: '" + sub + "' is missing from the full "
                             "state dict");
      }
      out.insert(key, distribute_value(f.at(key), l.value(i), sub));
    }
    return out;
  }
  if (like.is<StateList>()) {
    if (!full.is<StateList>() || full.as<StateList>().size() != like.as<StateList>().size()) {
      throw StateDictError("distribute_state_dict: '" + path + "' is not a list of " +
                           std::to_string(like.as<StateList>().size()) +
                           " entries in the full state dict");
    }
    StateList out;
    for (std::size_t i = 0; i < like.as<StateList>().size(); ++i) {
      out.push_back(distribute_value(full.as<StateList>()[i], like.as<StateList>()[i],
                                     path + "." + std::to_string(i)));
    }
    return out;
  }
  if (!like.is<DTensor>() && !like.is<ShardedTensor>()) return full;
  if (!full.is<at::Tensor>()) {
    throw StateDictError("distribute_state_dict: '" + path + "' is a " + full.type_name() +
                         " in the full state dict, not a tensor");
  }
  const at::Tensor& t = full.as<at::Tensor>();
  auto check_shape = [&](const std::vector<std::int64_t>& expected) {
    if (t.sizes().vec() != expected) {
      std::ostringstream os;
      os << "distribute_state_dict: '" << path << "' has shape " << t.sizes()
         << " in the full state dict, the sharded one expects " << at::IntArrayRef(expected);
      throw StateDictError(os.str());
    }
  };
  if (like.is<DTensor>()) {
    const auto& d = like.as<DTensor>();
    check_shape(d.global_shape());
    return distribute_tensor(t.to(d.local().defined() ? d.local().device() : t.device()),
                             d.mesh(), d.placements());
  }
  const auto& st = like.as<ShardedTensor>();
  check_shape(st.metadata().global_shape);
  std::vector<LocalShard> pieces;
  for (const auto& s : st.local_shards()) {
    const at::Tensor piece = detail::slice_block(t, s.metadata.sizes, s.metadata.offsets);
    pieces.push_back({piece.clone().to(s.tensor.device()), s.metadata});
  }
  return ShardedTensor::from_metadata(std::move(pieces), st.metadata(), st.process_group());
}

}  // namespace

StateDict distribute_state_dict(const StateDict& full, const StateDict& like) {
  return std::move(distribute_value(StateValue(full), StateValue(like), "").as<StateDict>());
}

}  // namespace c10dtest
