// Private (the verifier): each rank's distributed dict described as leaves (path, type, global
// shape, dtype, layout, this rank's pieces with their global offsets), and their codec.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "c10dtest/state_dict.hpp"
#include "common/fields.hpp"

namespace c10dtest::detail::verifier {

struct Piece {
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> sizes;
  at::Tensor tensor;  // only on the owning rank
};

struct LeafInfo {
  std::string path;
  std::string type;  // StateValue::type_name(), "list" for a list of plain values
  bool tensor = false;
  std::vector<std::int64_t> shape;
  int dtype = 0;
  c10::Device device = c10::kCPU;
  // "[Shard(0)]", "3 shards", "" for a plain tensor: see layout_of(). Written from `source` only
  // when needed (a report or a gather): most keys never need it.
  std::string layout;
  const StateValue* source = nullptr;  // on the describing rank only
  std::string problem;  // a layout fault found by the owner (shards that do not tile, ...)
  // False on a rank outside a DTensor's mesh: it holds no piece, and its dtype and device (and
  // perhaps the global shape) are unknown here; the mesh's ranks check the value.
  bool held = true;
  // A Partial placement: the pieces are reduced (DTensor::reduce_partials) before any value is
  // compared. Set on every rank that holds the key, in the mesh or not; cleared once reduced.
  bool partial = false;
  // Which copy of the value this rank's pieces belong to: ranks with the same replica hold
  // disjoint pieces of one copy (a DTensor's coordinate along its Replicate and Partial mesh
  // dims; the rank itself for a plain tensor; 0 for a ShardedTensor). Mismatches are counted per
  // copy, so that replicas do not multiply the element counts.
  std::int64_t replica = 0;
  std::string scalar;   // canonical text of a plain value
  std::vector<std::string> elements;  // of a list of plain values: each element's text
  std::vector<Piece> pieces;
};

using FlatDict = std::vector<std::pair<std::string, const StateValue*>>;

// The leaves of `sd` by path ("state.l1.weight.exp_avg"); a list of plain values is one leaf.
FlatDict flatten(const StateDict& sd);
// Canonical text of a plain value (or a list of them): equal texts mean equal values.
std::string plain_text(const StateValue& v);
// The layout text of a leaf described here or received from another rank.
std::string layout_of(const LeafInfo& leaf);
// "DTensor [7, 5] Float [Shard(0)]".
std::string leaf_text(const LeafInfo& leaf);
// The layout every rank must agree on, of a leaf described here: a DTensor's placements and
// mesh, a ShardedTensor's shard list ("" for other values).
std::string layout_signature(const LeafInfo& leaf);
// The same in parts: `form` (placements and mesh shape; the shard list) must be equal on every
// rank that holds the key; `mesh_ranks` (a DTensor's mesh) may differ between ranks only as the
// lines of a sub-mesh do: disjoint meshes, each held by all of its members (every line holds
// its own copy of the value).
struct LayoutParts {
  std::string form;
  std::vector<int> mesh_ranks;
};
// `signature`: layout_signature(leaf), already built by the caller (the form of a
// ShardedTensor is its signature).
LayoutParts layout_parts(const LeafInfo& leaf, const std::string& signature);
// A hash of every (path, layout_signature) of `leaves`, in any order: equal on two ranks when
// they hold the same distributed keys with the same layouts. Each mesh is described once.
std::uint64_t layout_hash(const std::vector<LeafInfo>& leaves);

// This rank's leaves of `sd`, with its pieces as `world_rank` holds them. A value that cannot
// be described (any exception) is a leaf whose `problem` says why, naming the rank.
std::vector<LeafInfo> describe_dict(const StateDict& sd, int world_rank);
std::string encode_leaves(const std::vector<LeafInfo>& leaves);
std::vector<LeafInfo> decode_leaves(const std::string& data);

void put_ints(std::string& out, const std::vector<std::int64_t>& v);
std::vector<std::int64_t> read_ints(FieldReader& r);

}  // namespace c10dtest::detail::verifier
