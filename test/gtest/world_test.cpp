// The framework's own distributed tests: run at 1, 2 and 4 ranks, under mpirun and self-spawn.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/control_plane.hpp>
#include <c10dtest/device_mesh.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>
#include <thread>

namespace {

using c10dtest::World;

// Gathers one int64 from every rank through the world group.
std::vector<std::int64_t> gather_ints(const c10dtest::ProcessGroupPtr& pg, std::int64_t value,
                                      int world_size) {
  std::vector<at::Tensor> in{at::full({1}, value, at::kLong)};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_size; ++r) out[0].push_back(at::empty({1}, at::kLong));
  pg->allgather(out, in)->wait();
  std::vector<std::int64_t> values;
  for (const auto& t : out[0]) values.push_back(t.item<std::int64_t>());
  return values;
}

class WorldBasics : public c10dtest::DistributedTest {};

TEST_F(WorldBasics, RanksAreDistinctAndCoverTheWorld) {
  const auto ranks = gather_ints(process_group(), rank(), world_size());
  for (int r = 0; r < world_size(); ++r) EXPECT_EQ(ranks[r], r);
  EXPECT_EQ(process_group()->getRank(), rank());
  EXPECT_EQ(process_group()->getSize(), world_size());
  EXPECT_GE(local_rank(), 0);
  EXPECT_LT(local_rank(), world_size());
}

TEST_F(WorldBasics, DeviceIsCpuWithGloo) {
  EXPECT_EQ(World::instance().backend(), c10dtest::BackendKind::kGloo);
  EXPECT_TRUE(device().is_cpu());
}

TEST_F(WorldBasics, SeedIsTheSameOnEveryRank) {
  const auto seeds = gather_ints(process_group(), static_cast<std::int64_t>(seed()), world_size());
  for (auto s : seeds) EXPECT_EQ(s, seeds[0]);
  // SetUp seeded ATen with it: random tensors agree across ranks too.
  const auto drawn = gather_ints(process_group(), at::randint(1 << 30, {1}, at::kLong).item<std::int64_t>(),
                                 world_size());
  for (auto d : drawn) EXPECT_EQ(d, drawn[0]);
}

TEST_F(WorldBasics, SeedComesFromTheTestName) {
  EXPECT_EQ(seed(), c10dtest::seed_for("WorldBasics.SeedComesFromTheTestName",
                                       World::instance().options().seed));
  EXPECT_NE(c10dtest::seed_for("A.B", 0), c10dtest::seed_for("A.C", 0));
  EXPECT_NE(c10dtest::seed_for("A.B", 0), c10dtest::seed_for("A.B", 1));
}

// Nobody leaves the barrier before the last rank reached it: the last rank (late on purpose)
// posts a key just before it, and every rank finds it right after.
TEST_F(WorldBasics, BarrierWaitsForTheLastRank) {
  auto& cp = World::instance().control();
  const std::string key = World::instance().next_tag("barrier-arrived");
  const int last = world_size() - 1;
  if (rank() == last) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    cp.set(key, "1");
    // A c10d store's set() does not wait for the store's answer; a read on the same connection
    // does, so the key is in the store before this rank reaches the barrier.
    ASSERT_TRUE(cp.check({key}));
  }
  barrier();
  EXPECT_TRUE(cp.check({key})) << "left the barrier before rank " << last << " reached it";
}

TEST_F(WorldBasics, MinOverRanksIsTheSameEverywhere) {
  EXPECT_EQ(World::instance().min_over_ranks(10 + rank()), 10);
  EXPECT_EQ(World::instance().min_over_ranks(100 - rank()), 100 - (world_size() - 1));
}

TEST_F(WorldBasics, ControlPlaneAllGatherOrdersByRank) {
  auto values = World::instance().control().all_gather(
      "world_test/allgather", "r" + std::to_string(rank()), std::chrono::seconds(30));
  ASSERT_EQ(static_cast<int>(values.size()), world_size());
  for (int r = 0; r < world_size(); ++r) EXPECT_EQ(values[r], "r" + std::to_string(r));
}

TEST_F(WorldBasics, ControlPlaneValuesOfAnyBytesComeBackIntact) {
  auto& cp = World::instance().control();
  // Empty, separator-like and binary values, a different length on every rank.
  auto value_of = [](int r) {
    return r % 3 == 0   ? std::string()
           : r % 3 == 1 ? std::string("12:ab:") + std::string(1, '\0')
                        : std::string(1000 + r, ':');
  };
  const auto values =
      cp.all_gather("world_test/bytes", value_of(rank()), std::chrono::seconds(30));
  ASSERT_EQ(static_cast<int>(values.size()), world_size());
  for (int r = 0; r < world_size(); ++r) EXPECT_EQ(values[r], value_of(r)) << "rank " << r;
}

