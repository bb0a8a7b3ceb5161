// A seeded layout fuzzer for the verifier, ranks as threads (one c10d::HashStore, one Gloo group
// per thread). Each case is a nested, optimizer-like state dict of random values: DTensors on
// random meshes (1-D to 3-D, the world, a sub-mesh, or the lines of a sub_mesh()) with random
// placements (Shard on any dim, Replicate, Partial with every op the dtype takes),
// ShardedTensors with random tilings (blocks of any size, 0 included, several or none per rank)
// and plain tensors, of every dtype (float32/64, bfloat16, half, int64, bool, complex64), with
// sizes 0 to 7 and 0 to 3 dims. For every case:
//   1. gather_state_dict gives back every full tensor exactly (DTensor round trip);
//   2. verify_state_dict passes, shard-local and gather (reference on rank 0 only);
//   3. one planted fault (a value, a replica, two swapped shards, a shard at another's offsets,
//      a Partial piece, a rank that disagrees on the layout) fails both strategies with the same
//      message, on every rank, naming the key.
//
//   C10DTEST_FUZZ_SEED=7 C10DTEST_FUZZ_CASES=10000 build/test/layout_fuzz_test
//
// Environment: C10DTEST_FUZZ_SEED (1), C10DTEST_FUZZ_CASES (1000), C10DTEST_FUZZ_FIRST (0: the
// first case index, to replay one), C10DTEST_FUZZ_WORLD (4). A failing case prints the command
// that replays it alone.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10dtest/context.hpp>
#include <c10dtest/distributed_state_dict.hpp>
#include <c10dtest/dtensor.hpp>
#include <c10dtest/sharded_tensor.hpp>
#include <c10dtest/verify.hpp>
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <tuple>
#include <cstdlib>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace c10dtest {
namespace {

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : g_(seed) {}
  int below(int n) { return static_cast<int>(g_() % static_cast<std::uint64_t>(n)); }
  bool chance(double p) { return static_cast<double>(g_() % 1000000) < p * 1e6; }
  std::uint64_t next() { return g_(); }
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[static_cast<std::size_t>(below(static_cast<int>(v.size())))]; }

 private:
  std::mt19937_64 g_;
};

