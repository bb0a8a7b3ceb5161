// The state-dict verifier at 1, 2 and 4 ranks: both strategies on the same inputs give the same
// verdict and the same message; diagnostics name key, ranks, shard, indices and values.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/verify.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest-spi.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

namespace {

using c10dtest::DeviceMesh;
using c10dtest::DTensor;
using c10dtest::Replicate;
using c10dtest::Shard;
using c10dtest::StateDict;
using c10dtest::StateList;
using c10dtest::VerifyOptions;
using c10dtest::VerifyStrategy;
using c10dtest::StateValue;
using ::testing::HasSubstr;
using ::testing::Not;

class Verifier : public c10dtest::DistributedTest, public c10dtest::VerifyStateDictMixin {
 protected:
  // A reference dict with awkward shapes and a sharded copy of it: uneven Shard(0), Shard(1),
  // Replicate, a 2-D mesh (when the world is even), a ShardedTensor with two shards per rank
  // along dim 1, a plain tensor, an integer tensor, scalars, a nested dict and lists.
  void SetUp() override {
    DistributedTest::SetUp();
    if (IsSkipped()) return;
    const auto mesh = DeviceMesh::create({world_size()});
    add("w.rows", at::randn({7, 5}), [&](const at::Tensor& t) {
      return c10dtest::distribute_tensor(t, mesh, {Shard{0}});
    });
    add("w.cols", at::randn({3, 9}, at::kDouble), [&](const at::Tensor& t) {
      return c10dtest::distribute_tensor(t, mesh, {Shard{1}});
    });
    add("w.replicated", at::randn({4}), [&](const at::Tensor& t) {
      return c10dtest::distribute_tensor(t, mesh, {Replicate{}});
    });
    add("w.bf16", at::randn({6, 2}).to(at::kBFloat16), [&](const at::Tensor& t) {
      return c10dtest::distribute_tensor(t, mesh, {Shard{0}});
    });
    if (world_size() % 2 == 0) {
      const auto mesh2 = DeviceMesh::create({2, world_size() / 2});
      add("w.hsdp", at::randn({10, 3}), [&](const at::Tensor& t) {
        return c10dtest::distribute_tensor(t, mesh2, {Replicate{}, Shard{0}});
      });
    }
    {
      const at::Tensor full = at::randn({4, 2 * world_size() + 1});
      reference_.insert("w.sharded", full);
      std::vector<c10dtest::LocalShard> shards;
      const std::int64_t c0 = 2 * rank();
      shards.push_back({full.narrow(1, c0, 1).clone(), {{0, c0}, {4, 1}, rank()}});
      const std::int64_t len = rank() == world_size() - 1 ? 2 : 1;
      shards.push_back({full.narrow(1, c0 + 1, len).clone(), {{0, c0 + 1}, {4, len}, rank()}});
      dist_.insert("w.sharded", c10dtest::ShardedTensor::from_local_shards(
                                    shards, {4, 2 * world_size() + 1}, process_group()));
    }
    const at::Tensor plain = at::randn({2, 2});
    reference_.insert("plain", plain);
    dist_.insert("plain", plain.clone());
    const at::Tensor ids = at::arange(12, at::kLong);
    reference_.insert("ids", ids);
    dist_.insert("ids", c10dtest::distribute_tensor(ids, mesh, {Shard{0}}));
    StateDict nested;
    nested.insert("step", std::int64_t{3});
    nested.insert("lr", 0.25);
    nested.insert("betas", StateList{0.9, 0.999});
    reference_.insert("opt", nested);
    dist_.insert("opt", nested);
  }

  template <typename F>
  void add(const std::string& key, const at::Tensor& full, F&& shard) {
    reference_.insert(key, full);
    dist_.insert(key, shard(full));
  }

  // The message of a verification with `strategy` (empty when it passes); with `only_rank0`
  // the other ranks pass an empty reference.
  std::string run(const StateDict& dist, VerifyStrategy strategy, bool only_rank0 = false,
                  VerifyOptions options = {}) {
    options.strategy = strategy;
    const StateDict empty;
    const auto r = c10dtest::verify_state_dict(only_rank0 && rank() != 0 ? empty : reference_,
                                               dist, options);
    return r ? std::string() : std::string(r.message());
  }

  // The three ways to run: every strategy must give `expected` (or, when empty, pass).
  void expect_everywhere(const StateDict& dist, const std::string& expected_part) {
    const std::string local = run(dist, VerifyStrategy::kShardLocal);
    const std::string gathered = run(dist, VerifyStrategy::kGather);
    const std::string to_rank0 = run(dist, VerifyStrategy::kAuto, /*only_rank0=*/true);
    if (expected_part.empty()) {
      EXPECT_EQ(local, "");
    } else {
      EXPECT_THAT(local, HasSubstr(expected_part));
    }
    EXPECT_EQ(gathered, local);
    EXPECT_EQ(to_rank0, local);
  }

  // `dist_` with element `index` of `key`'s local piece changed on `on_rank`.
  StateDict corrupted(const std::string& key, int on_rank, double delta) {
    StateDict d = dist_;
    if (rank() == on_rank) {
      auto& v = d.at(key);
      at::Tensor local = v.is<DTensor>() ? v.as<DTensor>().local() : v.as<at::Tensor>();
      if (local.numel() > 0) {
        at::Tensor changed = local.clone();
        changed.view({-1})[0] += delta;
        if (v.is<DTensor>()) {
          const auto& dt = v.as<DTensor>();
          v = DTensor(changed, dt.mesh(), dt.placements(), dt.global_shape());
        } else {
          v = changed;
        }
      }
    }
    return d;
  }

