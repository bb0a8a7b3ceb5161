// gather_state_dict against the alternatives, at whatever world size it is launched with
// (bench/gather.sh runs it at 4 ranks). Rank 0 prints one line per measurement; nothing is
// asserted about time.
//
//  many_small: 10,000 DTensors of [8, 4] floats, Shard(0): one gather_state_dict call against
//              one full_tensor() (one allgather) per tensor, as PyTorch's _gather_state_dict does.
//  large:      4 DTensors of [4096, 4096] floats (64 MiB each), Shard(0): gather_state_dict
//              against one raw c10d allgather of the same bytes.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/distributed_state_dict.hpp>

#include "median.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace {

using c10dtest::bench::median_seconds;

class GatherBench : public c10dtest::DistributedTest {
 protected:
  void SetUp() override {
    DistributedTest::SetUp();
    set_timeout(std::chrono::minutes(20));
  }
  void report(const char* name, double ours, const char* other_name, double other) {
    if (rank() != 0) return;
    std::printf("%-11s ranks=%d  gather_state_dict %.4f s  %s %.4f s  ratio %.2fx\n", name,
                world_size(), ours, other_name, other, other / ours);
    std::fflush(stdout);
  }
};

TEST_F(GatherBench, ManySmallTensors) {
  auto mesh = c10dtest::DeviceMesh::create({world_size()});
  c10dtest::StateDict sd;
  for (int i = 0; i < 10000; ++i) {
    sd.insert("layer" + std::to_string(i) + ".weight",
              c10dtest::distribute_tensor(at::randn({8, 4}), mesh, {c10dtest::Shard{0}}));
  }
  const double ours = median_seconds(3, [&] { c10dtest::gather_state_dict(sd); });
  const double per_tensor = median_seconds(1, [&] {
    for (std::size_t i = 0; i < sd.size(); ++i) sd.value(i).as<c10dtest::DTensor>().full_tensor();
  });
  report("many_small", ours, "one allgather per tensor", per_tensor);
}

TEST_F(GatherBench, LargeTensors) {
  auto mesh = c10dtest::DeviceMesh::create({world_size()});
  c10dtest::StateDict sd;
  std::vector<at::Tensor> locals;
  for (int i = 0; i < 4; ++i) {
    auto d = c10dtest::distribute_tensor(at::randn({4096, 4096}), mesh, {c10dtest::Shard{0}});
    locals.push_back(d.local());
    sd.insert("big" + std::to_string(i), d);
  }
  const double ours = median_seconds(3, [&] { c10dtest::gather_state_dict(sd); });
  // Raw: this rank's bytes of all four tensors in one allgather (equal sizes: 4096 divides).
  at::Tensor mine = at::cat(locals).reshape({-1});
  const double raw = median_seconds(3, [&] {
    std::vector<at::Tensor> in{mine};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < world_size(); ++r) out[0].push_back(at::empty_like(mine));
    mesh->all_group()->allgather(out, in)->wait();
  });
  report("large", ours, "raw allgather", raw);
}

}  // namespace
