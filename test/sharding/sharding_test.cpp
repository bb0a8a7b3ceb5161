// Sharding layer: chunk math, DeviceMesh, DTensor and ShardedTensor at 1, 2 and 4 ranks.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>

#include <numeric>

namespace {

using c10dtest::chunk_extent;
using c10dtest::DeviceMesh;
using c10dtest::Partial;
using c10dtest::Placement;
using c10dtest::Replicate;
using c10dtest::Shard;
using c10dtest::ShardingError;
using c10dtest::ShardMetadata;
using c10dtest::ShardedTensorMetadata;

std::vector<std::int64_t> lengths(std::int64_t size, std::int64_t chunks) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < chunks; ++i) out.push_back(chunk_extent(size, chunks, i).length);
  return out;
}

TEST(ChunkExtent, FollowsTorchChunk) {
  EXPECT_EQ(lengths(7, 4), (std::vector<std::int64_t>{2, 2, 2, 1}));
  EXPECT_EQ(lengths(8, 4), (std::vector<std::int64_t>{2, 2, 2, 2}));
  // torch.chunk(5, 4) gives 3 chunks of 2, 2, 1: the fourth rank is empty.
  EXPECT_EQ(lengths(5, 4), (std::vector<std::int64_t>{2, 2, 1, 0}));
  EXPECT_EQ(lengths(2, 4), (std::vector<std::int64_t>{1, 1, 0, 0}));
  EXPECT_EQ(lengths(0, 3), (std::vector<std::int64_t>{0, 0, 0}));
  EXPECT_EQ(chunk_extent(7, 4, 3).offset, 6);
  EXPECT_EQ(chunk_extent(2, 4, 3).offset, 2);  // empty chunks sit at the end
  EXPECT_THROW(chunk_extent(7, 4, 4), c10dtest::Error);
}

TEST(ChunkExtent, MatchesAtChunkForManySizes) {
  for (std::int64_t size = 0; size < 20; ++size) {
    for (std::int64_t n = 1; n < 7; ++n) {
      const auto pieces = at::arange(size).chunk(n);
      for (std::int64_t i = 0; i < n; ++i) {
        const auto e = chunk_extent(size, n, i);
        if (i < static_cast<std::int64_t>(pieces.size())) {
          EXPECT_EQ(e.length, pieces[i].numel()) << size << " " << n << " " << i;
          if (e.length > 0) {
            EXPECT_EQ(e.offset, pieces[i][0].item<std::int64_t>());
          }
        } else {
          EXPECT_EQ(e.length, 0) << size << " " << n << " " << i;
        }
      }
    }
  }
}

class Mesh : public c10dtest::DistributedTest {};

TEST_F(Mesh, OneDimensionalOverTheWorld) {
  auto mesh = DeviceMesh::create({world_size()});
  EXPECT_EQ(mesh->ndim(), 1);
  EXPECT_EQ(mesh->coordinate_of(rank()), (std::vector<std::int64_t>{rank()}));
  std::vector<at::Tensor> t{at::ones({1})};
  mesh->group(0)->allreduce(t)->wait();
  EXPECT_EQ(t[0].item<float>(), static_cast<float>(world_size()));
}

TEST_F(Mesh, TwoByHalfForHsdp) {
  C10DTEST_REQUIRE_EXACT_WORLD_SIZE(4);
  auto mesh = DeviceMesh::create({2, 2});
  const auto c = mesh->coordinate_of(rank());
  EXPECT_EQ(c, (std::vector<std::int64_t>{rank() / 2, rank() % 2}));
  EXPECT_EQ(mesh->rank_at(c), rank());
  // Along dim 0 the group holds ranks with the same column, along dim 1 the same row.
  std::vector<at::Tensor> down{at::full({1}, rank(), at::kLong)};
  mesh->group(0)->allreduce(down)->wait();
  EXPECT_EQ(down[0].item<std::int64_t>(), rank() % 2 == 0 ? 0 + 2 : 1 + 3);
  std::vector<at::Tensor> across{at::full({1}, rank(), at::kLong)};
  mesh->group(1)->allreduce(across)->wait();
  EXPECT_EQ(across[0].item<std::int64_t>(), rank() < 2 ? 0 + 1 : 2 + 3);
}