  StateDict reference_;
  StateDict dist_;
};

TEST_F(Verifier, CorrectShardsPassWithEveryStrategy) {
  expect_everywhere(dist_, "");
  EXPECT_TRUE(verify_msd(reference_, dist_));
  C10DTEST_EXPECT_STATE_DICT_MATCHES(reference_, dist_);
  EXPECT_THAT(dist_, c10dtest::StateDictMatches(reference_));
}

TEST_F(Verifier, OneWrongElementIsNamedWithRankShardAndGlobalIndex) {
  const int last = world_size() - 1;
  const auto d = corrupted("w.rows", last, 0.5);
  const auto& dt = dist_.at("w.rows").as<DTensor>();
  const auto offsets = dt.global_offset_of(last);
  if (dt.local_shape_of(last)[0] == 0) GTEST_SKIP() << "the last rank holds no rows";
  const std::string where = world_size() == 1
                                ? "'w.rows' (DTensor [7, 5] Float [Shard(0)])"
                                : "'w.rows' (DTensor [7, 5] Float [Shard(0)]) on rank " +
                                      std::to_string(last);
  expect_everywhere(d, where);
  const std::string msg = run(d, VerifyStrategy::kShardLocal);
  EXPECT_THAT(msg, HasSubstr("reference: 1 of "));
  // Counted over the value's 35 elements, not the shard's.
  EXPECT_THAT(msg, HasSubstr("1 of 35 elements differ (2.85714%)"));
  EXPECT_THAT(msg, HasSubstr("first at [" + std::to_string(offsets[0]) + ", 0]"));
  EXPECT_THAT(msg, HasSubstr("max abs diff 0.5"));
  EXPECT_THAT(msg, HasSubstr("allowed: atol 1e-05 + rtol 1.3e-06 * |expected|"));
}

TEST_F(Verifier, DivergentReplicaIsCaught) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const auto d = corrupted("w.replicated", 1, 1.0);
  expect_everywhere(d, "'w.replicated' (DTensor [4] Float [Replicate()]) on rank 1: 1 of 4 "
                       "elements differ");
}

TEST_F(Verifier, WrongValuesOnSeveralRanksAreCountedTogether) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  StateDict d = dist_;
  // Every rank's piece of the plain tensor and of the integer tensor is wrong.
  d.insert("plain", reference_.at("plain").as<at::Tensor>() + 1.0);
  const auto& ids = d.at("ids").as<DTensor>();
  d.insert("ids", DTensor(ids.local() + 1, ids.mesh(), ids.placements(), ids.global_shape()));
  const std::string msg = run(d, VerifyStrategy::kShardLocal);
  // The plain tensor is one copy per rank: counted per copy, not added up.
  EXPECT_THAT(msg, HasSubstr("'plain' (Tensor [2, 2] Float) on every rank: 4 of 4 elements "
                             "differ (100%) in each of " + std::to_string(world_size()) +
                             " copies;"));
  EXPECT_THAT(msg, HasSubstr("'ids' (DTensor [12] Long [Shard(0)]) on every rank (first in the "
                             "shard of rank 0 at offsets [0], sizes ["));
  EXPECT_THAT(msg, HasSubstr("12 of 12 elements differ"));
  EXPECT_THAT(msg, HasSubstr("allowed: atol 0 + rtol 0"));
  expect_everywhere(d, "reference: 2 of ");
}

TEST_F(Verifier, MissingUnexpectedAndPlainValuesAreListed) {
  StateDict d = dist_;
  d.rename("w.cols", "w.columns");
  d.at("opt").as<StateDict>().insert("step", std::int64_t{2});
  d.at("opt").as<StateDict>().insert("betas", StateList{0.9, 0.99});
  const std::string msg = run(d, VerifyStrategy::kShardLocal);
  EXPECT_THAT(msg, HasSubstr("keys differ (1 missing), 1 unexpected"));
  EXPECT_THAT(msg, HasSubstr("missing key(s): 'w.cols'"));
  EXPECT_THAT(msg, HasSubstr("unexpected key(s): 'w.columns'"));
  EXPECT_THAT(msg, HasSubstr("'opt.step': 2 vs expected 3"));
  EXPECT_THAT(msg, HasSubstr("'opt.betas': [0.9, 0.99] vs expected [0.9, 0.999]"));
  expect_everywhere(d, "'opt.step'");
}

TEST_F(Verifier, ShapeDtypeAndTilingFaultsAreReportedAsSuch) {
  StateDict d = dist_;
  const auto mesh = DeviceMesh::create({world_size()});
  d.insert("w.rows", c10dtest::distribute_tensor(at::zeros({7, 6}), mesh, {Shard{0}}));
  d.insert("plain", reference_.at("plain").as<at::Tensor>().to(at::kDouble));
  // Shards that leave the last column uncovered (the last rank's second shard is one too short).
  const at::Tensor full = reference_.at("w.sharded").as<at::Tensor>();
  std::vector<c10dtest::LocalShard> shards;
  const std::int64_t c0 = 2 * rank();
  shards.push_back({full.narrow(1, c0, 2).clone(), {{0, c0}, {4, 2}, rank()}});
  d.insert("w.sharded", c10dtest::ShardedTensor::from_local_shards(
                            shards, {4, 2 * world_size() + 1}, process_group()));
  const std::string msg = run(d, VerifyStrategy::kShardLocal);
  EXPECT_THAT(msg, HasSubstr("'w.rows' (DTensor [7, 6] Float [Shard(0)]) shape [7, 6] vs "
                             "expected [7, 5]"));
  EXPECT_THAT(msg, HasSubstr("'plain' (Tensor [2, 2] Double) dtype Double vs expected Float"));
  EXPECT_THAT(msg, HasSubstr("'w.sharded' (ShardedTensor [4, " +
                             std::to_string(2 * world_size() + 1) + "] Float " +
                             std::to_string(world_size()) +
                             " shards) shards do not tile the tensor"));
  expect_everywhere(d, "reference: 3 of ");
}

