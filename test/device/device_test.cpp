// Sharded tensors, state dicts and verification on the test's device(): CPU in a plain run, a GPU
// under `--c10dtest_backend=nccl` or `--c10dtest_device=cuda` (scripts/gpu-check.sh runs both).
// Every test holds on either device; the ones about crossing devices skip on CPU-only runs.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/verify.hpp>
#include <gmock/gmock.h>

namespace {

using c10dtest::DeviceMesh;
using c10dtest::DTensor;
using c10dtest::Partial;
using c10dtest::Replicate;
using c10dtest::Shard;
using c10dtest::ShardedTensor;
using c10dtest::StateDict;
using c10dtest::VerifyOptions;
using ::testing::HasSubstr;

class OnDevice : public c10dtest::DistributedTest, public c10dtest::VerifyStateDictMixin {
 protected:
  // Skips unless this run's device is a GPU (the cross-device tests).
  bool on_cpu() const { return device().is_cpu(); }
};

#define SKIP_ON_CPU()                                                                       \
  if (on_cpu())                                                                             \
  GTEST_SKIP() << "needs a GPU run (--c10dtest_backend=nccl or --c10dtest_device=cuda), "   \
                  "this one is on "                                                         \
               << device()

TEST_F(OnDevice, WorldGroupReducesTensorsOnTheDevice) {
  std::vector<at::Tensor> t{at::full({5}, rank() + 1.0, at::TensorOptions().device(device()))};
  process_group()->allreduce(t)->wait();
  EXPECT_EQ(t[0].device(), device());
  const double sum = world_size() * (world_size() + 1) / 2.0;
  EXPECT_TRUE(at::equal(t[0].cpu(), at::full({5}, sum)));
  barrier();
}

TEST_F(OnDevice, DTensorPiecesAndFullTensorsStayOnTheDevice) {
  const auto mesh = DeviceMesh::create({world_size()});
  const at::Tensor full = at::randn({7, 5});  // the same on every rank (seeded alike)
  for (const auto& placements : std::vector<std::vector<c10dtest::Placement>>{
           {Shard{0}}, {Shard{1}}, {Replicate{}}}) {
    SCOPED_TRACE(c10dtest::to_string(placements));
    const DTensor d = c10dtest::distribute_tensor(full.to(device()), mesh, placements);
    EXPECT_EQ(d.local().device(), device());
    const at::Tensor back = d.full_tensor();
    EXPECT_EQ(back.device(), device());
    EXPECT_TRUE(at::equal(back.cpu(), full));
  }
}

TEST_F(OnDevice, PartialIsSummedOnTheDevice) {
  const auto mesh = DeviceMesh::create({world_size()});
  const DTensor d(at::full({3, 4}, rank() + 1.0, at::TensorOptions().device(device())), mesh,
                  {Partial{}}, {3, 4});
  const at::Tensor sum = d.full_tensor();
  EXPECT_EQ(sum.device(), device());
  EXPECT_TRUE(at::equal(sum.cpu(), at::full({3, 4}, world_size() * (world_size() + 1) / 2.0)));
}

TEST_F(OnDevice, DistributeFromASourceRankLandsOnTheWorldsDevice) {
  const auto mesh = DeviceMesh::create({world_size()});
  const at::Tensor full = at::arange(24, at::kDouble).reshape({6, 4});
  // Only rank 0 reads its tensor, and it is on CPU: every piece still lands on device().
  const DTensor d =
      c10dtest::distribute_tensor(rank() == 0 ? full : at::Tensor(), mesh, {Shard{0}}, 0);
  EXPECT_EQ(d.local().device(), device());
  EXPECT_EQ(d.dtype(), at::kDouble);
  EXPECT_TRUE(at::equal(d.full_tensor().cpu(), full));
}

TEST_F(OnDevice, ShardedTensorGathersOnItsShardsDevice) {
  // Rank r holds rows [2r, 2r+2) of a [2W, 3] tensor.
  const at::Tensor full = at::arange(6 * world_size(), at::kFloat).reshape({2 * world_size(), 3});
  std::vector<c10dtest::LocalShard> mine{
      {full.narrow(0, 2 * rank(), 2).to(device()), {{2 * rank(), 0}, {2, 3}, rank()}}};
  const auto st = ShardedTensor::from_local_shards(mine, {2 * world_size(), 3}, process_group());
  const at::Tensor back = st.full_tensor();
  EXPECT_EQ(back.device(), device());
  EXPECT_TRUE(at::equal(back.cpu(), full));
}

TEST_F(OnDevice, GatherKeepsTheShardsDeviceAndCpuOffloadMovesToCpu) {
  const auto mesh = DeviceMesh::create({world_size()});
  const at::Tensor a = at::randn({9, 2});
  const at::Tensor b = at::randn({3, 5}).to(at::kBFloat16);
  StateDict sd;
  sd.insert("a", c10dtest::distribute_tensor(a.to(device()), mesh, {Shard{0}}));
  sd.insert("b", c10dtest::distribute_tensor(b.to(device()), mesh, {Shard{1}}));
  sd.insert("plain", at::ones({2}, at::TensorOptions().device(device())));

  const StateDict kept = c10dtest::gather_state_dict(sd);
  for (const char* key : {"a", "b", "plain"}) {
    EXPECT_EQ(kept.at(key).as<at::Tensor>().device(), device()) << key;
  }
  EXPECT_TRUE(at::equal(kept.at("a").as<at::Tensor>().cpu(), a));
  EXPECT_TRUE(at::equal(kept.at("b").as<at::Tensor>().cpu(), b));

  c10dtest::GatherOptions offload;
  offload.cpu_offload = true;
  const StateDict moved = c10dtest::gather_state_dict(sd, offload);
  for (const char* key : {"a", "b", "plain"}) {
    EXPECT_TRUE(moved.at(key).as<at::Tensor>().device().is_cpu()) << key;
  }
  EXPECT_TRUE(at::equal(moved.at("a").as<at::Tensor>(), a));

  // To rank 0 only: the others send and get nothing.
  offload.ranks_only = std::vector<int>{0};
  const StateDict to_zero = c10dtest::gather_state_dict(sd, offload);
  if (rank() == 0) {
    EXPECT_TRUE(at::equal(to_zero.at("b").as<at::Tensor>(), b));
  } else {
    EXPECT_TRUE(to_zero.empty());
  }
}

TEST_F(OnDevice, BroadcastStateDictFromRankZero) {
  StateDict sd;
  sd.insert("w", at::arange(10, at::TensorOptions().dtype(at::kFloat).device(device())));
  sd.insert("step", std::int64_t{7});
  const StateDict got = c10dtest::broadcast_state_dict(rank() == 0 ? sd : StateDict());
  ASSERT_TRUE(got.contains("w"));
  EXPECT_TRUE(at::equal(got.at("w").as<at::Tensor>().cpu(), at::arange(10, at::kFloat)));
  EXPECT_EQ(got.at("step").as<std::int64_t>(), 7);
}

// The reference is a plain CPU model's state; the shards live on device(). Values are compared
// wherever they live (on CPU), and a wrong element on the device is named.
TEST_F(OnDevice, CpuReferenceAgainstShardsOnTheDevice) {
  const auto mesh = DeviceMesh::create({world_size()});
  const at::Tensor w = at::randn({8, 3});
  StateDict reference;
  reference.insert("w", w);
  StateDict dist;
  dist.insert("w", c10dtest::distribute_tensor(w.to(device()), mesh, {Shard{0}}));
  EXPECT_TRUE(verify_msd(reference, dist));

  // A wrong element in the last rank's rows, on the device.
  const int last = world_size() - 1;
  StateDict bad;
  const DTensor& d = dist.at("w").as<DTensor>();
  at::Tensor local = d.local().clone();
  if (rank() == last) local.view({-1})[0] += 0.5;
  bad.insert("w", DTensor(local, d.mesh(), d.placements(), d.global_shape()));
  const auto r = verify_msd(reference, bad);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.message(), HasSubstr("'w' (DTensor [8, 3] Float [Shard(0)])"));
  if (world_size() > 1) {
    EXPECT_THAT(r.message(), HasSubstr("on rank " + std::to_string(last)));
  }
  EXPECT_THAT(r.message(), HasSubstr("max abs diff 0.5"));
}

