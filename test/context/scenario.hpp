// The layers below the runner on a context the program made (context.hpp): a 2-D mesh, DTensor
// round trips, a ShardedTensor, gather_state_dict and verify_state_dict passing and failing. Each
// rank runs it with its own context; every step records what it saw, and the caller checks that
// every rank saw the same verdicts. Used by ranks as threads (threads_test.cpp) and by ranks as
// processes in the runner (processes_test.cpp), which compares the two.
#pragma once

#include <c10dtest/context.hpp>
#include <c10dtest/distributed_state_dict.hpp>
#include <c10dtest/dtensor.hpp>
#include <c10dtest/sharded_tensor.hpp>
#include <c10dtest/verify.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace c10dtest::scenario {

struct Outcome {
  int rank = -1;
  std::vector<std::string> problems;  // what went wrong on this rank (empty: all as expected)
  std::string planted_message;        // the verdict on the planted difference
  std::string gather_message;         // the same, found by the gather strategy
};

// Deterministic values (no RNG: ranks may be threads sharing one generator).
inline at::Tensor values(std::vector<std::int64_t> shape, double base) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return at::arange(n, at::kFloat).reshape(shape).mul(0.25).add(base);
}

inline StateDict reference_dict() {
  StateDict sd;
  sd.insert("l1.weight", values({8, 6}, 1.0));
  sd.insert("l1.bias", values({8}, -2.0));
  sd.insert("l2.weight", values({5, 7}, 3.0));
  sd.insert("step", std::int64_t{12});
  return sd;
}

// Collective over `context` (4 ranks, a 2 x 2 mesh). `planted_rank` changes one element of its
// l1.weight shard before the failing verifications.
inline Outcome run(const ContextPtr& context, int planted_rank) {
  Outcome out;
  out.rank = context->rank();
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) out.problems.push_back(what);
  };
  const auto mesh = DeviceMesh::create(context, {2, 2});
  expect(mesh->my_rank() == context->rank(), "the mesh's rank is not the context's");
  expect(mesh->my_coordinate() ==
             std::vector<std::int64_t>{context->rank() / 2, context->rank() % 2},
         "the mesh coordinate is wrong");

  // DTensor round trips over both mesh dims, uneven shards included.
  const StateDict ref = reference_dict();
  const at::Tensor w1 = ref.at("l1.weight").as<at::Tensor>();
  const at::Tensor b1 = ref.at("l1.bias").as<at::Tensor>();
  const at::Tensor w2 = ref.at("l2.weight").as<at::Tensor>();
  DTensor dw1 = distribute_tensor(w1, mesh, {Shard{0}, Shard{1}});
  DTensor db1 = distribute_tensor(b1, mesh, {Replicate{}, Shard{0}});
  DTensor dw2 = distribute_tensor(w2, mesh, {Shard{1}, Replicate{}});  // 7 columns: uneven
  expect(at::equal(dw1.full_tensor(), w1), "l1.weight: full_tensor differs");
  expect(at::equal(dw2.full_tensor(), w2), "l2.weight: full_tensor differs");
  // From one source rank: the others pass nothing.
  DTensor from3 = distribute_tensor(context->rank() == 3 ? w2 : at::Tensor(), mesh,
                                    {Shard{0}, Shard{1}}, 3);
  expect(at::equal(from3.full_tensor(), w2), "distribute_tensor from rank 3 differs");

  // A ShardedTensor over the context's world group: rank r holds rows [2r, 2r + 2) of l1.weight.
  const int r = context->rank();
  std::vector<LocalShard> shards{{w1.narrow(0, 2 * r, 2).clone(), {{2 * r, 0}, {2, 6}, r}}};
  const ShardedTensor st = ShardedTensor::from_local_shards(shards, {8, 6},
                                                            context->process_group());
  expect(at::equal(st.full_tensor(), w1), "ShardedTensor: full_tensor differs");

  StateDict dist;
  dist.insert("l1.weight", dw1);
  dist.insert("l1.bias", db1);
  dist.insert("l2.weight", dw2);
  dist.insert("step", std::int64_t{12});

  const StateDict full = gather_state_dict(dist);
  for (const auto& key : ref.keys()) {
    const bool same = ref.at(key).is<at::Tensor>()
                          ? full.contains(key) && full.at(key).is<at::Tensor>() &&
                                at::equal(full.at(key).as<at::Tensor>(), ref.at(key).as<at::Tensor>())
                          : full.contains(key);
    expect(same, "gather_state_dict: " + key + " differs");
  }
  expect(static_cast<bool>(verify_state_dict(ref, dist)), "verify_state_dict failed on equal dicts");
  VerifyOptions gather;
  gather.strategy = VerifyStrategy::kGather;
  expect(static_cast<bool>(verify_state_dict(r == 0 ? ref : StateDict(), dist, gather)),
         "the gather strategy failed on equal dicts");

  // The planted difference: one element of one rank's shard.
  if (r == planted_rank) {
    at::Tensor local = dist.at("l1.weight").as<DTensor>().local();
    local.view(-1)[0].add_(0.5);
  }
  const auto planted = verify_state_dict(ref, dist);
  expect(!planted, "verify_state_dict passed despite the planted difference");
  out.planted_message = planted.message();
  const auto gathered = verify_state_dict(r == 0 ? ref : StateDict(), dist, gather);
  expect(!gathered, "the gather strategy passed despite the planted difference");
  out.gather_message = gathered.message();
  return out;
}

constexpr int kRanks = 4;

// The scenario with kRanks threads of this process as the ranks (one HashStore, one context per
// thread; `scoped`: each thread installs its context with ScopedContext).
inline std::vector<Outcome> run_as_threads(int planted_rank, bool scoped) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<Outcome> outcomes(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      try {
        ContextOptions options;
        options.group.timeout = std::chrono::seconds(60);
        const ContextPtr context = make_context(store, r, kRanks, options);
        if (scoped) {
          // The functions that take no context (gather, verify) use this thread's.
          ScopedContext use(context);
          outcomes[static_cast<std::size_t>(r)] = run(context, planted_rank);
        } else {
          outcomes[static_cast<std::size_t>(r)] = run(context, planted_rank);
        }
      } catch (const std::exception& e) {
        outcomes[static_cast<std::size_t>(r)].rank = r;
        outcomes[static_cast<std::size_t>(r)].problems.push_back(std::string("threw: ") + e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  return outcomes;
}

}  // namespace c10dtest::scenario