// The store holds no keys of finished exchanges: its size after 200 more exchanges (and a test
// end's result exchange each) is what it was. Counted between two barriers of the world group,
// when no rank touches the store.
class StoreSize : public c10dtest::DistributedTest {
 protected:
  static std::int64_t& before() {
    static std::int64_t n = -1;
    return n;
  }
  std::int64_t keys() {
    World::instance().all_gather_text("store-size", "x");
    barrier();
    const std::int64_t n = World::instance().control().store()->getNumKeys();
    barrier();
    return n;
  }
};

TEST_F(StoreSize, A_Counted) {
  before() = keys();
  EXPECT_GT(before(), 0);
}

TEST_F(StoreSize, B_ManyExchanges) {
  for (int i = 0; i < 200; ++i) {
    const auto v = World::instance().all_gather_text("many", std::to_string(i * world_size() + rank()));
    ASSERT_EQ(v.back(), std::to_string(i * world_size() + world_size() - 1));
  }
}

TEST_F(StoreSize, C_TheSameAgain) {
  if (before() < 0) GTEST_SKIP() << "StoreSize.A_Counted did not run";
  EXPECT_EQ(keys(), before());
}

// DistributedTest::temp_dir(): one path on every rank, private, gone once the test has ended.
class TempDir : public c10dtest::DistributedTest {
 protected:
  static void SetUpTestSuite() {
    try {
      c10dtest::World::instance().test_temp_dir();
    } catch (const c10dtest::ConfigError& e) {
      outside_error() = e.what();
    }
  }
  static std::string& previous() {
    static std::string p;
    return p;
  }
  static std::string& outside_error() {
    static std::string e;
    return e;
  }
};

TEST_F(TempDir, A_OnePrivatePathThatEveryRankSees) {
  const std::string dir = temp_dir();
  EXPECT_EQ(&temp_dir(), &temp_dir());  // later calls: the same, no collective
  const auto all = c10dtest::World::instance().all_gather_text("dirs", dir);
  for (const auto& d : all) EXPECT_EQ(d, dir);
  struct stat s {};
  ASSERT_EQ(::stat(dir.c_str(), &s), 0) << dir;
  EXPECT_EQ(s.st_mode & 0777, 0700u) << dir;
  EXPECT_EQ(s.st_uid, ::getuid());
  std::ofstream(dir + "/rank" + std::to_string(rank())) << rank();
  barrier();
  for (int r = 0; r < world_size(); ++r) {
    std::ifstream in(dir + "/rank" + std::to_string(r));
    int got = -1;
    in >> got;
    EXPECT_EQ(got, r) << "rank " << r << "'s file in " << dir;
  }
  previous() = dir;
}

TEST_F(TempDir, B_TheLastTestsDirectoryIsGone) {
  if (previous().empty()) GTEST_SKIP() << "TempDir.A_OnePrivatePathThatEveryRankSees did not run";
  // Rank 0 removes it once every rank has ended the test, before it goes on; the others may be
  // here a moment earlier.
  struct stat s {};
  if (rank() == 0) EXPECT_NE(::stat(previous().c_str(), &s), 0) << previous() << " is still there";
  EXPECT_NE(temp_dir(), previous());  // a new one for this test
}

TEST_F(TempDir, C_NotForSuiteCode) {
  EXPECT_NE(outside_error().find("temp_dir() is for a test"), std::string::npos)
      << "'" << outside_error() << "'";
}

class Groups : public c10dtest::DistributedTest {};

TEST_F(Groups, NewGroupHoldsOnlyItsMembers) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  auto g = new_group({world_size() - 1, 0});
  if (rank() != 0 && rank() != world_size() - 1) {
    EXPECT_FALSE(g);
    return;
  }
  ASSERT_TRUE(g);
  EXPECT_EQ(g->getSize(), 2);
  // Group ranks follow the order of the list.
  EXPECT_EQ(g->getRank(), rank() == 0 ? 1 : 0);
  const auto members = gather_ints(g, rank(), 2);
  EXPECT_EQ(members, (std::vector<std::int64_t>{world_size() - 1, 0}));
}

TEST_F(Groups, TwoByTwoMeshRowsAndColumns) {
  C10DTEST_REQUIRE_EXACT_WORLD_SIZE(4);
  auto row = new_subgroups({{0, 1}, {2, 3}});
  auto col = new_subgroups({{0, 2}, {1, 3}});
  ASSERT_TRUE(row);
  ASSERT_TRUE(col);
  std::vector<at::Tensor> r{at::full({1}, rank(), at::kLong)};
  row->allreduce(r)->wait();
  EXPECT_EQ(r[0].item<std::int64_t>(), rank() < 2 ? 1 : 5);
  std::vector<at::Tensor> c{at::full({1}, rank(), at::kLong)};
  col->allreduce(c)->wait();
  EXPECT_EQ(c[0].item<std::int64_t>(), rank() % 2 == 0 ? 2 : 4);
}

