#include "leaves.hpp"

#include <charconv>
#include <unordered_map>

#include "c10dtest/dtensor.hpp"
#include "c10dtest/sharded_tensor.hpp"
#include "common/hash.hpp"
#include "common/text.hpp"

namespace c10dtest::detail::verifier {

// ---------------------------------------------------------------------------------------------
// Leaves of the distributed dict.

std::string double_text(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

bool is_plain(const StateValue& v) {
  return !v.is_tensor_like() && !v.is<StateList>() && !v.is<StateDict>();
}

std::string plain_text(const StateValue& v) {
  if (v.is<StateNone>()) return "None";
  if (v.is<bool>()) return v.as<bool>() ? "True" : "False";
  if (v.is<std::int64_t>()) return std::to_string(v.as<std::int64_t>());
  if (v.is<double>()) return double_text(v.as<double>());
  if (v.is<std::string>()) return "'" + v.as<std::string>() + "'";
  std::string out = "[";
  const auto& l = v.as<StateList>();
  for (std::size_t i = 0; i < l.size(); ++i) out += (i ? ", " : "") + plain_text(l[i]);
  return out + "]";
}

bool plain_list(const StateValue& v) {
  if (!v.is<StateList>()) return false;
  for (const auto& e : v.as<StateList>()) {
    if (!is_plain(e)) return false;
  }
  return true;
}

void walk(const StateValue& v, const std::string& path,
          std::vector<std::pair<std::string, const StateValue*>>* out) {
  if (v.is<StateDict>() && !v.as<StateDict>().empty()) {
    const auto& d = v.as<StateDict>();
    for (std::size_t i = 0; i < d.size(); ++i) {
      walk(d.value(i), path.empty() ? d.keys()[i] : path + "." + d.keys()[i], out);
    }
  } else if (v.is<StateList>() && !plain_list(v)) {
    const auto& l = v.as<StateList>();
    for (std::size_t i = 0; i < l.size(); ++i) walk(l[i], path + "." + std::to_string(i), out);
  } else {
    out->push_back({path, &v});
  }
}

FlatDict flatten(const StateDict& sd) {
  FlatDict out;
  for (std::size_t i = 0; i < sd.size(); ++i) walk(sd.value(i), sd.keys()[i], &out);
  return out;
}

std::vector<std::int64_t> zeros_like_shape(at::IntArrayRef shape) {
  return std::vector<std::int64_t>(shape.size(), 0);
}

std::string layout_of(const LeafInfo& leaf) {
  if (leaf.source == nullptr || !leaf.layout.empty()) return leaf.layout;
  if (leaf.source->is<DTensor>()) return to_string(leaf.source->as<DTensor>().placements());
  if (leaf.source->is<ShardedTensor>()) {
    return std::to_string(leaf.source->as<ShardedTensor>().metadata().shards.size()) + " shards";
  }
  return "";
}

LeafInfo describe_leaf(const std::string& path, const StateValue& v, int world_rank) {
  LeafInfo leaf;
  leaf.path = path;
  leaf.source = &v;
  leaf.type = v.type_name();
  if (v.is<at::Tensor>()) {
    const at::Tensor& t = v.as<at::Tensor>();
    leaf.tensor = true;
    if (!t.defined()) {
      leaf.problem = "holds an undefined tensor";
      return leaf;
    }
    leaf.shape = t.sizes().vec();
    leaf.dtype = static_cast<int>(t.scalar_type());
    leaf.device = t.device();
    leaf.replica = world_rank;
    leaf.pieces.push_back({zeros_like_shape(t.sizes()), t.sizes().vec(), t});
  } else if (v.is<DTensor>()) {
    const DTensor& d = v.as<DTensor>();
    leaf.tensor = true;
    leaf.shape = d.global_shape();
    for (const auto& p : d.placements()) leaf.partial |= std::holds_alternative<Partial>(p);
    if (!d.mesh()->contains(world_rank)) {
      // Outside the mesh: nothing held; the local tensor may be undefined.
      leaf.held = false;
      return leaf;
    }
    leaf.dtype = static_cast<int>(d.dtype());
    leaf.device = d.local().device();
    Piece piece;
    const auto coord = d.mesh()->coordinate_of(world_rank);
    detail::local_extent(d.global_shape(), d.placements(), *d.mesh(), coord, &piece.sizes,
                         &piece.offsets);
    for (std::size_t dim = 0; dim < coord.size() && dim < d.placements().size(); ++dim) {
      if (std::holds_alternative<Shard>(d.placements()[dim])) continue;
      leaf.replica = leaf.replica * d.mesh()->size(static_cast<int>(dim)) + coord[dim];
    }
    // The lines of a sub-mesh are disjoint meshes, each with its own copies: told apart by
    // their first rank.
    leaf.replica += static_cast<std::int64_t>(d.mesh()->ranks().front()) * d.mesh()->numel();
    piece.tensor = d.local();
    leaf.pieces.push_back(std::move(piece));
  } else if (v.is<ShardedTensor>()) {
    const ShardedTensor& s = v.as<ShardedTensor>();
    leaf.tensor = true;
    leaf.shape = s.metadata().global_shape;
    leaf.dtype = static_cast<int>(s.metadata().dtype);
    try {
      validate_tiling(s.metadata(), s.process_group() ? s.process_group()->getSize() : 1);
    } catch (const ShardingError& e) {
      leaf.problem = std::string("shards do not tile the tensor: ") + e.what();
    }
    for (const auto& shard : s.local_shards()) {
      if (!shard.tensor.defined()) {
        leaf.problem = "holds an undefined local shard at offsets " +
                       shape_text(shard.metadata.offsets);
        leaf.pieces.clear();
        break;
      }
      if (leaf.pieces.empty()) leaf.device = shard.tensor.device();
      leaf.pieces.push_back({shard.metadata.offsets, shard.metadata.sizes, shard.tensor});
    }
  } else {
    leaf.scalar = v.is<StateDict>() ? "{}" : plain_text(v);
    if (v.is<StateList>()) {
      leaf.type = "list";
      for (const auto& e : v.as<StateList>()) leaf.elements.push_back(plain_text(e));
    }
  }
  return leaf;
}

std::vector<LeafInfo> describe_dict(const StateDict& sd, int world_rank) {
  const auto flat = flatten(sd);
  std::vector<LeafInfo> out;
  out.reserve(flat.size());
  for (const auto& [path, v] : flat) {
    try {
      out.push_back(describe_leaf(path, *v, world_rank));
    } catch (const std::exception& e) {
      // Said as a finding of this key on this rank; the ranks still verify together.
      LeafInfo leaf;
      leaf.path = path;
      leaf.source = v;
      leaf.type = v->type_name();
      leaf.tensor = v->is_tensor_like();
      leaf.layout = "?";
      leaf.problem = "could not be read on rank " + std::to_string(world_rank) + ": " +
                     first_line(e.what());
      out.push_back(std::move(leaf));
    }
  }
  return out;
}

void put_ints(std::string& out, const std::vector<std::int64_t>& v) {
  put_field(out, std::to_string(v.size()));
  for (auto x : v) put_field(out, std::to_string(x));
}

std::vector<std::int64_t> read_ints(detail::FieldReader& r) {
  const auto n = r.number();
  std::vector<std::int64_t> v;
  for (long long i = 0; i < n; ++i) v.push_back(r.number());
  return v;
}

std::string encode_leaves(const std::vector<LeafInfo>& leaves) {
  std::string out;
  put_field(out, std::to_string(leaves.size()));
  for (const auto& l : leaves) {
    put_field(out, l.path);
    put_field(out, l.type);
    put_field(out, l.tensor ? "1" : "0");
    put_ints(out, l.shape);
    put_field(out, std::to_string(l.dtype));
    put_field(out, l.device.str());
    put_field(out, layout_of(l));
    put_field(out, l.problem);
    put_field(out, l.held ? "1" : "0");
    put_field(out, std::to_string(l.replica));
    put_field(out, l.scalar);
    put_field(out, std::to_string(l.elements.size()));
    for (const auto& e : l.elements) put_field(out, e);
    put_field(out, std::to_string(l.pieces.size()));
    for (const auto& p : l.pieces) {
      put_ints(out, p.offsets);
      put_ints(out, p.sizes);
    }
  }
  return out;
}

std::vector<LeafInfo> decode_leaves(const std::string& data) {
  detail::FieldReader r(data, "state-dict description");
  std::vector<LeafInfo> leaves(static_cast<std::size_t>(r.number()));
  for (auto& l : leaves) {
    l.path = r.next();
    l.type = r.next();
    l.tensor = r.next() == "1";
    l.shape = read_ints(r);
    l.dtype = static_cast<int>(r.number());
    l.device = c10::Device(r.next());
    l.layout = r.next();
    l.problem = r.next();
    l.held = r.next() == "1";
    l.replica = r.number();
    l.scalar = r.next();
    l.elements.resize(static_cast<std::size_t>(r.number()));
    for (auto& e : l.elements) e = r.next();
    l.pieces.resize(static_cast<std::size_t>(r.number()));
    for (auto& p : l.pieces) {
      p.offsets = read_ints(r);
      p.sizes = read_ints(r);
    }
  }
  return leaves;
}

namespace {

std::string placements_on(const DTensor& d, const std::string& mesh) {
  return "DTensor " + to_string(d.placements()) + " on " + mesh;
}

}  // namespace

std::string layout_signature(const LeafInfo& leaf) {
  if (leaf.source == nullptr) return "";
  if (leaf.source->is<DTensor>()) {
    const DTensor& d = leaf.source->as<DTensor>();
    return placements_on(d, d.mesh()->describe());
  }
  if (!leaf.source->is<ShardedTensor>()) return "";
  const auto& meta = leaf.source->as<ShardedTensor>().metadata();
  std::string shards;
  for (const auto& m : meta.shards) {
    shards += shape_text(m.offsets) + "+" + shape_text(m.sizes) + "@" + std::to_string(m.rank) + ";";
  }
  return "ShardedTensor " + shape_text(meta.global_shape) + " in " +
         std::to_string(meta.shards.size()) + " shards (layout " + hex_hash(fnv1a(shards)) + ")";
}

LayoutParts layout_parts(const LeafInfo& leaf, const std::string& signature) {
  if (leaf.source != nullptr && leaf.source->is<DTensor>()) {
    const DTensor& d = leaf.source->as<DTensor>();
    return {"DTensor " + to_string(d.placements()) + " on a mesh of shape " +
                shape_text(d.mesh()->shape()),
            d.mesh()->ranks()};
  }
  return {signature, {}};
}

std::uint64_t layout_hash(const std::vector<LeafInfo>& leaves) {
  // A mesh's text grows with its ranks: hashed once per mesh, not once per key.
  std::unordered_map<const DeviceMesh*, std::string> meshes;
  std::uint64_t sum = 0;
  for (const auto& leaf : leaves) {
    if (leaf.source == nullptr) continue;
    std::string sig;
    if (leaf.source->is<DTensor>()) {
      const DTensor& d = leaf.source->as<DTensor>();
      auto it = meshes.find(d.mesh().get());
      if (it == meshes.end()) {
        it = meshes.emplace(d.mesh().get(), hex_hash(fnv1a(d.mesh()->describe()))).first;
      }
      sig = placements_on(d, it->second);
    } else if (leaf.source->is<ShardedTensor>()) {
      sig = layout_signature(leaf);
    } else {
      continue;
    }
    // A sum: the order of the keys does not matter.
    sum += fnv1a(sig, fnv1a(leaf.path + '\n'));
  }
  return sum;
}

std::string leaf_text(const LeafInfo& leaf) {
  return leaf.type + " " + shape_text(leaf.shape) + " " +
         c10::toString(static_cast<at::ScalarType>(leaf.dtype)) +
         [&] {
           const std::string layout = layout_of(leaf);
           return layout.empty() ? layout : " " + layout;
         }();
}

}  // namespace c10dtest::detail::verifier
