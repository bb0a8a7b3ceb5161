// The fixed cost of a verification, at whatever world size it is launched with (bench/small.sh
// runs it at 4 ranks). Rank 0 prints one line per measurement, the median of many calls, beside
// what the same call costs without the part under test; nothing is asserted about time.
//
//  tiny_gather: verify_state_dict of a 128-byte dict (two Shard(0) DTensors) with the reference
//               on rank 0 only (the gather strategy), against the same dict shard-local.
//  osd_by_load: verify_osd_by_load on CompositeParamModel trained one step with Adam (FSDP),
//               against its own gather_state_dict and load alone.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/distributed_state_dict.hpp>
#include <c10dtest/optimizer_state_dict.hpp>
#include <c10dtest/testing/trainers.hpp>
#include <c10dtest/verify.hpp>

#include "median.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace {

namespace ct = c10dtest::testing;
// Milliseconds.
template <typename F>
double median_ms(int reps, F&& f) {
  return 1e3 * c10dtest::bench::median_seconds(reps, std::forward<F>(f));
}

class SmallVerifyBench : public c10dtest::DistributedTest, public c10dtest::VerifyStateDictMixin {
 protected:
  void report(const char* name, double ours, const char* other_name, double other) {
    if (rank() != 0) return;
    std::printf("%-12s %d ranks: %8.2f ms, %s %8.2f ms (ratio %.2f)\n", name, world_size(), ours,
                other_name, other, ours / std::max(other, 1e-9));
    std::fflush(stdout);
  }
};

TEST_F(SmallVerifyBench, TinyDictGatherAgainstShardLocal) {
  const auto mesh = c10dtest::DeviceMesh::create({world_size()});
  c10dtest::StateDict ref;
  c10dtest::StateDict dist;
  for (const char* key : {"a", "b"}) {
    const at::Tensor t = at::arange(16, at::kFloat);  // 64 bytes each
    ref.insert(key, t);
    dist.insert(key, c10dtest::distribute_tensor(t, mesh, {c10dtest::Shard{0}}));
  }
  const c10dtest::StateDict none;
  c10dtest::VerifyOptions gather;
  gather.strategy = c10dtest::VerifyStrategy::kGather;
  c10dtest::VerifyOptions local;
  local.strategy = c10dtest::VerifyStrategy::kShardLocal;
  ASSERT_TRUE(c10dtest::verify_state_dict(rank() == 0 ? ref : none, dist, gather));
  const double g = median_ms(50, [&] {
    EXPECT_TRUE(c10dtest::verify_state_dict(rank() == 0 ? ref : none, dist, gather));
  });
  const double l = median_ms(50, [&] { EXPECT_TRUE(c10dtest::verify_state_dict(ref, dist, local)); });
  report("tiny_gather", g, "shard-local", l);
}

TEST_F(SmallVerifyBench, OsdByLoadAgainstItsGatherAndLoad) {
  at::manual_seed(3);
  ct::DataParallelTrainer local(ct::composite_param_model_spec(), ct::Parallelism::Local,
                                ct::adam(1e-3));
  at::manual_seed(3);
  ct::DataParallelTrainer fsdp(ct::composite_param_model_spec(), ct::Parallelism::FSDP,
                               ct::adam(1e-3));
  const at::Tensor x = at::rand({8, 100});
  local.step(x);
  fsdp.step(x);
  const c10dtest::StateDict dist_osd = fsdp.optimizer_state_dict();
  auto fresh = ct::adam(1e-3)(local.model());
  ASSERT_TRUE(verify_osd_by_load(local.model(), local.optimizer(), *fresh, dist_osd));
  const double by_load = median_ms(10, [&] {
    EXPECT_TRUE(verify_osd_by_load(local.model(), local.optimizer(), *fresh, dist_osd));
  });
  const double alone = median_ms(10, [&] {
    const c10dtest::StateDict full = c10dtest::gather_state_dict(dist_osd);
    c10dtest::set_optimizer_state_dict(local.model(), *fresh, full);
  });
  report("osd_by_load", by_load, "gather+load", alone);
}

}  // namespace