// Pieces of every block shape: some are one run of the reference's memory (read in place), the
// others are not (compared through a view). A wrong last element in any of them is found where
// it lies, and correct pieces pass. Rank 0 holds every piece.
TEST_F(Verifier, PiecesOfEveryBlockShapeAreComparedWhereTheyLie) {
  const std::vector<std::int64_t> shape{3, 4, 6};
  const at::Tensor full = at::randn(shape);
  const std::vector<std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>>> blocks{
      {{0, 0, 0}, {1, 4, 6}},  // a whole slab: one run
      {{1, 0, 0}, {1, 1, 6}},  // a row: one run
      {{1, 1, 0}, {1, 3, 3}},  // half of three rows: a view
      {{1, 1, 3}, {1, 3, 3}},
      {{2, 0, 0}, {1, 2, 6}},  // two rows: one run
      {{2, 2, 0}, {1, 1, 6}},
      {{2, 3, 0}, {1, 1, 5}},  // part of a row: one run
      {{2, 3, 5}, {1, 1, 1}},
  };
  auto sharded = [&](int wrong) {
    std::vector<c10dtest::LocalShard> shards;
    for (std::size_t i = 0; i < blocks.size() && rank() == 0; ++i) {
      const auto& [offsets, sizes] = blocks[i];
      at::Tensor piece = full;
      for (std::size_t d = 0; d < shape.size(); ++d) {
        piece = piece.narrow(static_cast<std::int64_t>(d), offsets[d], sizes[d]);
      }
      piece = piece.clone();
      if (static_cast<int>(i) == wrong) piece.view({-1})[piece.numel() - 1] += 1.0;
      shards.push_back({piece, {offsets, sizes, 0}});
    }
    StateDict d;
    d.insert("w", c10dtest::ShardedTensor::from_local_shards(shards, shape, process_group()));
    return d;
  };
  auto text = [](const std::vector<std::int64_t>& v) {
    std::string out = "[";
    for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
    return out + "]";
  };
  StateDict ref;
  ref.insert("w", full);
  std::swap(ref, reference_);
  expect_everywhere(sharded(-1), "");
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const auto& [offsets, sizes] = blocks[i];
    std::vector<std::int64_t> last(shape.size());
    for (std::size_t d = 0; d < shape.size(); ++d) last[d] = offsets[d] + sizes[d] - 1;
    SCOPED_TRACE("block " + std::to_string(i));
    expect_everywhere(sharded(static_cast<int>(i)),
                      "shard at offsets " + text(offsets) + ", sizes " + text(sizes) +
                          "): 1 of 72 elements differ (");
    EXPECT_THAT(run(sharded(static_cast<int>(i)), VerifyStrategy::kShardLocal),
                HasSubstr("first at " + text(last)));
  }
  std::swap(ref, reference_);
}

TEST_F(Verifier, ManyBadKeysGiveABoundedMessage) {
  StateDict ref;
  StateDict d;
  for (int i = 0; i < 300; ++i) {
    const at::Tensor t = at::full({1000}, static_cast<float>(i));
    ref.insert("layer" + std::to_string(i) + ".weight", t);
    d.insert("layer" + std::to_string(i) + ".weight", t + 1);
  }
  for (int i = 0; i < 100; ++i) d.insert("extra" + std::to_string(i), std::int64_t{i});
  const auto r = c10dtest::verify_state_dict(ref, d);
  ASSERT_FALSE(r);
  const std::string msg = r.message();
  EXPECT_THAT(msg, HasSubstr("300 of 300 keys differ, 100 unexpected"));
  EXPECT_THAT(msg, HasSubstr("... and 80 more"));
  EXPECT_THAT(msg, HasSubstr("... and 290 more keys differ in value: 'layer10.weight'"));
  EXPECT_LT(msg.size(), 6000u) << msg;
}

TEST_F(Verifier, ShardLocalNeedsTheReferenceEverywhere) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const std::string msg = run(dist_, VerifyStrategy::kShardLocal, /*only_rank0=*/true);
  EXPECT_THAT(msg, HasSubstr("shard-local verification needs the reference on every rank"));
}

TEST_F(Verifier, ToleranceOverridesAndNan) {
  StateDict d = corrupted("plain", 0, 1e-3);
  EXPECT_FALSE(c10dtest::verify_state_dict(reference_, d));
  VerifyOptions loose;
  loose.compare.rtol = 0.0;
  loose.compare.atol = 1e-2;
  EXPECT_TRUE(c10dtest::verify_state_dict(reference_, d, loose));
  StateDict ref;
  ref.insert("x", at::full({3}, NAN));
  StateDict nan_dist;
  nan_dist.insert("x", c10dtest::distribute_tensor(at::full({3}, NAN),
                                                   DeviceMesh::create({world_size()}), {Shard{0}}));
  EXPECT_FALSE(c10dtest::verify_state_dict(ref, nan_dist));
  VerifyOptions nan_ok;
  nan_ok.compare.equal_nan = true;
  EXPECT_TRUE(c10dtest::verify_state_dict(ref, nan_dist, nan_ok));
}

TEST_F(Verifier, MacrosAndMatchersReportTheSameMessage) {
  const auto d = corrupted("plain", 0, 3.0);
  EXPECT_NONFATAL_FAILURE(C10DTEST_EXPECT_STATE_DICT_MATCHES(reference_, d),
                          "'plain' (Tensor [2, 2] Float)");
  EXPECT_NONFATAL_FAILURE(EXPECT_THAT(d, c10dtest::StateDictMatches(reference_)),
                          "max abs diff 3");
  const at::Tensor full = reference_.at("w.rows").as<at::Tensor>();
  C10DTEST_EXPECT_TENSOR_MATCHES(full, dist_.at("w.rows"));
  EXPECT_TRUE(compare_tensor(full, dist_.at("w.rows")));
  EXPECT_THAT(dist_.at("w.rows"), c10dtest::TensorMatches(full));
  EXPECT_FALSE(compare_tensor(full + 1, dist_.at("w.rows")));
}