std::string text(const std::vector<std::int64_t>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

// The meshes a case may use, made by every rank in the same order. `lines` meshes differ by rank
// (each rank's own line of a 2-D mesh).
struct MeshPool {
  std::vector<std::shared_ptr<const DeviceMesh>> meshes;
  std::vector<bool> lines;

  MeshPool(const ContextPtr& ctx, int world) {
    auto add = [&](std::shared_ptr<const DeviceMesh> m, bool line = false) {
      meshes.push_back(std::move(m));
      lines.push_back(line);
    };
    add(DeviceMesh::create(ctx, {world}));
    if (world % 2 == 0) {
      const auto grid = DeviceMesh::create(ctx, {2, world / 2});
      add(grid);
      add(DeviceMesh::create(ctx, {1, 2, world / 2}));
      add(DeviceMesh::create(ctx, {2, world / 2, 1}));
      add(grid->sub_mesh(0), true);
      add(grid->sub_mesh(1), true);
    } else {
      add(DeviceMesh::create(ctx, {1, world}));
    }
    std::vector<int> first_half;
    std::vector<int> odd;
    std::vector<int> all_but_last;
    for (int r = 0; r < world; ++r) {
      if (r < std::max(1, world / 2)) first_half.push_back(r);
      if (r % 2 == 1) odd.push_back(r);
      if (r + 1 < world) all_but_last.push_back(r);
    }
    add(DeviceMesh::create(ctx, {static_cast<std::int64_t>(first_half.size())}, first_half));
    if (!odd.empty()) add(DeviceMesh::create(ctx, {static_cast<std::int64_t>(odd.size())}, odd));
    if (!all_but_last.empty()) {
      add(DeviceMesh::create(ctx, {static_cast<std::int64_t>(all_but_last.size())}, all_but_last));
    }
    add(DeviceMesh::create(ctx, {1}, {world - 1}));
  }
};

enum class Kind { kPlain, kDTensor, kSharded };

struct Block {
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> sizes;
  int owner = 0;
};

struct KeySpec {
  std::vector<std::string> segments;  // nested path
  std::string path;                   // the verifier's flattened key
  Kind kind = Kind::kPlain;
  at::ScalarType dtype = at::kFloat;
  std::vector<std::int64_t> shape;
  std::size_t mesh = 0;
  std::vector<Placement> placements;
  std::vector<Block> blocks;
  std::uint64_t seed = 0;

  std::string describe(const MeshPool& pool, int rank) const {
    std::ostringstream os;
    os << "'" << path << "' " << c10::toString(dtype) << " " << text(shape) << " ";
    if (kind == Kind::kPlain) os << "plain tensor";
    if (kind == Kind::kDTensor) {
      os << "DTensor " << to_string(placements) << " on "
         << (pool.lines[mesh] ? "the lines of " : "") << pool.meshes[mesh]->describe()
         << (pool.lines[mesh] ? " (rank " + std::to_string(rank) + "'s)" : "");
    }
    if (kind == Kind::kSharded) {
      os << "ShardedTensor of " << blocks.size() << " blocks:";
      for (const auto& b : blocks) os << " " << text(b.offsets) << "+" << text(b.sizes) << "@" << b.owner;
    }
    return os.str();
  }
};

at::Tensor full_value(const KeySpec& k) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(k.seed);
  switch (k.dtype) {
    case at::kLong: return at::randint(-40, 40, k.shape, gen, at::TensorOptions(at::kLong));
    case at::kBool:
      return at::randint(0, 2, k.shape, gen, at::TensorOptions(at::kLong)).to(at::kBool);
    case at::kComplexFloat:
      return at::randn(k.shape, gen, at::TensorOptions(at::kComplexFloat));
    default: return at::randn(k.shape, gen, at::TensorOptions(at::kDouble)).to(k.dtype);
  }
}

std::vector<PartialOp> partial_ops(at::ScalarType dtype) {
  const bool complex = at::isComplexType(dtype);
  const bool floating = at::isFloatingType(dtype) || complex;
  std::vector<PartialOp> ops{PartialOp::kSum, PartialOp::kProduct};
  if (floating) ops.push_back(PartialOp::kAvg);
  if (!complex) {
    ops.push_back(PartialOp::kMax);
    ops.push_back(PartialOp::kMin);
  }
  return ops;
}

