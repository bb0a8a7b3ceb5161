// verify_state_dict on a sharded state dict of about 1 GiB (4 tensors of 256 MiB and 1,000 of
// 16 KiB, float32, Shard(0) over the world), both strategies, beside the floors they are judged
// against: one pass of memory reads over this rank's shard bytes, and one raw c10d allgather of
// them. bench/verify.sh runs it at 4 ranks. Each time runs from a barrier that starts every rank
// to a barrier after every rank is done (the slowest rank's, median of 7 runs for the read pass
// and shard-local, of 3 for the slow gathers); "extra peak" is the largest growth of a rank's
// peak RSS during the call. A shard-local run over the 1,000 small keys alone gives the fixed
// cost per key. Nothing is asserted.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

namespace {

using Clock = std::chrono::steady_clock;

// VmRSS or VmHWM of this process, in bytes.
std::int64_t status_bytes(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(std::string(field).size())) * 1024;
  }
  return 0;
}

// The read pass: every 8-byte word of [p, p + n) summed. Built like the comparison loop (-O3,
// and for AVX2 where the compiler dispatches at run time), so the ratio compares like with like.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
std::uint64_t read_words(const std::uint64_t* p, std::int64_t n) {
  std::uint64_t acc = 0;
  for (std::int64_t i = 0; i < n; ++i) acc += p[i];
  return acc;
}

// Resets the peak-RSS counter to the current RSS.
void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }

struct Measure {
  double seconds = 0;
  std::int64_t extra_peak = 0;
};

class VerifyBench : public c10dtest::DistributedTest {
 protected:
  void SetUp() override {
    DistributedTest::SetUp();
    set_timeout(std::chrono::minutes(30));
  }

  template <typename F>
  Measure measure(F&& f, int runs = 3) {
    std::vector<double> times;
    std::int64_t peak = 0;
    for (int i = 0; i < runs; ++i) {
      const std::int64_t before = status_bytes("VmRSS:");
      reset_peak();
      // From all ranks starting to all ranks done: the wall time of the step for the job.
      barrier();
      const auto start = Clock::now();
      f();
      barrier();
      times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      peak = std::max(peak, status_bytes("VmHWM:") - before);
    }
    std::sort(times.begin(), times.end());
    // The slowest rank's figures.
    std::vector<at::Tensor> t{
        at::tensor({times[times.size() / 2], static_cast<double>(peak)}, at::kDouble)};
    c10d::AllreduceOptions max;
    max.reduceOp = c10d::ReduceOp::MAX;
    process_group()->allreduce(t, max)->wait();
    return {t[0][0].item<double>(), static_cast<std::int64_t>(t[0][1].item<double>())};
  }
};

TEST_F(VerifyBench, OneGibibyteStateDict) {
  const auto mesh = c10dtest::DeviceMesh::create({world_size()});
  c10dtest::StateDict reference;
  c10dtest::StateDict dist;
  c10dtest::StateDict small_reference;  // the 1,000 small keys alone: the per-key fixed cost
  c10dtest::StateDict small_dist;
  std::int64_t local_bytes = 0;
  std::vector<at::Tensor> locals;
  auto add = [&](const std::string& key, std::vector<std::int64_t> shape) {
    const at::Tensor full = at::randn(shape);
    const auto d = c10dtest::distribute_tensor(full, mesh, {c10dtest::Shard{0}});
    const at::Tensor local = d.local().clone();  // a shard of its own, not a view of the reference
    local_bytes += local.numel() * static_cast<std::int64_t>(local.element_size());
    locals.push_back(local);
    reference.insert(key, full);
    dist.insert(key, c10dtest::DTensor(local, mesh, d.placements(), d.global_shape()));
    if (shape[0] == 64) {
      small_reference.insert(key, full);
      small_dist.insert(key, c10dtest::DTensor(local, mesh, d.placements(), d.global_shape()));
    }
  };
  for (int i = 0; i < 4; ++i) add("big" + std::to_string(i) + ".weight", {8192, 8192});
  for (int i = 0; i < 1000; ++i) add("small" + std::to_string(i) + ".weight", {64, 64});

  const Measure read = measure([&] {
    std::uint64_t acc = 0;
    for (const auto& t : locals) {
      acc += read_words(static_cast<const std::uint64_t*>(t.data_ptr()),
                        t.numel() * static_cast<std::int64_t>(t.element_size()) / 8);
    }
    volatile std::uint64_t sink = acc;
    (void)sink;
  }, 7);
  c10dtest::VerifyOptions local_options;
  local_options.strategy = c10dtest::VerifyStrategy::kShardLocal;
  bool local_ok = true;
  const Measure shard_local = measure([&] {
    local_ok = local_ok && c10dtest::verify_state_dict(reference, dist, local_options);
  }, 7);
  const Measure small_keys = measure([&] {
    local_ok = local_ok && c10dtest::verify_state_dict(small_reference, small_dist, local_options);
  }, 7);
  c10dtest::VerifyOptions gather_options;
  gather_options.strategy = c10dtest::VerifyStrategy::kGather;
  bool gather_ok = true;
  const Measure gather = measure([&] {
    gather_ok = gather_ok && c10dtest::verify_state_dict(reference, dist, gather_options);
  });
  const at::Tensor mine = at::cat([&] {
    std::vector<at::Tensor> flat;
    for (const auto& t : locals) flat.push_back(t.reshape({-1}));
    return flat;
  }());
  const Measure raw = measure([&] {
    std::vector<at::Tensor> in{mine};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < world_size(); ++r) out[0].push_back(at::empty_like(mine));
    process_group()->allgather(out, in)->wait();
  });
  EXPECT_TRUE(local_ok);
  EXPECT_TRUE(gather_ok);
  if (rank() == 0) {
    const double mib = 1024.0 * 1024.0;
    std::printf("state dict %.0f MiB over %d ranks, %.0f MiB of shards per rank\n",
                static_cast<double>(local_bytes) * world_size() / mib, world_size(),
                static_cast<double>(local_bytes) / mib);
    std::printf("read pass (shard bytes)   %.3f s\n", read.seconds);
    std::printf("shard-local verify        %.3f s  %.2fx the read pass  extra peak %.1f MiB "
                "(%.1f%% of the shard bytes)\n",
                shard_local.seconds, shard_local.seconds / read.seconds,
                static_cast<double>(shard_local.extra_peak) / mib,
                100.0 * static_cast<double>(shard_local.extra_peak) /
                    static_cast<double>(local_bytes));
    std::printf("shard-local, the 1,000 small keys alone  %.3f s  %.1f us per key\n",
                small_keys.seconds, small_keys.seconds * 1e6 / 1000.0);
    std::printf("raw allgather             %.3f s\n", raw.seconds);
    std::printf("gather verify             %.3f s  %.2fx the raw allgather  extra peak %.1f MiB\n",
                gather.seconds, gather.seconds / raw.seconds,
                static_cast<double>(gather.extra_peak) / mib);
    std::fflush(stdout);
  }
}

}  // namespace