// The optimizer side: real values compared, ids mapped to FQNs, param groups checked.
// Meshes that do not cover the world, Partial placements, layouts the ranks disagree on and
// values that cannot be read: every strategy gives one verdict, on every rank, naming the key.
class MeshEdges : public c10dtest::DistributedTest {
 protected:
  // The verdict (empty when it passes) of shard-local, gather and auto with the reference on
  // rank 0 only; all three must give the same message.
  std::string verdict(const StateDict& ref, const StateDict& dist, VerifyOptions options = {}) {
    std::vector<std::string> got;
    for (const auto strategy : {VerifyStrategy::kShardLocal, VerifyStrategy::kGather,
                                VerifyStrategy::kAuto}) {
      options.strategy = strategy;
      const bool only_rank0 = strategy == VerifyStrategy::kAuto;
      const auto r = c10dtest::verify_state_dict(only_rank0 && rank() != 0 ? StateDict() : ref,
                                                 dist, options);
      got.push_back(r ? std::string() : std::string(r.message()));
    }
    EXPECT_EQ(got[1], got[0]) << "gather and shard-local disagree";
    EXPECT_EQ(got[2], got[0]) << "reference on rank 0 only and shard-local disagree";
    return got[0];
  }

  // The first `n` world ranks (at least one).
  static std::vector<int> first_ranks(int n) {
    std::vector<int> r(static_cast<std::size_t>(std::max(1, n)));
    for (std::size_t i = 0; i < r.size(); ++i) r[i] = static_cast<int>(i);
    return r;
  }

  static void add_one(const StateDict& dist, const std::string& key, double delta) {
    dist.at(key).as<DTensor>().local().view({-1})[0].add_(delta);
  }
};

TEST_F(MeshEdges, SubMeshValueIsCheckedByItsRanksAndTheVerdictReachesEveryRank) {
  const int half = std::max(1, world_size() / 2);
  const auto sub = DeviceMesh::create({half}, first_ranks(half));
  const auto world = DeviceMesh::create({world_size()});
  const at::Tensor w = at::arange(24, at::kFloat).reshape({6, 4});
  const at::Tensor b = at::randn({5});
  StateDict ref;
  ref.insert("sub.w", w);
  ref.insert("world.b", b);
  StateDict dist;
  dist.insert("sub.w", c10dtest::distribute_tensor(w, sub, {Shard{0}}));
  dist.insert("world.b", c10dtest::distribute_tensor(b, world, {Shard{0}}));
  if (!sub->contains(rank())) {
    EXPECT_EQ(dist.at("sub.w").as<DTensor>().local().numel(), 0);  // as PyTorch: empty
  }
  EXPECT_EQ(verdict(ref, dist), "");
  // From a source rank: the ranks outside the mesh know neither shape nor dtype.
  StateDict from_source;
  from_source.insert("sub.w", c10dtest::distribute_tensor(rank() == 0 ? w : at::Tensor(), sub,
                                                          {Shard{0}}, 0));
  StateDict ref_w;
  ref_w.insert("sub.w", w);
  EXPECT_EQ(verdict(ref_w, from_source), "");

  const int wrong = half - 1;
  if (rank() == wrong) add_one(dist, "sub.w", 1.0);
  const std::string m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr("'sub.w'"));
  if (world_size() > 1) {
    EXPECT_THAT(m, HasSubstr("on rank " + std::to_string(wrong)));
  }
  EXPECT_THAT(m, ::testing::Not(HasSubstr("world.b")));
}

TEST_F(MeshEdges, PartialPlacementsAreVerifiedAsTheirReduction) {
  const auto mesh = DeviceMesh::create({world_size()});
  using c10dtest::Partial;
  using c10dtest::PartialOp;
  for (const auto op : {PartialOp::kSum, PartialOp::kAvg, PartialOp::kProduct, PartialOp::kMax,
                        PartialOp::kMin}) {
    SCOPED_TRACE(c10dtest::to_string(op));
    const at::Tensor full = at::randn({5, 3}, at::kDouble);
    StateDict ref;
    ref.insert("p", full);
    StateDict dist;
    dist.insert("p", c10dtest::distribute_tensor(full, mesh, {Partial{op}}));
    EXPECT_EQ(verdict(ref, dist), "");
    // A value that changes the reduction: up for all but min, down for min.
    const int wrong = world_size() - 1;
    if (rank() == wrong) add_one(dist, "p", op == PartialOp::kMin ? -1.0 : 1.0);
    const std::string m = verdict(ref, dist);
    EXPECT_THAT(m, HasSubstr("'p' (DTensor [5, 3] Double [Partial(" +
                             std::string(c10dtest::to_string(op)) + ")])"));
    EXPECT_THAT(m, HasSubstr("first at [0, 0]"));
  }
  // Partial beside Shard on a 2-D mesh, and a bool sum ("or").
  if (world_size() % 2 == 0) {
    const auto mesh2 = DeviceMesh::create({2, world_size() / 2});
    const at::Tensor full = at::randn({7, 4});
    const at::Tensor flags = at::rand({9}).gt(0.5);
    StateDict ref;
    ref.insert("w", full);
    ref.insert("flags", flags);
    StateDict dist;
    dist.insert("w", c10dtest::distribute_tensor(full, mesh2, {Partial{}, Shard{0}}));
    dist.insert("flags", c10dtest::distribute_tensor(flags, mesh2, {Shard{0}, Partial{}}));
    EXPECT_EQ(verdict(ref, dist), "");
  }
  // An op the dtype cannot take is refused where the DTensor is made.
  EXPECT_THROW(c10dtest::distribute_tensor(at::arange(4), mesh, {Partial{PartialOp::kAvg}}),
               c10dtest::ShardingError);
}