KeySpec make_key(Rng& rng, int index, const MeshPool& pool, int world) {
  KeySpec k;
  const std::string name = "p" + std::to_string(index);
  if (rng.chance(0.5)) {
    k.segments = {"w" + std::to_string(index)};
  } else {
    k.segments = {"state", name, rng.chance(0.5) ? "exp_avg" : "exp_avg_sq"};
  }
  for (std::size_t i = 0; i < k.segments.size(); ++i) k.path += (i ? "." : "") + k.segments[i];
  k.dtype = rng.pick(std::vector<at::ScalarType>{at::kFloat, at::kFloat, at::kDouble,
                                                 at::kBFloat16, at::kHalf, at::kLong, at::kBool,
                                                 at::kComplexFloat});
  const int dims = rng.below(4);
  for (int d = 0; d < dims; ++d) {
    k.shape.push_back(rng.pick(std::vector<std::int64_t>{0, 1, 2, 3, 3, 4, 5, 5, 7, 7}));
  }
  k.seed = rng.next();
  const int kind = rng.below(10);
  k.kind = kind == 0 ? Kind::kPlain : kind < 7 ? Kind::kDTensor : Kind::kSharded;
  if (k.kind == Kind::kDTensor) {
    k.mesh = static_cast<std::size_t>(rng.below(static_cast<int>(pool.meshes.size())));
    const auto ops = partial_ops(k.dtype);
    for (int m = 0; m < pool.meshes[k.mesh]->ndim(); ++m) {
      const int p = rng.below(10);
      if (p < 5 && dims > 0) {
        k.placements.push_back(Shard{rng.below(dims)});
      } else if (p < 8) {
        k.placements.push_back(Replicate{});
      } else {
        k.placements.push_back(Partial{rng.pick(ops)});
      }
    }
  } else if (k.kind == Kind::kSharded) {
    // Each dim cut into 1 to 3 blocks at random points (equal points: empty blocks).
    std::vector<std::vector<std::int64_t>> cuts;
    const bool even = rng.chance(0.5);  // equal blocks where the size allows
    for (auto size : k.shape) {
      std::vector<std::int64_t> c{0, size};
      const int extra = rng.below(3);
      for (int i = 0; i < extra; ++i) {
        c.push_back(size == 0 ? 0
                    : even    ? size * (i + 1) / (extra + 1)
                              : rng.below(static_cast<int>(size) + 1));
      }
      std::sort(c.begin(), c.end());
      cuts.push_back(c);
    }
    std::vector<std::size_t> at(k.shape.size(), 0);
    while (true) {
      Block b;
      for (std::size_t d = 0; d < k.shape.size(); ++d) {
        b.offsets.push_back(cuts[d][at[d]]);
        b.sizes.push_back(cuts[d][at[d] + 1] - cuts[d][at[d]]);
      }
      b.owner = rng.below(world);
      k.blocks.push_back(b);
      std::size_t d = 0;
      for (; d < at.size(); ++d) {
        if (++at[d] + 1 < cuts[d].size()) break;
        at[d] = 0;
      }
      if (d == at.size()) break;
    }
  }
  return k;
}

at::Tensor block_of(const at::Tensor& full, const std::vector<std::int64_t>& offsets,
                    const std::vector<std::int64_t>& sizes) {
  at::Tensor t = full;
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    t = t.narrow(static_cast<std::int64_t>(d), offsets[d], sizes[d]);
  }
  return t.clone();
}

std::shared_ptr<const DeviceMesh> mesh_of(const KeySpec& k, const MeshPool& pool) {
  return pool.meshes[k.mesh];
}

// This rank's value of `k` (collective for ShardedTensors: every rank makes them in order).
StateValue make_value(const KeySpec& k, const at::Tensor& full, const MeshPool& pool,
                      const ContextPtr& ctx, const std::vector<Block>& blocks) {
  if (k.kind == Kind::kPlain) return full.clone();
  if (k.kind == Kind::kDTensor) return distribute_tensor(full, mesh_of(k, pool), k.placements);
  std::vector<LocalShard> mine;
  for (const auto& b : blocks) {
    if (b.owner == ctx->rank()) mine.push_back({block_of(full, b.offsets, b.sizes), {b.offsets, b.sizes, b.owner}});
  }
  return ShardedTensor::from_local_shards(mine, k.shape, ctx->process_group());
}

void insert_path(StateDict& root, const std::vector<std::string>& segments, StateValue v) {
  StateDict* d = &root;
  for (std::size_t i = 0; i + 1 < segments.size(); ++i) {
    if (!d->contains(segments[i])) d->insert(segments[i], StateDict());
    d = &d->at(segments[i]).as<StateDict>();
  }
  d->insert(segments.back(), std::move(v));
}

// Changes element 0 of `t` (not empty) beyond any tolerance.
at::Tensor changed(const at::Tensor& t) {
  at::Tensor c = t.clone();
  auto flat = c.view({-1});
  if (c.scalar_type() == at::kBool) {
    flat[0] = !flat[0].item<bool>();
  } else if (c.is_complex()) {
    flat[0] = flat[0] + c10::complex<double>(4.0 * (flat[0].abs().item<double>() + 1), 1.0);
  } else {
    flat[0] = flat[0].item<double>() + 4.0 * (std::abs(flat[0].item<double>()) + 1);
  }
  return c;
}

