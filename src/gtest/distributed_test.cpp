#include "c10dtest/distributed_test.hpp"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include "common/hash.hpp"

namespace c10dtest {

std::uint64_t seed_for(const std::string& full_name, std::uint64_t run_seed) {
  const std::uint64_t h = detail::fnv1a(full_name);
  // splitmix64 of the name hash and the run seed, kept positive for int64 consumers.
  std::uint64_t z = h + run_seed * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (z ^ (z >> 31)) & ((1ULL << 63) - 1);
}

std::uint64_t test_seed() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name;
  if (info != nullptr) name = std::string(info->test_suite_name()) + "." + info->name();
  return seed_for(name, World::initialized() ? World::instance().options().seed : 0);
}

int local_gpu_count() { return static_cast<int>(torch::cuda::device_count()); }

void DistributedTest::SetUp() {
  const std::string& why = World::instance().unavailable_reason();
  if (!why.empty()) GTEST_SKIP() << why;
  at::manual_seed(seed());
}

void DistributedTest::barrier() const { process_group()->barrier()->wait(); }

}  // namespace c10dtest