TEST_F(Groups, TheSameRanksAndBackendGiveTheCachedGroup) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const auto a = new_group({0, 1});
  const auto b = new_group({0, 1});
  const auto reversed = new_group({1, 0});
  const auto rows = new_subgroups({{0, 1}});
  if (rank() > 1) {
    EXPECT_FALSE(a || b || reversed || rows);
    return;
  }
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(a.get(), rows.get());
  EXPECT_NE(a.get(), reversed.get()) << "another rank order is another group";
  EXPECT_EQ(reversed->getRank(), 1 - rank());
  // The cached group works like a new one, in both orders.
  std::vector<at::Tensor> t{at::full({1}, rank() + 1, at::kLong)};
  b->allreduce(t)->wait();
  EXPECT_EQ(t[0].item<std::int64_t>(), 3);
  reversed->allreduce(t)->wait();
  EXPECT_EQ(t[0].item<std::int64_t>(), 6);
}

// A mesh made in every test makes its groups once.
class MeshCache : public c10dtest::DistributedTest {
 protected:
  static c10d::ProcessGroup*& first_row() {
    static c10d::ProcessGroup* g = nullptr;
    return g;
  }
  c10d::ProcessGroup* row() {
    const auto mesh = c10dtest::DeviceMesh::create({world_size() / 2, 2});
    return mesh->group(1).get();
  }
};

TEST_F(MeshCache, First) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  if (world_size() % 2 != 0) GTEST_SKIP() << "needs an even world";
  first_row() = row();
  ASSERT_NE(first_row(), nullptr);
}

TEST_F(MeshCache, SecondFindsTheSameGroups) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  if (world_size() % 2 != 0) GTEST_SKIP() << "needs an even world";
  if (first_row() == nullptr) GTEST_SKIP() << "MeshCache.First did not run";
  EXPECT_EQ(row(), first_row());  // still alive: the cache holds it
}

TEST_F(Groups, BadRanksAreNamed) {
  try {
    new_group({0, world_size()});
    FAIL() << "expected an error";
  } catch (const c10dtest::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(world_size()) +
                                         " is outside the world"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(new_subgroups({{0}, {0}}), c10dtest::ConfigError);
}

// Value-parameterised over the size of a prefix group.
class PrefixGroups : public c10dtest::DistributedTestWithParam<int> {};

TEST_P(PrefixGroups, AllReduceOverTheFirstRanks) {
  const int n = GetParam();
  C10DTEST_REQUIRE_WORLD_SIZE(n);
  std::vector<int> ranks;
  for (int r = 0; r < n; ++r) ranks.push_back(r);
  auto g = new_group(ranks);
  if (rank() >= n) {
    EXPECT_FALSE(g);
    return;
  }
  std::vector<at::Tensor> t{at::ones({3})};
  g->allreduce(t)->wait();
  EXPECT_TRUE(at::equal(t[0], at::full({3}, static_cast<float>(n))));
}

INSTANTIATE_TEST_SUITE_P(Sizes, PrefixGroups, ::testing::Values(1, 2, 4));

// Value-parameterised over backends: NCCL runs where LibTorch has it (on a GPU machine).
class BackendGroups : public c10dtest::DistributedTestWithParam<c10dtest::BackendKind> {};

TEST_P(BackendGroups, WorldSizedGroupAllReduces) {
  const auto backend = GetParam();
  if (backend == c10dtest::BackendKind::kNccl) {
    if (!c10dtest::nccl_available()) GTEST_SKIP() << "LibTorch without NCCL";
    C10DTEST_REQUIRE_GPUS(1);
  }
  std::vector<int> all;
  for (int r = 0; r < world_size(); ++r) all.push_back(r);
  auto g = new_group(all, backend);
  ASSERT_TRUE(g);
  const auto options = at::TensorOptions().device(
      backend == c10dtest::BackendKind::kNccl ? c10::Device(c10::kCUDA, local_rank())
                                              : c10::Device(c10::kCPU));
  std::vector<at::Tensor> t{at::full({5}, 2.0, options)};
  g->allreduce(t)->wait();
  EXPECT_TRUE(at::equal(t[0].cpu(), at::full({5}, 2.0 * world_size())));
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendGroups,
                         ::testing::Values(c10dtest::BackendKind::kGloo,
                                           c10dtest::BackendKind::kNccl),
                         [](const auto& info) { return c10dtest::to_string(info.param); });

TEST(Comm, NcclWithoutNcclIsAClearError) {
  if (c10dtest::nccl_available()) GTEST_SKIP() << "LibTorch has NCCL";
  EXPECT_THROW(c10dtest::World::instance().new_group({0}, c10dtest::BackendKind::kNccl),
               c10dtest::ConfigError);
}

class Skips : public c10dtest::DistributedTest {};

TEST_F(Skips, GpuRequirementSkipsOnCpuOnlyLibTorch) {
  if (c10dtest::local_gpu_count() > 0) GTEST_SKIP() << "this machine has GPUs";
  bool body_ran = false;
  [&] {
    C10DTEST_REQUIRE_GPUS(1);
    body_ran = true;
  }();
  EXPECT_FALSE(body_ran);
  EXPECT_TRUE(IsSkipped());
}

}  // namespace