struct Case {
  std::vector<KeySpec> keys;
  double lr = 0.01;
  // The planted fault.
  std::string fault;      // "value", "replica", "swap", "offset", "partial", "layout", "" (none)
  std::size_t target = 0;  // index into keys
  int rank = 0;            // the rank that changes its value (value, replica, layout)
  int mesh_dim = 0;        // swap: along this mesh dim, coordinates a and b
  std::int64_t a = 0;
  std::int64_t b = 0;
  std::size_t block_a = 0;  // offset: these two blocks
  std::size_t block_b = 0;
};

bool has_partial(const KeySpec& k) {
  for (const auto& p : k.placements) {
    if (std::holds_alternative<Partial>(p)) return true;
  }
  return false;
}

// Pieces of `k` at every coordinate of its mesh (the same on every rank when the mesh is not a
// line): sizes and offsets.
void piece_at(const KeySpec& k, const DeviceMesh& mesh, const std::vector<std::int64_t>& coord,
              std::vector<std::int64_t>* sizes, std::vector<std::int64_t>* offsets) {
  detail::local_extent(k.shape, k.placements, mesh, coord, sizes, offsets);
}

std::vector<std::vector<std::int64_t>> all_coords(const DeviceMesh& mesh) {
  std::vector<std::vector<std::int64_t>> out{{}};
  for (auto s : mesh.shape()) {
    std::vector<std::vector<std::int64_t>> next;
    for (const auto& c : out) {
      for (std::int64_t i = 0; i < s; ++i) {
        auto d = c;
        d.push_back(i);
        next.push_back(d);
      }
    }
    out = next;
  }
  return out;
}

std::int64_t numel_of(const std::vector<std::int64_t>& s) {
  std::int64_t n = 1;
  for (auto x : s) n *= x;
  return n;
}