TEST_F(MeshEdges, RanksThatDisagreeOnAKeysLayoutAreNamed) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const int half = world_size() / 2;
  std::vector<int> low = first_ranks(half);
  const auto mesh_low = DeviceMesh::create({half}, low);
  const auto world = DeviceMesh::create({world_size()});
  const at::Tensor w = at::randn({4, 2});
  StateDict ref;
  ref.insert("w", w);
  ref.insert("ok", w);
  // The low half replicates the value on its own mesh, the others on the world's, which holds
  // the low half too: every value is right, the layouts are not.
  StateDict dist;
  dist.insert("w", c10dtest::distribute_tensor(w, rank() < half ? mesh_low : world, {Replicate{}}));
  dist.insert("ok", w.clone());
  std::string m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr("'w': the ranks disagree on its layout: DTensor [Replicate()] on " +
                           mesh_low->describe()));
  EXPECT_THAT(m, HasSubstr(world->describe()));
  EXPECT_THAT(m, HasSubstr("1 of 2 keys differ"));
  // The same placements on meshes of another shape.
  if (world_size() % 2 == 0) {
    const auto grid = DeviceMesh::create({2, world_size() / 2});
    dist.insert("w", rank() < half ? c10dtest::distribute_tensor(w, world, {Shard{0}})
                                   : c10dtest::distribute_tensor(w, grid, {Shard{0}, Replicate{}}));
    m = verdict(ref, dist);
    EXPECT_THAT(m, HasSubstr("'w': the ranks disagree on its layout"));
  }
}

// The lines of a sub-mesh (a DTensor on mesh->sub_mesh(1), as tensor parallelism inside each
// row of a 2-D mesh) are disjoint meshes of one shape: each line holds its own copy.
TEST_F(MeshEdges, SubMeshLinesEachHoldACopy) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  if (world_size() % 2 != 0) GTEST_SKIP() << "needs an even world";
  const auto grid = DeviceMesh::create({2, world_size() / 2});
  const auto row = grid->sub_mesh(1);
  const at::Tensor w = at::randn({6, 3});
  StateDict ref;
  ref.insert("w", w);
  StateDict dist;
  dist.insert("w", c10dtest::distribute_tensor(w.clone(), row, {Shard{0}}));
  EXPECT_EQ(verdict(ref, dist), "");
  // One rank of the second row wrong: one copy differs, the other is right.
  const int last = world_size() - 1;
  if (rank() == last) add_one(dist, "w", 1.0);
  std::string m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr("'w' (DTensor [6, 3] Float [Shard(0)]) on rank " +
                           std::to_string(last)));
  EXPECT_THAT(m, HasSubstr("1 of 18 elements differ (5.55556%);"));
  // The first element of every piece, in both rows: counted per copy.
  if (rank() != last) add_one(dist, "w", 1.0);
  m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr(std::to_string(world_size() / 2) + " of 18 elements differ (")) << m;
  EXPECT_THAT(m, HasSubstr("in each of 2 copies")) << m;
  EXPECT_THAT(m, Not(HasSubstr("disagree"))) << m;
}

TEST_F(MeshEdges, MetaAndUndefinedValuesGiveOneMessageForEveryStrategy) {
  const at::Tensor w = at::randn({3});
  StateDict ref;
  ref.insert("meta", w);
  ref.insert("undefined", w);
  StateDict dist;
  dist.insert("meta", rank() == 0 ? at::empty({3}, at::TensorOptions().device(at::kMeta)) : w.clone());
  dist.insert("undefined", at::Tensor());
  std::string m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr("'meta' (Tensor [3] Float) is on the meta device"));
  EXPECT_THAT(m, HasSubstr("'undefined'"));
  EXPECT_THAT(m, HasSubstr("holds an undefined tensor"));
  VerifyOptions device;
  device.check_device = true;
  m = verdict(ref, dist, device);
  EXPECT_THAT(m, HasSubstr("'meta' (Tensor [3] Float) device meta vs expected cpu"));
}

// Messages lead with the cause: the first line names a key, structural findings come before
// value differences and are never cut, counts are per distinct element (copies are counted as
// copies), NaN and infinity are named, and every strategy gives the same text.
class Messages : public MeshEdges, public c10dtest::VerifyStateDictMixin {
 protected:
  static std::string first_line(const std::string& m) { return m.substr(0, m.find('\n')); }
};

TEST_F(Messages, FirstLineNamesTheFirstDifferingKey) {
  const at::Tensor w = at::randn({6, 2});
  StateDict ref;
  ref.insert("a", w);
  ref.insert("b", w + 1);
  ref.insert("c", w + 2);
  StateDict dist;
  dist.insert("a", w.clone());
  dist.insert("b", c10dtest::distribute_tensor(w + 1, DeviceMesh::create({world_size()}), {Shard{0}}));
  dist.insert("c", w + 2);
  EXPECT_EQ(verdict(ref, dist), "");
  if (rank() == 0) add_one(dist, "b", 1.0);
  std::string m = verdict(ref, dist);
  EXPECT_EQ(first_line(m), "state dict does not match the reference: 1 of 3 keys differ: 'b'");
  // Several keys: the first of the report (what is missing comes first).
  dist.erase("c");
  dist.insert("a", w + 5);
  m = verdict(ref, dist);
  EXPECT_EQ(first_line(m), "state dict does not match the reference: 3 of 3 keys differ (1 missing); "
                           "first 'c' (missing)");
  dist.insert("c", w + 2);
  dist.insert("d", w);
  m = verdict(ref, dist);
  EXPECT_EQ(first_line(m), "state dict does not match the reference: 2 of 3 keys differ, 1 "
                           "unexpected; first 'd' (unexpected)");
}

