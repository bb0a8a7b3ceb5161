// 50 trivial distributed tests: each does one one-element allreduce and checks it, so a test
// costs little more than what c10dtest adds around it (result aggregation over the control
// plane, watchdog arming, seeding). bench/overhead.sh times them against a one-test launch.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>

namespace {

class Trivial : public c10dtest::DistributedTest {
 protected:
  void one_allreduce() {
    std::vector<at::Tensor> t{at::ones({1})};
    process_group()->allreduce(t)->wait();
    EXPECT_EQ(t[0].item<float>(), static_cast<float>(world_size()));
  }
};

#define C10DTEST_TRIVIAL(n) \
  TEST_F(Trivial, T##n) { one_allreduce(); }
#define C10DTEST_TRIVIAL10(d)                                                               \
  C10DTEST_TRIVIAL(d##0) C10DTEST_TRIVIAL(d##1) C10DTEST_TRIVIAL(d##2) C10DTEST_TRIVIAL(d##3) \
  C10DTEST_TRIVIAL(d##4) C10DTEST_TRIVIAL(d##5) C10DTEST_TRIVIAL(d##6) C10DTEST_TRIVIAL(d##7) \
  C10DTEST_TRIVIAL(d##8) C10DTEST_TRIVIAL(d##9)

C10DTEST_TRIVIAL10(0)
C10DTEST_TRIVIAL10(1)
C10DTEST_TRIVIAL10(2)
C10DTEST_TRIVIAL10(3)
C10DTEST_TRIVIAL10(4)

}  // namespace