// Chooses a fault the case can show (the same choice on every rank: it depends only on the
// case and the full values, never on the rank). Empty when none applies.
void choose_fault(Case& c, Rng& rng, const std::vector<at::Tensor>& fulls, const MeshPool& pool,
                  int world) {
  // One kind is preferred per case (all of them equally often), tried on every key; the others
  // follow when it fits none.
  std::vector<std::string> kinds{"value", "replica", "swap", "offset", "partial", "layout"};
  const std::string preferred = rng.pick(kinds);
  for (int attempt = 0; attempt < 60; ++attempt) {
    const std::string kind = attempt < 20 ? preferred : rng.pick(kinds);
    const std::size_t t = static_cast<std::size_t>(rng.below(static_cast<int>(c.keys.size())));
    const KeySpec& k = c.keys[t];
    const at::Tensor& full = fulls[t];
    c.fault = kind;
    c.target = t;
    if (kind == "value" || kind == "replica") {
      if (full.numel() == 0 || has_partial(k)) continue;
      // A rank whose piece is not empty: plain tensors always; DTensors: a member with elements.
      std::vector<int> holders;
      bool copies = k.kind == Kind::kPlain && world > 1;
      if (k.kind == Kind::kPlain) {
        for (int r = 0; r < world; ++r) holders.push_back(r);
      } else if (k.kind == Kind::kDTensor) {
        if (pool.lines[k.mesh]) continue;  // which line a rank holds depends on the rank
        const auto& mesh = *pool.meshes[k.mesh];
        for (std::size_t m = 0; m < k.placements.size(); ++m) {
          copies |= std::holds_alternative<Replicate>(k.placements[m]) && mesh.shape()[m] > 1;
        }
        for (const auto& coord : all_coords(mesh)) {
          std::vector<std::int64_t> sizes, offsets;
          piece_at(k, mesh, coord, &sizes, &offsets);
          if (numel_of(sizes) > 0) holders.push_back(mesh.rank_at(coord));
        }
      } else {
        for (const auto& b : k.blocks) {
          if (numel_of(b.sizes) > 0) holders.push_back(b.owner);
        }
      }
      if (holders.empty() || (kind == "replica" && !copies)) continue;
      c.rank = rng.pick(holders);
      return;
    }
    if (kind == "swap") {
      if (k.kind != Kind::kDTensor || pool.lines[k.mesh] || has_partial(k)) continue;
      const auto& mesh = *pool.meshes[k.mesh];
      const int m = rng.below(mesh.ndim());
      if (!std::holds_alternative<Shard>(k.placements[static_cast<std::size_t>(m)]) ||
          mesh.shape()[static_cast<std::size_t>(m)] < 2) {
        continue;
      }
      c.mesh_dim = m;
      c.a = rng.below(static_cast<int>(mesh.shape()[static_cast<std::size_t>(m)]));
      c.b = (c.a + 1 + rng.below(static_cast<int>(mesh.shape()[static_cast<std::size_t>(m)]) - 1)) %
            mesh.shape()[static_cast<std::size_t>(m)];
      // Shows only if some swapped pair has the same shape and other contents.
      bool shows = false;
      for (const auto& coord : all_coords(mesh)) {
        if (coord[static_cast<std::size_t>(m)] != c.a) continue;
        auto other = coord;
        other[static_cast<std::size_t>(m)] = c.b;
        std::vector<std::int64_t> s1, o1, s2, o2;
        piece_at(k, mesh, coord, &s1, &o1);
        piece_at(k, mesh, other, &s2, &o2);
        shows |= s1 == s2 && !at::equal(block_of(full, o1, s1), block_of(full, o2, s2));
      }
      if (!shows) continue;
      return;
    }
    if (kind == "offset") {
      if (k.kind != Kind::kSharded) continue;
      std::vector<std::pair<std::size_t, std::size_t>> pairs;
      for (std::size_t i = 0; i < k.blocks.size(); ++i) {
        for (std::size_t j = i + 1; j < k.blocks.size(); ++j) {
          if (k.blocks[i].sizes == k.blocks[j].sizes && numel_of(k.blocks[i].sizes) > 0 &&
              !at::equal(block_of(full, k.blocks[i].offsets, k.blocks[i].sizes),
                         block_of(full, k.blocks[j].offsets, k.blocks[j].sizes))) {
            pairs.emplace_back(i, j);
          }
        }
      }
      if (pairs.empty()) continue;
      std::tie(c.block_a, c.block_b) = rng.pick(pairs);
      return;
    }
    if (kind == "partial") {
      if (k.kind != Kind::kDTensor || !has_partial(k) || full.numel() == 0 ||
          k.dtype == at::kBool || pool.lines[k.mesh]) {
        continue;
      }
      bool sum_like = true;  // every Partial op sum or avg: a change at coordinate 0 shows
      for (const auto& p : k.placements) {
        const auto* partial = std::get_if<Partial>(&p);
        sum_like &= partial == nullptr || partial->op == PartialOp::kSum || partial->op == PartialOp::kAvg;
      }
      if (!sum_like) continue;
      // The member at coordinate 0 along the Partial dims whose piece has elements.
      const auto& mesh = *pool.meshes[k.mesh];
      std::vector<int> holders;
      for (const auto& coord : all_coords(mesh)) {
        bool zero = true;
        for (std::size_t m = 0; m < coord.size(); ++m) {
          zero &= !std::holds_alternative<Partial>(k.placements[m]) || coord[m] == 0;
        }
        std::vector<std::int64_t> sizes, offsets;
        piece_at(k, mesh, coord, &sizes, &offsets);
        if (zero && numel_of(sizes) > 0) holders.push_back(mesh.rank_at(coord));
      }
      if (holders.empty()) continue;
      c.rank = rng.pick(holders);
      return;
    }
    if (kind == "layout") {
      if (k.kind != Kind::kDTensor || world < 2) continue;
      c.rank = pool.lines[k.mesh] ? rng.below(world) : rng.pick(pool.meshes[k.mesh]->ranks());
      return;
    }
  }
  c.fault.clear();
}