TEST_F(Mesh, SubMeshesReuseTheDimensionGroups) {
  C10DTEST_REQUIRE_EXACT_WORLD_SIZE(4);
  auto mesh = DeviceMesh::create({2, 2});
  auto row = mesh->sub_mesh(1);  // the ranks of my row
  EXPECT_EQ(row->ranks(), (std::vector<int>{rank() / 2 * 2, rank() / 2 * 2 + 1}));
  EXPECT_EQ(row->group(0).get(), mesh->group(1).get());
  // A DTensor over the sub-mesh: sharded within the row, the rows hold the same tensor.
  const at::Tensor full = at::arange(6, at::kLong);
  const auto d = c10dtest::distribute_tensor(full, row, {Shard{0}});
  EXPECT_TRUE(at::equal(d.local(), full.narrow(0, 3 * (rank() % 2), 3)));
  EXPECT_TRUE(at::equal(d.full_tensor(), full));
}

TEST_F(Mesh, WrongSizesAreNamed) {
  try {
    DeviceMesh::create({world_size() + 1});
    FAIL() << "expected an error";
  } catch (const c10dtest::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("needs " + std::to_string(world_size() + 1) + " ranks"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(DeviceMesh::create({0}), c10dtest::ConfigError);
}

at::Tensor random_full(at::ScalarType dtype, const std::vector<std::int64_t>& shape) {
  switch (dtype) {
    case at::kLong: return at::randint(-1000, 1000, shape, at::kLong);
    case at::kBool: return at::randint(0, 2, shape, at::kLong).to(at::kBool);
    case at::kComplexFloat: return at::randn(shape, at::kComplexFloat);
    default: return (at::randn(shape, at::kDouble) * 100).to(dtype);
  }
}

class DTensorRoundTrip : public c10dtest::DistributedTest {
 protected:
  // full -> distribute -> full_tensor must be exact, and each local piece must be the chunk.
  void check(const at::Tensor& full, const std::shared_ptr<const DeviceMesh>& mesh,
             const std::vector<Placement>& placements) {
    const auto d = c10dtest::distribute_tensor(full, mesh, placements);
    SCOPED_TRACE(d.describe());
    EXPECT_EQ(d.local().sizes().vec(), d.local_shape_of(rank()));
    EXPECT_EQ(d.local().scalar_type(), full.scalar_type());
    bool partial = false;
    for (const auto& p : placements) partial |= std::holds_alternative<Partial>(p);
    if (!partial) {
      at::Tensor expected = full;
      const auto off = d.global_offset_of(rank());
      const auto shape = d.local_shape_of(rank());
      for (std::size_t k = 0; k < shape.size(); ++k) {
        expected = expected.narrow(static_cast<std::int64_t>(k), off[k], shape[k]);
      }
      EXPECT_TRUE(at::equal(d.local(), expected));
    }
    const at::Tensor back = d.full_tensor();
    EXPECT_EQ(back.scalar_type(), full.scalar_type());
    EXPECT_EQ(back.sizes(), full.sizes());
    EXPECT_TRUE(at::equal(back, full));
    EXPECT_TRUE(at::equal(d.redistribute_to_replicate().local(), full));
  }
};

TEST_F(DTensorRoundTrip, EveryDtypeShapeAndOneDimensionalPlacement) {
  const std::vector<at::ScalarType> dtypes{at::kFloat, at::kDouble, at::kBFloat16, at::kHalf,
                                           at::kLong,  at::kBool,   at::kComplexFloat};
  const std::vector<std::vector<std::int64_t>> shapes{{7, 5}, {0, 3}, {1, 4}, {3, 1, 2}, {}};
  const auto mesh = DeviceMesh::create({world_size()});
  for (auto dtype : dtypes) {
    for (const auto& shape : shapes) {
      const at::Tensor full = random_full(dtype, shape);
      std::vector<std::vector<Placement>> placements{{Replicate{}}};
      if (dtype != at::kBool) placements.push_back({Partial{}});
      for (std::int64_t dim = 0; dim < static_cast<std::int64_t>(shape.size()); ++dim) {
        placements.push_back({Shard{dim}});
      }
      for (const auto& p : placements) check(full, mesh, p);
    }
  }
}

TEST_F(DTensorRoundTrip, TwoDimensionalMeshes) {
  C10DTEST_REQUIRE_EXACT_WORLD_SIZE(4);
  const std::vector<std::vector<Placement>> layouts{
      {Shard{0}, Shard{1}}, {Replicate{}, Shard{0}}, {Shard{0}, Shard{0}},
      {Shard{1}, Partial{}}, {Partial{}, Replicate{}}, {Shard{1}, Shard{1}}};
  const auto mesh = DeviceMesh::create({2, 2});
  for (auto dtype : {at::kFloat, at::kLong, at::kBFloat16}) {
    for (const auto& shape : std::vector<std::vector<std::int64_t>>{{7, 5}, {1, 3}, {9, 2}}) {
      const at::Tensor full = random_full(dtype, shape);
      for (const auto& p : layouts) check(full, mesh, p);
    }
  }
}

// Every Partial op, as PyTorch's Partial(reduce_op): distribute -> full_tensor and
// reduce_partials give the tensor back (avg up to rounding: it divides a sum), on 1-D and 2-D
// meshes, and a value changed on one rank changes the reduction.
TEST_F(DTensorRoundTrip, EveryPartialOpReducesBackToTheTensor) {
  using c10dtest::PartialOp;
  const auto mesh = DeviceMesh::create({world_size()});
  std::vector<std::shared_ptr<const DeviceMesh>> meshes{mesh};
  if (world_size() % 2 == 0) meshes.push_back(DeviceMesh::create({2, world_size() / 2}));
  // Three members: the mean of three copies of x, summed in double, rounds; it must not.
  if (world_size() >= 3) meshes.push_back(DeviceMesh::create({3}, {0, 1, 2}));
  // Two Partial dims with different ops, in both orders (found by the layout fuzzer: sum then
  // product gave twice the value).
  if (world_size() % 2 == 0) {
    const auto grid = DeviceMesh::create({2, world_size() / 2});
    for (const auto first : {PartialOp::kSum, PartialOp::kAvg, PartialOp::kProduct, PartialOp::kMax}) {
      for (const auto second : {PartialOp::kSum, PartialOp::kProduct, PartialOp::kMin}) {
        const at::Tensor full = random_full(at::kDouble, {3, 2});
        const auto d = c10dtest::distribute_tensor(full, grid, {Partial{first}, Partial{second}});
        SCOPED_TRACE(d.describe());
        EXPECT_TRUE(at::equal(d.full_tensor(), full)) << "the round trip is not exact";
      }
    }
  }
  for (const auto op : {PartialOp::kSum, PartialOp::kAvg, PartialOp::kProduct, PartialOp::kMax,
                        PartialOp::kMin}) {
    for (const auto dtype : {at::kFloat, at::kDouble, at::kLong, at::kBool, at::kComplexFloat}) {
      const bool floating = at::isFloatingType(dtype) || at::isComplexType(dtype);
      if (op == PartialOp::kAvg && !floating) continue;
      if ((op == PartialOp::kMax || op == PartialOp::kMin) && at::isComplexType(dtype)) continue;
      if (op == PartialOp::kAvg && dtype == at::kBool) continue;
      for (const auto& m : meshes) {
        std::vector<Placement> placements{Partial{op}};
        if (m->ndim() == 2) placements.insert(placements.begin(), Shard{0});
        const at::Tensor full = random_full(dtype, {5, 3});
        const auto d = c10dtest::distribute_tensor(full, m, placements);
        if (!m->contains(rank())) continue;
        SCOPED_TRACE(d.describe());
        const at::Tensor back = d.full_tensor();
        const at::Tensor reduced = d.reduce_partials().full_tensor();
        EXPECT_TRUE(at::equal(back, full)) << "the round trip is not exact";
        EXPECT_TRUE(at::equal(reduced, back)) << "reduce_partials and full_tensor differ";
        const auto reduced_dtensor = d.reduce_partials();  // a temporary's placements would dangle
        for (const auto& p : reduced_dtensor.placements()) {
          EXPECT_FALSE(std::holds_alternative<Partial>(p));
        }
      }
    }
  }
  // The wrong dtype for an op is refused on every rank, before any collective.
  EXPECT_THROW(c10dtest::distribute_tensor(at::arange(4), mesh, {Partial{PartialOp::kAvg}}),
               c10dtest::ShardingError);
  EXPECT_THROW(c10dtest::distribute_tensor(at::ones({2}, at::kComplexFloat), mesh,
                                           {Partial{PartialOp::kMax}}),
               c10dtest::ShardingError);
}

// A mesh over some ranks: the others get an empty local tensor and take no part.
TEST_F(DTensorRoundTrip, SubMeshLeavesTheOtherRanksOut) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const auto sub = DeviceMesh::create({1}, {world_size() - 1});
  const at::Tensor full = random_full(at::kFloat, {4, 3});
  const auto d = c10dtest::distribute_tensor(full, sub, {c10dtest::Partial{}});
  if (rank() == world_size() - 1) {
    EXPECT_TRUE(at::equal(d.full_tensor(), full));
  } else {
    EXPECT_EQ(d.local().numel(), 0);
    EXPECT_EQ(d.local().scalar_type(), at::kFloat);
    EXPECT_EQ(d.global_shape(), (std::vector<std::int64_t>{4, 3}));
    EXPECT_THROW(d.full_tensor(), c10dtest::ShardingError);
    EXPECT_NO_THROW(d.reduce_partials());
  }
}

TEST_F(DTensorRoundTrip, FromASourceRankOnly) {
  const at::Tensor expected = random_full(at::kFloat, {7, 3});
  const int source = world_size() - 1;
  auto mesh = DeviceMesh::create({world_size()});
  const auto d = c10dtest::distribute_tensor(rank() == source ? expected : at::Tensor(), mesh,
                                             {Shard{0}}, source);
  EXPECT_EQ(d.global_shape(), (std::vector<std::int64_t>{7, 3}));
  EXPECT_TRUE(at::equal(d.full_tensor(), expected));
}

TEST_F(DTensorRoundTrip, BadPlacementsAreNamed) {
  auto mesh = DeviceMesh::create({world_size()});
  try {
    c10dtest::distribute_tensor(at::ones({3}), mesh, {Shard{1}});
    FAIL() << "expected an error";
  } catch (const c10dtest::ShardingError& e) {
    EXPECT_NE(std::string(e.what()).find("Shard(1) is outside a tensor of shape [3]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(c10dtest::distribute_tensor(at::ones({3}), mesh, {Shard{0}, Shard{0}}),
               c10dtest::ShardingError);
  // A local piece of the wrong shape is refused, naming both shapes.
  try {
    c10dtest::DTensor(at::ones({5}), mesh, {Replicate{}}, {4});
    FAIL() << "expected an error";
  } catch (const c10dtest::ShardingError& e) {
    EXPECT_NE(std::string(e.what()).find("holds a local tensor of shape [5] but [Replicate()] of "
                                         "global shape [4] gives it [4]"),
              std::string::npos)
        << e.what();
  }
}

class ShardedTensors : public c10dtest::DistributedTest {};

TEST_F(ShardedTensors, UnevenRowsOnePerRank) {
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kLong, at::kBool, at::kComplexFloat}) {
    const at::Tensor full = random_full(dtype, {7, 4});
    const auto e = chunk_extent(7, world_size(), rank());
    std::vector<c10dtest::LocalShard> mine;
    mine.push_back({full.narrow(0, e.offset, e.length).clone(), {{e.offset, 0}, {e.length, 4}, 0}});
    const auto st = c10dtest::ShardedTensor::from_local_shards(mine, {7, 4}, process_group());
    EXPECT_EQ(static_cast<int>(st.metadata().shards.size()), world_size());
    EXPECT_NO_THROW(st.validate());
    EXPECT_TRUE(at::equal(st.full_tensor(), full)) << c10::toString(dtype);
  }
}

TEST_F(ShardedTensors, SeveralShardsPerRankOnDimOneAndNoneOnSome) {
  // Columns in 2W pieces of one column each; the last rank holds none, rank 0 takes its share.
  const std::int64_t cols = 2 * world_size();
  const at::Tensor full = random_full(at::kFloat, {3, cols});
  std::vector<c10dtest::LocalShard> mine;
  const int holders = std::max(1, world_size() - 1);
  for (std::int64_t c = 0; c < cols; ++c) {
    if (c % holders == rank() && rank() < holders) {
      mine.push_back({full.narrow(1, c, 1).clone(), {{0, c}, {3, 1}, 0}});
    }
  }
  const auto st = c10dtest::ShardedTensor::from_local_shards(mine, {3, cols}, process_group());
  EXPECT_NO_THROW(st.validate());
  EXPECT_TRUE(at::equal(st.full_tensor(), full));
}

TEST_F(ShardedTensors, LocalShardOfTheWrongShapeIsNamed) {
  std::vector<c10dtest::LocalShard> mine{{at::ones({2, 2}), {{0, 0}, {2, 3}, 0}}};
  try {
    c10dtest::ShardedTensor::from_local_shards(mine, {2, 3}, process_group());
    FAIL() << "expected an error";
  } catch (const ShardingError& e) {
    EXPECT_NE(std::string(e.what()).find("sizes [2, 3]) holds a tensor of shape [2, 2]"),
              std::string::npos)
        << e.what();
  }
}

ShardedTensorMetadata rows(std::vector<std::pair<std::int64_t, std::int64_t>> pieces) {
  ShardedTensorMetadata m;
  m.global_shape = {8, 2};
  int r = 0;
  for (auto [off, len] : pieces) m.shards.push_back({{off, 0}, {len, 2}, r++});
  return m;
}

std::string tiling_error(const ShardedTensorMetadata& m, int group_size = 4) {
  try {
    c10dtest::validate_tiling(m, group_size);
  } catch (const ShardingError& e) {
    return e.what();
  }
  return "valid";
}

TEST(ValidateTiling, ExactTilingsPass) {
  EXPECT_EQ(tiling_error(rows({{0, 2}, {2, 2}, {4, 2}, {6, 2}})), "valid");
  EXPECT_EQ(tiling_error(rows({{6, 2}, {0, 6}, {8, 0}})), "valid");  // any order, empty shards
  ShardedTensorMetadata grid;
  grid.global_shape = {4, 4};
  for (std::int64_t i = 0; i < 2; ++i) {
    for (std::int64_t j = 0; j < 2; ++j) grid.shards.push_back({{2 * i, 2 * j}, {2, 2}, 0});
  }
  EXPECT_EQ(tiling_error(grid), "valid");
  ShardedTensorMetadata scalar;
  scalar.shards.push_back({{}, {}, 0});
  EXPECT_EQ(tiling_error(scalar), "valid");
}

TEST(ValidateTiling, OverlapNamesBothShards) {
  EXPECT_EQ(tiling_error(rows({{0, 3}, {2, 6}})),
            "shard 0 (rank 0, offsets [0, 0], sizes [3, 2]) overlaps shard 1 (rank 1, offsets "
            "[2, 0], sizes [6, 2])");
}

TEST(ValidateTiling, GapNamesTheFirstUncoveredIndex) {
  EXPECT_EQ(tiling_error(rows({{0, 2}, {5, 3}})),
            "the shards cover 10 of 16 elements of global shape [8, 2]; the first gap is at index "
            "[2, 0]");
  ShardedTensorMetadata grid;
  grid.global_shape = {4, 4};
  grid.shards.push_back({{0, 0}, {4, 2}, 0});
  grid.shards.push_back({{0, 2}, {2, 2}, 1});
  EXPECT_NE(tiling_error(grid).find("first gap is at index [2, 2]"), std::string::npos);
  ShardedTensorMetadata scalar;  // a scalar with no shard at all
  EXPECT_NE(tiling_error(scalar).find("cover 0 of 1"), std::string::npos);
}

TEST(ValidateTiling, OutOfBoundsAndBadOwnersAreNamed) {
  EXPECT_EQ(tiling_error(rows({{0, 4}, {4, 5}})),
            "shard 1 (rank 1, offsets [4, 0], sizes [5, 2]) is out of bounds in dim 0 of global "
            "shape [8, 2]");
  EXPECT_NE(tiling_error(rows({{0, 4}, {4, 4}}), 1).find("belongs to a rank outside the group of 1"),
            std::string::npos);
  auto m = rows({{0, 8}});
  m.shards[0].sizes = {8};
  EXPECT_NE(tiling_error(m).find("has 2 offsets and 1 sizes for a tensor of 2 dims"),
            std::string::npos);
}

}  // namespace
