// The benchmarks' timer: the median wall time of `reps` calls of `f`, in seconds.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace c10dtest::bench {

template <typename F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace c10dtest::bench