// The other placements a rank that disagrees on the layout uses: one mesh dim changed.
std::vector<Placement> other_placements(const KeySpec& k) {
  std::vector<Placement> p = k.placements;
  if (!std::holds_alternative<Replicate>(p[0])) {
    p[0] = Replicate{};
  } else if (!k.shape.empty()) {
    p[0] = Shard{0};
  } else {
    p[0] = Partial{};
  }
  return p;
}

Case make_case(std::uint64_t seed, const MeshPool& pool, int world, std::vector<at::Tensor>* fulls) {
  Rng rng(seed);
  Case c;
  const int n = 1 + rng.below(4);
  for (int i = 0; i < n; ++i) c.keys.push_back(make_key(rng, i, pool, world));
  c.lr = rng.chance(0.5) ? 0.01 : 0.001;
  fulls->clear();
  for (const auto& k : c.keys) fulls->push_back(full_value(k));
  choose_fault(c, rng, *fulls, pool, world);
  return c;
}

struct Outcome {
  std::vector<std::string> problems;
  std::string local_fault;   // shard-local verdict on the planted fault
  std::string gather_fault;  // gather verdict, reference on rank 0 only
};

// One case on one rank (collective with the other ranks).
Outcome run_case(const Case& c, const std::vector<at::Tensor>& fulls, const MeshPool& pool,
                 const ContextPtr& ctx) {
  Outcome out;
  const int rank = ctx->rank();
  auto problem = [&](const std::string& what) { out.problems.push_back(what); };
  StateDict ref;
  StateDict dist;
  std::vector<std::string> params;
  for (std::size_t i = 0; i < c.keys.size(); ++i) {
    const KeySpec& k = c.keys[i];
    insert_path(ref, k.segments, fulls[i]);
    insert_path(dist, k.segments, make_value(k, fulls[i], pool, ctx, k.blocks));
    if (k.segments.size() == 3) {
      insert_path(ref, {"state", k.segments[1], "step"}, std::int64_t{5});
      insert_path(dist, {"state", k.segments[1], "step"}, std::int64_t{5});
      params.push_back(k.segments[1]);
    }
  }
  if (!params.empty()) {
    StateDict group;
    group.insert("lr", c.lr);
    StateList names;
    for (const auto& p : params) names.emplace_back(p);
    group.insert("params", names);
    ref.insert("param_groups", StateList{group});
    dist.insert("param_groups", StateList{group});
  }

  // 1. The round trip: gather_state_dict gives back every full tensor.
  const StateDict gathered = gather_state_dict(dist);
  for (std::size_t i = 0; i < c.keys.size(); ++i) {
    const KeySpec& k = c.keys[i];
    const StateDict* d = &gathered;
    for (std::size_t j = 0; j + 1 < k.segments.size(); ++j) d = &d->at(k.segments[j]).as<StateDict>();
    const at::Tensor& g = d->at(k.segments.back()).as<at::Tensor>();
    const bool member = k.kind != Kind::kDTensor || mesh_of(k, pool)->contains(rank);
    if (!member) {
      if (g.defined() && g.numel() != 0) problem("'" + k.path + "': a non-member got a value");
      continue;
    }
    if (!g.defined() || g.scalar_type() != fulls[i].scalar_type() || !g.sizes().equals(fulls[i].sizes()) ||
        !at::equal(g, fulls[i])) {
      problem("'" + k.path + "': the round trip did not give back the full tensor");
    }
  }

  // 2. Both strategies pass.
  VerifyOptions local;
  local.context = ctx;
  local.strategy = VerifyStrategy::kShardLocal;
  VerifyOptions gather = local;
  gather.strategy = VerifyStrategy::kGather;
  const StateDict none;
  if (const auto r = verify_state_dict(ref, dist, local); !r) problem("shard-local failed: " + std::string(r.message()));
  if (const auto r = verify_state_dict(rank == 0 ? ref : none, dist, gather); !r) {
    problem("gather failed: " + std::string(r.message()));
  }
  if (c.fault.empty()) return out;

  // 3. The planted fault.
  const KeySpec& k = c.keys[c.target];
  const at::Tensor& full = fulls[c.target];
  StateDict bad = dist;
  StateDict* parent = &bad;
  for (std::size_t j = 0; j + 1 < k.segments.size(); ++j) parent = &parent->at(k.segments[j]).as<StateDict>();
  StateValue* slot = &parent->at(k.segments.back());
  if (c.fault == "value" || c.fault == "replica" || c.fault == "partial") {
    if (rank == c.rank) {
      if (slot->is<at::Tensor>()) {
        *slot = changed(slot->as<at::Tensor>());
      } else if (slot->is<DTensor>()) {
        const DTensor& d = slot->as<DTensor>();
        *slot = DTensor(changed(d.local()), d.mesh(), d.placements(), d.global_shape());
      } else {
        std::vector<LocalShard> shards = slot->as<ShardedTensor>().local_shards();
        for (auto& s : shards) {
          if (s.tensor.numel() > 0) {
            s.tensor = changed(s.tensor);
            break;
          }
        }
        *slot = ShardedTensor::from_local_shards(shards, k.shape, ctx->process_group());
      }
    } else if (slot->is<ShardedTensor>()) {
      // Every rank makes the ShardedTensor again (collective), the others unchanged.
      *slot = ShardedTensor::from_local_shards(slot->as<ShardedTensor>().local_shards(), k.shape,
                                               ctx->process_group());
    }
  } else if (c.fault == "swap") {
    const DTensor& d = slot->as<DTensor>();
    const auto& mesh = *d.mesh();
    if (mesh.contains(rank)) {
      auto coord = mesh.coordinate_of(rank);
      const auto m = static_cast<std::size_t>(c.mesh_dim);
      if (coord[m] == c.a || coord[m] == c.b) {
        auto other = coord;
        other[m] = coord[m] == c.a ? c.b : c.a;
        std::vector<std::int64_t> s1, o1, s2, o2;
        piece_at(k, mesh, coord, &s1, &o1);
        piece_at(k, mesh, other, &s2, &o2);
        if (s1 == s2) *slot = DTensor(block_of(full, o2, s2), d.mesh(), d.placements(), d.global_shape());
      }
    }
  } else if (c.fault == "offset") {
    std::vector<Block> blocks = k.blocks;
    std::swap(blocks[c.block_a].offsets, blocks[c.block_b].offsets);
    // Each block keeps its data: block a's data now claims block b's place, and the reverse.
    std::vector<LocalShard> mine;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].owner != rank) continue;
      mine.push_back({block_of(full, k.blocks[i].offsets, k.blocks[i].sizes),
                      {blocks[i].offsets, blocks[i].sizes, blocks[i].owner}});
    }
    *slot = ShardedTensor::from_local_shards(mine, k.shape, ctx->process_group());
  } else if (c.fault == "layout") {
    if (rank == c.rank) *slot = distribute_tensor(full, slot->as<DTensor>().mesh(), other_placements(k));
  }
  const auto l = verify_state_dict(ref, bad, local);
  const auto g = verify_state_dict(rank == 0 ? ref : none, bad, gather);
  out.local_fault = l ? "" : l.message();
  out.gather_fault = g ? "" : g.message();
  return out;
}