TEST_F(Messages, HyperparametersAndStructureComeFirstAndAreNeverCut) {
  // An optimizer-like dict whose lr differs: every state value differs because of it.
  StateDict ref;
  StateDict dist;
  StateDict state;
  StateDict dist_state;
  for (int i = 0; i < 30; ++i) {
    const at::Tensor t = at::full({8}, static_cast<float>(i));
    StateDict p;
    p.insert("exp_avg", t);
    state.insert("p" + std::to_string(i), p);
    StateDict q;
    q.insert("exp_avg", t + 1);
    dist_state.insert("p" + std::to_string(i), q);
  }
  // A shape difference among the last keys.
  state.insert("z", at::zeros({3}));
  dist_state.insert("z", at::zeros({4}));
  ref.insert("state", state);
  dist.insert("state", dist_state);
  StateDict group;
  group.insert("lr", 0.1);
  ref.insert("param_groups", StateList{group});
  group.insert("lr", 0.01);
  dist.insert("param_groups", StateList{group});
  VerifyOptions few;
  few.max_reported_keys = 3;
  const std::string m = verdict(ref, dist, few);
  EXPECT_EQ(first_line(m), "state dict does not match the reference: 32 of 32 keys differ; first "
                           "'state.z'");
  const auto z = m.find("'state.z' (Tensor [4] Float) shape [4] vs expected [3]");
  const auto lr = m.find("'param_groups.0.lr': 0.01 vs expected 0.1");
  const auto values = m.find("'state.p0.exp_avg' (Tensor [8] Float)");
  ASSERT_NE(z, std::string::npos) << m;
  ASSERT_NE(lr, std::string::npos) << m;
  ASSERT_NE(values, std::string::npos) << m;
  EXPECT_LT(z, values);
  EXPECT_LT(lr, values);
  EXPECT_THAT(m, HasSubstr("... and 27 more keys differ in value: 'state.p3.exp_avg'"));
}

TEST_F(Messages, CopiesAreCountedOnceAndNamedByRank) {
  const int last = world_size() - 1;
  StateDict ref;
  ref.insert("step", at::scalar_tensor(3.0, at::kDouble));
  StateDict dist;
  dist.insert("step", at::scalar_tensor(4.0, at::kDouble));
  std::string m = verdict(ref, dist);
  if (world_size() == 1) {
    EXPECT_THAT(m, HasSubstr("'step' (Tensor [] Double): 1 of 1 elements differ (100%); first at []"));
  } else {
    EXPECT_THAT(m, HasSubstr("'step' (Tensor [] Double) on every rank: 1 of 1 elements differ "
                             "(100%) in each of " + std::to_string(world_size()) + " copies;"));
  }
  dist.insert("step", at::scalar_tensor(rank() == last ? 4.0 : 3.0, at::kDouble));
  m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr("1 of 1 elements differ (100%); first at []"));
  if (world_size() > 1) {
    EXPECT_THAT(m, HasSubstr("on rank " + std::to_string(last) + ":"));
  }
  // A sharded copy per row of a 2-D mesh: each copy's pieces are added up, the copies are not.
  if (world_size() % 2 == 0) {
    const auto mesh2 = DeviceMesh::create({2, world_size() / 2});
    const at::Tensor full = at::randn({10, 3});
    ref.insert("w", full);
    ref.erase("step");
    StateDict sharded;
    sharded.insert("w", c10dtest::distribute_tensor(full.clone(), mesh2, {Replicate{}, Shard{0}}));
    add_one(sharded, "w", 1.0);  // the first element of every piece, in both copies
    m = verdict(ref, sharded);
    const std::int64_t pieces = world_size() / 2;
    EXPECT_THAT(m, HasSubstr(std::to_string(pieces) + " of 30 elements differ (" ) ) << m;
    EXPECT_THAT(m, HasSubstr("in each of 2 copies")) << m;
    // Only one copy wrong: no copies to speak of.
    sharded.insert("w", c10dtest::distribute_tensor(full.clone(), mesh2, {Replicate{}, Shard{0}}));
    if (mesh2->coordinate_of(rank())[0] == 1) add_one(sharded, "w", 1.0);
    m = verdict(ref, sharded);
    EXPECT_THAT(m, HasSubstr(std::to_string(pieces) + " of 30 elements differ (")) << m;
    EXPECT_THAT(m, Not(HasSubstr("copies"))) << m;
  }
  // A Partial value is compared after its reduction, which every rank of the mesh then holds.
  const at::Tensor full = at::randn({5, 3}, at::kDouble);
  StateDict pref;
  pref.insert("p", full);
  StateDict partial;
  partial.insert("p", c10dtest::distribute_tensor(full.clone(), DeviceMesh::create({world_size()}),
                                                  {c10dtest::Partial{}}));
  if (rank() == last) add_one(partial, "p", 1.0);
  m = verdict(pref, partial);
  EXPECT_THAT(m, HasSubstr(world_size() == 1 ? "1 of 15 elements differ (6.66667%);"
                                             : "1 of 15 elements differ (6.66667%) in each of " +
                                                   std::to_string(world_size()) + " copies;"))
      << m;
}

TEST_F(Messages, NanAndInfinityAreNamed) {
  const at::Tensor w = at::arange(1, 9, at::kFloat);
  StateDict ref;
  ref.insert("w", w);
  StateDict dist;
  at::Tensor bad = w.clone();
  bad[1] = NAN;
  bad[2] = INFINITY;
  bad[3] = 100.0;
  dist.insert("w", c10dtest::distribute_tensor(bad, DeviceMesh::create({world_size()}), {Replicate{}}));
  std::string m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr("3 of 8 elements differ (37.5%: 1 with NaN, 1 with an infinity)"))
      << m;
  EXPECT_THAT(m, HasSubstr("max abs diff nan at [1] (expected 2, got nan)"));
  EXPECT_THAT(m, HasSubstr("max rel diff inf"));
  // Only NaN: no relative difference to speak of.
  bad = w.clone();
  bad[5] = NAN;
  dist.insert("w", c10dtest::distribute_tensor(bad, DeviceMesh::create({world_size()}), {Replicate{}}));
  m = verdict(ref, dist);
  EXPECT_THAT(m, HasSubstr("1 with NaN"));
  EXPECT_THAT(m, Not(HasSubstr("max rel diff"))) << m;
}