TEST_F(OnDevice, CheckDeviceNamesBothDevices) {
  SKIP_ON_CPU();
  const auto mesh = DeviceMesh::create({world_size()});
  const at::Tensor w = at::randn({4, 4});
  StateDict reference;
  reference.insert("w", w);
  StateDict dist;
  dist.insert("w", c10dtest::distribute_tensor(w.to(device()), mesh, {Replicate{}}));
  VerifyOptions strict;
  strict.check_device = true;
  const auto r = c10dtest::verify_state_dict(reference, dist, strict);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.message(), HasSubstr("device " + device().str() + " vs expected cpu"));
  // Once the reference is on the same device, it passes.
  StateDict on_device;
  on_device.insert("w", w.to(device()));
  EXPECT_TRUE(c10dtest::verify_state_dict(on_device, dist, strict));
}

TEST_F(OnDevice, HalfBoolLongAndComplexRoundTripAndVerify) {
  const auto mesh = DeviceMesh::create({world_size()});
  for (const auto dtype : {at::kHalf, at::kBFloat16, at::kBool, at::kLong, at::kComplexFloat}) {
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor full = at::randn({5, 3}).mul(10).to(dtype);
    const DTensor d = c10dtest::distribute_tensor(full.to(device()), mesh, {Shard{0}});
    EXPECT_TRUE(at::equal(d.full_tensor().cpu(), full));
    StateDict reference;
    reference.insert("t", full);
    StateDict dist;
    dist.insert("t", d);
    EXPECT_TRUE(c10dtest::verify_state_dict(reference, dist));
  }
}

}  // namespace