TEST(LayoutFuzz, RoundTripsPassAndEveryPlantedFaultIsNamed) {
  const std::uint64_t seed = env_number("C10DTEST_FUZZ_SEED", 1);
  const auto cases = static_cast<int>(env_number("C10DTEST_FUZZ_CASES", 1000));
  const auto first = static_cast<int>(env_number("C10DTEST_FUZZ_FIRST", 0));
  const auto world = static_cast<int>(env_number("C10DTEST_FUZZ_WORLD", 4));
  auto store = c10::make_intrusive<c10d::HashStore>();
  // outcomes[case][rank]
  std::vector<std::vector<Outcome>> outcomes(static_cast<std::size_t>(cases),
                                             std::vector<Outcome>(static_cast<std::size_t>(world)));
  std::vector<Case> specs(static_cast<std::size_t>(cases));
  std::vector<std::string> described(static_cast<std::size_t>(cases));  // by rank 0
  std::vector<std::string> errors(static_cast<std::size_t>(world));
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        ContextOptions options;
        options.group.timeout = std::chrono::seconds(60);
        const ContextPtr ctx = make_context(store, r, world, options);
        ScopedContext use(ctx);
        const MeshPool pool(ctx, world);
        std::vector<at::Tensor> fulls;
        for (int i = 0; i < cases; ++i) {
          const Case c = make_case(mix(seed * 1000003 + static_cast<std::uint64_t>(first + i)), pool,
                                   world, &fulls);
          if (r == 0) {
            specs[static_cast<std::size_t>(i)] = c;
            for (const auto& k : c.keys) described[static_cast<std::size_t>(i)] += "\n  " + k.describe(pool, 0);
          }
          outcomes[static_cast<std::size_t>(i)][static_cast<std::size_t>(r)] =
              run_case(c, fulls, pool, ctx);
        }
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(errors[static_cast<std::size_t>(r)], "") << "rank " << r << " threw";
  }
  std::map<std::string, int> faults;
  int failed = 0;
  for (int i = 0; i < cases; ++i) {
    const auto& per_rank = outcomes[static_cast<std::size_t>(i)];
    const Case& c = specs[static_cast<std::size_t>(i)];
    std::vector<std::string> wrong;
    for (int r = 0; r < world; ++r) {
      for (const auto& p : per_rank[static_cast<std::size_t>(r)].problems) {
        wrong.push_back("rank " + std::to_string(r) + ": " + p);
      }
    }
    if (!c.fault.empty()) {
      ++faults[c.fault];
      const KeySpec& k = c.keys[c.target];
      const std::string& m = per_rank[0].local_fault;
      if (m.empty()) wrong.push_back("the planted fault (" + c.fault + ") passed shard-local");
      if (per_rank[0].gather_fault.empty()) wrong.push_back("the planted fault (" + c.fault + ") passed gather");
      if (m.find("'" + k.path + "'") == std::string::npos) {
        wrong.push_back("the message does not name '" + k.path + "': " + m);
      }
      if (per_rank[0].gather_fault != m) {
        wrong.push_back("the strategies disagree:\n shard-local: " + m + "\n gather: " +
                        per_rank[0].gather_fault);
      }
      for (int r = 1; r < world; ++r) {
        if (per_rank[static_cast<std::size_t>(r)].local_fault != m ||
            per_rank[static_cast<std::size_t>(r)].gather_fault != per_rank[0].gather_fault) {
          wrong.push_back("rank " + std::to_string(r) + " got another message");
        }
      }
    } else {
      ++faults["(none)"];
    }
    if (wrong.empty()) continue;
    if (++failed > 10) continue;
    std::ostringstream os;
    os << "case " << first + i << " of seed " << seed << ", fault '" << c.fault << "'";
    if (!c.fault.empty()) os << " on key " << c.target << ", rank " << c.rank;
    os << ":";
    os << described[static_cast<std::size_t>(i)];
    for (const auto& w : wrong) os << "\n  - " << w;
    os << "\n  replay: C10DTEST_FUZZ_SEED=" << seed << " C10DTEST_FUZZ_FIRST=" << first + i
       << " C10DTEST_FUZZ_CASES=1 C10DTEST_FUZZ_WORLD=" << world << " layout_fuzz_test";
    ADD_FAILURE() << os.str();
  }
  EXPECT_EQ(failed, 0) << "of " << cases << " cases";
  std::cout << "layout fuzz: seed " << seed << ", cases " << first << ".." << first + cases - 1
            << ", world " << world << ": " << cases - failed << " of " << cases << " passed in "
            << seconds << " s; faults:";
  for (const auto& [name, n] : faults) std::cout << " " << name << " " << n;
  std::cout << "\n";
}

}  // namespace
}  // namespace c10dtest