TEST_F(Messages, LikePyTorchGivesPyTorchsVerdictsAndKeepsShapesStrict) {
  const VerifyOptions pytorch = VerifyOptions::like_pytorch();
  const auto mesh = DeviceMesh::create({world_size()});
  // bfloat16 one ulp off: noise for assert_close's tolerances, a failure for torch.allclose.
  StateDict ref;
  ref.insert("w", at::ones({6, 2}, at::kBFloat16));
  StateDict dist;
  dist.insert("w", c10dtest::distribute_tensor(at::full({6, 2}, 1.0078125, at::kBFloat16), mesh,
                                               {Shard{0}}));
  EXPECT_EQ(verdict(ref, dist), "");
  EXPECT_THAT(verdict(ref, dist, pytorch),
              HasSubstr("12 of 12 elements differ (100%); first at [0, 0] (expected 1, got "
                        "1.0078125)"));
  EXPECT_THAT(verdict(ref, dist, pytorch), HasSubstr("(torch.allclose's rule)"));
  // Python numbers: a learning rate 1e-6 off, and a bool against an int.
  StateDict hyper;
  hyper.insert("lr", 0.1);
  hyper.insert("flag", true);
  hyper.insert("step", std::int64_t{3});
  StateDict moved;
  moved.insert("lr", 0.1 + 1e-6);
  moved.insert("flag", std::int64_t{1});
  moved.insert("step", 3.0);
  const std::string m = verdict(hyper, moved);
  EXPECT_THAT(m, HasSubstr("2 of 3 keys differ"));  // step: 3 and 3.0 match in both
  EXPECT_THAT(m, HasSubstr("'lr': 0.100001 vs expected 0.1"));
  EXPECT_THAT(m, HasSubstr("'flag': 1 vs expected True"));
  EXPECT_EQ(verdict(hyper, moved, pytorch), "");
  moved.insert("lr", 0.1 + 1e-4);
  EXPECT_THAT(verdict(hyper, moved, pytorch), HasSubstr("'lr': 0.10010000000000001 vs expected 0.1"));
  // Broadcastable shapes fail under both, saying so.
  StateDict row;
  row.insert("b", at::ones({1, 8}));
  StateDict flat;
  flat.insert("b", at::ones({8}));
  for (const auto& options : {VerifyOptions{}, pytorch}) {
    EXPECT_THAT(verdict(row, flat, options),
                HasSubstr("'b' (Tensor [8] Float) shape [8] vs expected [1, 8] (broadcastable, "
                          "which torch.allclose would accept; a state dict must match exactly)"));
  }
}

TEST_F(Messages, CompareTensorAndMatchersNameTheirKey) {
  const at::Tensor w = at::randn({4, 2});
  const StateValue dist = c10dtest::distribute_tensor(w + 1, DeviceMesh::create({world_size()}), {Shard{0}});
  EXPECT_THAT(std::string(compare_tensor(w, dist, "l1.weight").message()),
              HasSubstr("1 of 1 keys differ: 'l1.weight'"));
  EXPECT_THAT(std::string(compare_tensor(w, dist, VerifyOptions{}, "l2.weight").message()),
              HasSubstr("'l2.weight' (DTensor [4, 2] Float [Shard(0)])"));
  EXPECT_THAT(std::string(compare_tensor(w, dist).message()), HasSubstr("'tensor'"));
  EXPECT_NONFATAL_FAILURE(EXPECT_THAT(dist, c10dtest::TensorMatches(w, {}, "l3.weight")),
                          "'l3.weight' (DTensor");
  EXPECT_NONFATAL_FAILURE(C10DTEST_EXPECT_TENSOR_MATCHES(w, dist), "keys differ: 'dist'");
}

class VerifyOsd : public c10dtest::DistributedTest, public c10dtest::VerifyStateDictMixin {
 protected:
  void SetUp() override {
    DistributedTest::SetUp();
    if (IsSkipped()) return;
    model_ = torch::nn::Linear(6, 4);
    optim_ = std::make_unique<torch::optim::Adam>(model_->parameters(),
                                                  torch::optim::AdamOptions(0.01));
    for (int i = 0; i < 2; ++i) {
      optim_->zero_grad();
      model_->forward(at::randn({3, 6})).sum().backward();
      optim_->step();
    }
    osd_ = c10dtest::get_optimizer_state_dict(*model_, *optim_);
    // The distributed copy: every state tensor sharded on dim 0.
    const auto mesh = DeviceMesh::create({world_size()});
    dist_ = osd_;
    auto& state = dist_.at("state").as<StateDict>();
    for (std::size_t i = 0; i < state.size(); ++i) {
      auto& per_param = state.value(i).as<StateDict>();
      for (std::size_t j = 0; j < per_param.size(); ++j) {
        auto& v = per_param.value(j);
        if (v.is<at::Tensor>() && v.as<at::Tensor>().dim() > 0) {
          v = c10dtest::distribute_tensor(v.as<at::Tensor>(), mesh, {Shard{0}});
        }
      }
    }
  }
  torch::nn::Linear model_{nullptr};
  std::unique_ptr<torch::optim::Adam> optim_;
  StateDict osd_;
  StateDict dist_;
};

TEST_F(VerifyOsd, ShardedStateMatchesAndLoads) {
  EXPECT_TRUE(verify_osd(*model_, *optim_, osd_, dist_));
  EXPECT_TRUE(verify_osd(*model_, *optim_, dist_));
  torch::optim::Adam fresh(model_->parameters(), torch::optim::AdamOptions(0.5));
  EXPECT_TRUE(verify_osd_by_load(*model_, *optim_, fresh, dist_));
}

TEST_F(VerifyOsd, WrongStateValueIsNamedWithItsStateKey) {
  StateDict d = dist_;
  auto& v = d.at("state").as<StateDict>().at("weight").as<StateDict>().at("exp_avg");
  const auto& dt = v.as<DTensor>();
  if (rank() == 0) {
    v = DTensor(dt.local() * 2 + 1, dt.mesh(), dt.placements(), dt.global_shape());
  }
  const auto r = verify_osd(*model_, *optim_, osd_, d);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.message(), HasSubstr("'state.weight.exp_avg' (DTensor [4, 6] Float [Shard(0)])"));
}

TEST_F(VerifyOsd, ParamGroupHyperparametersAndParamsAreCompared) {
  StateDict d = dist_;
  auto& group = d.at("param_groups").as<StateList>()[0].as<StateDict>();
  group.insert("lr", 0.02);
  group.insert("params", StateList{std::string("weight"), std::string("weights")});
  const auto r = verify_osd(*model_, *optim_, osd_, d);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.message(), HasSubstr("'param_groups.0.lr': 0.02 vs expected 0.01"));
  EXPECT_THAT(r.message(), HasSubstr("'param_groups.0.params': lacks 'bias'; has extra 'weights'"));
}

TEST_F(VerifyOsd, GroupsThatCannotBeMergedSayWhy) {
  // The reference has one group; the distributed dict splits it in two.
  const StateDict g0 = dist_.at("param_groups").as<StateList>()[0].as<StateDict>();
  StateDict a = g0;
  a.insert("params", StateList{std::string("weight")});
  StateDict b = g0;
  b.insert("params", StateList{std::string("bias")});
  StateDict d = dist_;
  d.insert("param_groups", StateList{a, b});
  EXPECT_TRUE(verify_osd(*model_, *optim_, osd_, d));  // same hyperparameters: merged
  b.insert("lr", 0.5);
  d.insert("param_groups", StateList{a, b});
  const auto r = verify_osd(*model_, *optim_, osd_, d);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.message(), HasSubstr("note: the distributed dict's 2 param groups were not merged "
                                     "into the reference's one group: their hyperparameters "
                                     "differ: group 1 has lr 0.5 (group 0: 0.01)"));
}

TEST_F(VerifyOsd, LoadFailureNamesTheRankAndShardOfTheDifference) {
  StateDict d = dist_;
  const int last = world_size() - 1;
  auto& v = d.at("state").as<StateDict>().at("weight").as<StateDict>().at("exp_avg");
  const DTensor dt = v.as<DTensor>();
  if (rank() == last) v = DTensor(dt.local() + 1, dt.mesh(), dt.placements(), dt.global_shape());
  torch::optim::Adam fresh(model_->parameters(), torch::optim::AdamOptions(0.5));
  const auto r = verify_osd_by_load(*model_, *optim_, fresh, d);
  ASSERT_FALSE(r);
  const std::string m = r.message();
  // The loaded state differs: the message goes on to where the distributed dict differs.
  EXPECT_THAT(m, HasSubstr("'state.weight.exp_avg' (Tensor [4, 6] Float)"));
  const auto where = m.find("where the distributed optimizer state dict differs: ");
  ASSERT_NE(where, std::string::npos) << m;
  EXPECT_THAT(m.substr(where),
              HasSubstr("'state.weight.exp_avg' (DTensor [4, 6] Float [Shard(0)])" +
                        (world_size() > 1 ? " on rank " + std::to_string(last) : std::string())));
}

TEST_F(VerifyOsd, ParameterIdsMapToFqns) {
  // PyTorch's optimizer.state_dict() form: state keyed by parameter id, params as ids.
  StateDict by_id;
  StateDict state;
  const auto& fqn_state = osd_.at("state").as<StateDict>();
  state.insert("0", fqn_state.at("weight"));
  state.insert("1", fqn_state.at("bias"));
  by_id.insert("state", state);
  StateDict group = osd_.at("param_groups").as<StateList>()[0].as<StateDict>();
  group.insert("params", StateList{std::int64_t{1}, std::int64_t{0}});
  by_id.insert("param_groups", StateList{group});
  EXPECT_TRUE(verify_osd(*model_, *optim_, by_id, dist_));
  state.insert("7", fqn_state.at("bias"));
  by_id.insert("state", state);
  const auto r = verify_osd(*model_, *optim_, by_id, dist_);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.message(), HasSubstr("parameter id 7 is not one of the optimizer's 2"));
}

TEST_F(VerifyOsd, IgnoreFrozenParamsStillComparesWhatIsPresent) {
  model_->bias.requires_grad_(false);
  StateDict msd = c10dtest::get_model_state_dict(*model_);
  StateDict dist = msd;
  dist.erase("bias");
  VerifyOptions o;
  EXPECT_FALSE(verify_msd(*model_, dist, o));  // bias missing
  o.ignore_frozen_params = true;
  EXPECT_TRUE(verify_msd(*model_, dist, o));
  dist.insert("weight", msd.at("weight").as<at::Tensor>() * 2);
  const auto r = verify_msd(*model_, dist, o);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.message(), HasSubstr("'weight' (Tensor [4, 6] Float)"));
  // A missing parameter that is not frozen is still missing.
  dist = msd;
  dist.erase("weight");
  EXPECT_THAT(verify_msd(*model_, dist, o).message(), HasSubstr("missing key(s): 'weight'"));
}

}  // namespace
