// gather_state_dict, broadcast_state_dict and distribute_state_dict at 1, 2 and 4 ranks.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/distributed_state_dict.hpp>

namespace {

using c10dtest::DeviceMesh;
using c10dtest::DTensor;
using c10dtest::Placement;
using c10dtest::StateDict;
using c10dtest::StateDictError;
using c10dtest::StateList;
using c10dtest::StateValue;

class GatherStateDict : public c10dtest::DistributedTest {
 protected:
  // Full tensors of several dtypes and shapes, and the same laid out in many ways.
  void build(StateDict* full, StateDict* sharded) {
    auto mesh = DeviceMesh::create({world_size()});
    const std::vector<std::pair<std::string, std::vector<Placement>>> layouts{
        {"rows", {c10dtest::Shard{0}}},
        {"cols", {c10dtest::Shard{1}}},
        {"replicated", {c10dtest::Replicate{}}},
        {"partial", {c10dtest::Partial{}}}};
    int i = 0;
    for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kLong, at::kBool,
                       at::kComplexFloat}) {
      for (const auto& [name, placements] : layouts) {
        const std::string key = "m" + std::to_string(i++) + "." + name;
        const at::Tensor t = (at::randn({7, 3}) * 10).to(dtype);
        full->insert(key, t);
        sharded->insert(key, c10dtest::distribute_tensor(t, mesh, placements));
      }
    }
    // A ShardedTensor with rows in chunks and a nested optimizer-like entry.
    const at::Tensor st_full = at::randn({5, 2});
    const auto e = c10dtest::chunk_extent(5, world_size(), rank());
    std::vector<c10dtest::LocalShard> mine{
        {st_full.narrow(0, e.offset, e.length).clone(), {{e.offset, 0}, {e.length, 2}, 0}}};
    full->insert("st", st_full);
    sharded->insert("st", c10dtest::ShardedTensor::from_local_shards(mine, {5, 2}, process_group()));
    StateDict inner_full;
    StateDict inner_sharded;
    const at::Tensor avg = at::randn({9});
    inner_full.insert("exp_avg", avg);
    inner_sharded.insert("exp_avg", c10dtest::distribute_tensor(avg, mesh, {c10dtest::Shard{0}}));
    inner_full.insert("step", std::int64_t{10});
    inner_sharded.insert("step", std::int64_t{10});
    full->insert("state", inner_full);
    sharded->insert("state", inner_sharded);
    full->insert("groups", StateList{StateValue(0.5), StateValue(at::ones({2}))});
    sharded->insert("groups", StateList{StateValue(0.5), StateValue(at::ones({2}))});
  }

  static void expect_same(const StateValue& a, const StateValue& b, const std::string& path) {
    ASSERT_STREQ(a.type_name(), b.type_name()) << path;
    if (a.is<at::Tensor>()) {
      EXPECT_TRUE(at::equal(a.as<at::Tensor>(), b.as<at::Tensor>())) << path;
    } else if (a.is<StateDict>()) {
      ASSERT_EQ(a.as<StateDict>().keys(), b.as<StateDict>().keys()) << path;
      for (std::size_t i = 0; i < a.as<StateDict>().size(); ++i) {
        expect_same(a.as<StateDict>().value(i), b.as<StateDict>().value(i),
                    path + "." + a.as<StateDict>().keys()[i]);
      }
    } else if (a.is<StateList>()) {
      ASSERT_EQ(a.as<StateList>().size(), b.as<StateList>().size()) << path;
      for (std::size_t i = 0; i < a.as<StateList>().size(); ++i) {
        expect_same(a.as<StateList>()[i], b.as<StateList>()[i], path + "." + std::to_string(i));
      }
    } else if (a.is<double>()) {
      EXPECT_EQ(a.as<double>(), b.as<double>()) << path;
    } else if (a.is<std::int64_t>()) {
      EXPECT_EQ(a.as<std::int64_t>(), b.as<std::int64_t>()) << path;
    }
  }
};

TEST_F(GatherStateDict, EverySharedLayoutGathersExactly) {
  StateDict full;
  StateDict sharded;
  build(&full, &sharded);
  const StateDict gathered = c10dtest::gather_state_dict(sharded);
  expect_same(StateValue(full), StateValue(gathered), "");
}

// Empty pieces, alone in their group's batch: the exchange pads them to one byte, which is no
// part of the tensor (found by the layout fuzzer: gather_state_dict threw from_bytes).
TEST_F(GatherStateDict, EmptyTensorsGatherToEmptyTensors) {
  const auto mesh = DeviceMesh::create({world_size()});
  for (const auto& shape : std::vector<std::vector<std::int64_t>>{{0}, {0, 3}, {2, 0}}) {
    const at::Tensor t = at::zeros(shape);
    StateDict sharded;
    sharded.insert("e", c10dtest::distribute_tensor(t, mesh, {c10dtest::Shard{0}}));
    const StateDict gathered = c10dtest::gather_state_dict(sharded);
    const at::Tensor& g = gathered.at("e").as<at::Tensor>();
    EXPECT_EQ(g.sizes(), t.sizes());
    EXPECT_EQ(g.scalar_type(), t.scalar_type());
  }
}

TEST_F(GatherStateDict, LargeValuesTravelAloneAndStayExact) {
  // Pieces of 1 MiB and more take their own collective; an even dim-0 split lands in place.
  auto mesh = DeviceMesh::create({world_size()});
  StateDict full;
  StateDict sharded;
  const std::vector<std::pair<std::vector<std::int64_t>, Placement>> cases{
      {{1024 * world_size(), 256}, c10dtest::Shard{0}},   // even: gathered in place
      {{1024 * world_size() - 1, 256}, c10dtest::Shard{0}},  // uneven
      {{256, 1024 * world_size()}, c10dtest::Shard{1}}};  // not a dim-0 concatenation
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const at::Tensor t = at::randn(cases[i].first);
    full.insert("big" + std::to_string(i), t);
    sharded.insert("big" + std::to_string(i),
                   c10dtest::distribute_tensor(t, mesh, {cases[i].second}));
    full.insert("small" + std::to_string(i), at::full({2}, static_cast<double>(i)));
    sharded.insert("small" + std::to_string(i),
                   c10dtest::distribute_tensor(at::full({2}, static_cast<double>(i)), mesh,
                                               {c10dtest::Shard{0}}));
  }
  expect_same(StateValue(full), StateValue(c10dtest::gather_state_dict(sharded)), "");
  c10dtest::GatherOptions to_zero;
  to_zero.ranks_only = std::vector<int>{0};
  const StateDict at_zero = c10dtest::gather_state_dict(sharded, to_zero);
  if (rank() == 0) expect_same(StateValue(full), StateValue(at_zero), "");
}

TEST_F(GatherStateDict, RanksOnlyReceiveTheRestHoldNothing) {
  StateDict full;
  StateDict sharded;
  build(&full, &sharded);
  c10dtest::GatherOptions options;
  options.ranks_only = std::vector<int>{world_size() - 1};
  options.cpu_offload = true;
  const StateDict gathered = c10dtest::gather_state_dict(sharded, options);
  if (rank() == world_size() - 1) {
    expect_same(StateValue(full), StateValue(gathered), "");
    EXPECT_TRUE(gathered.at("m0.rows").as<at::Tensor>().device().is_cpu());
  } else {
    EXPECT_TRUE(gathered.empty()) << gathered.describe();
  }
}

TEST_F(GatherStateDict, DifferentLayoutsOnTheRanksAreAnError) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  auto mesh = DeviceMesh::create({world_size()});
  StateDict sd;
  // Rank 1 holds one more row than the others think the tensor has.
  const std::int64_t rows = rank() == 1 ? 9 : 8;
  sd.insert("w", c10dtest::distribute_tensor(at::zeros({rows, 2}), mesh, {c10dtest::Shard{0}}));
  try {
    c10dtest::gather_state_dict(sd);
    FAIL() << "expected an error";
  } catch (const StateDictError& e) {
    EXPECT_NE(std::string(e.what()).find("passed a state dict whose sharded entries differ"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(GatherStateDict, BroadcastCopiesRankZerosDict) {
  StateDict sd;
  if (rank() == 0) {
    sd.insert("w", at::randn({3, 4}));
    sd.insert("i", at::arange(5));
    sd.insert("mask", at::ones({2}, at::kBool));
    sd.insert("lr", 0.25);
    sd.insert("name", "adam\n:with:colons");
    sd.insert("flag", true);
    sd.insert("none", c10dtest::StateNone{});
    StateDict nested;
    nested.insert("step", std::int64_t{42});
    nested.insert("buf", at::randn({0, 3}));
    sd.insert("state", nested);
    sd.insert("groups", StateList{StateValue(std::int64_t{1}), StateValue(at::full({1}, 7.0))});
  } else {
    sd.insert("garbage", 1);  // ignored
  }
  const StateDict got = c10dtest::broadcast_state_dict(sd);
  // Rank 0's own dict must reach everyone: compare through a second broadcast of the result.
  std::vector<at::Tensor> w{got.at("w").as<at::Tensor>().clone()};
  process_group()->allreduce(w)->wait();
  EXPECT_TRUE(at::allclose(w[0], got.at("w").as<at::Tensor>() * world_size()));
  EXPECT_TRUE(at::equal(got.at("i").as<at::Tensor>(), at::arange(5)));
  EXPECT_TRUE(got.at("mask").as<at::Tensor>().all().item<bool>());
  EXPECT_EQ(got.at("lr").as<double>(), 0.25);
  EXPECT_EQ(got.at("name").as<std::string>(), "adam\n:with:colons");
  EXPECT_TRUE(got.at("flag").as<bool>());
  EXPECT_TRUE(got.at("none").is<c10dtest::StateNone>());
  EXPECT_EQ(got.at("state").as<StateDict>().at("step").as<std::int64_t>(), 42);
  EXPECT_EQ(got.at("state").as<StateDict>().at("buf").as<at::Tensor>().sizes(),
            (at::IntArrayRef{0, 3}));
  EXPECT_EQ(got.at("groups").as<StateList>()[1].as<at::Tensor>().item<double>(), 7.0);
  EXPECT_FALSE(got.contains("garbage"));
}

TEST_F(GatherStateDict, DistributeSlicesAFullDictLikeAShardedOne) {
  StateDict full;
  StateDict sharded;
  build(&full, &sharded);
  // Start from zeros in the sharded layout, fill from the full dict, then gather back.
  const StateDict filled = c10dtest::distribute_state_dict(full, sharded);
  EXPECT_TRUE(filled.at("m0.rows").is<DTensor>());
  EXPECT_TRUE(filled.at("st").is<c10dtest::ShardedTensor>());
  EXPECT_TRUE(at::equal(filled.at("m0.rows").as<DTensor>().local(),
                        sharded.at("m0.rows").as<DTensor>().local()));
  expect_same(StateValue(full), StateValue(c10dtest::gather_state_dict(filled)), "");
}

TEST_F(GatherStateDict, DistributeNamesMissingKeysAndShapeMismatches) {
  StateDict full;
  StateDict sharded;
  build(&full, &sharded);
  StateDict missing = full;
  missing.at("state").as<StateDict>().erase("exp_avg");
  EXPECT_THROW(
      {
        try {
          c10dtest::distribute_state_dict(missing, sharded);
        } catch (const StateDictError& e) {
          EXPECT_STREQ(e.what(),
                       "distribute_state_dict: 'state.exp_avg' is missing from the full state dict");
          throw;
        }
      },
      StateDictError);
  StateDict wrong = full;
  wrong.insert("m0.rows", at::zeros({6, 3}));
  try {
    c10dtest::distribute_state_dict(wrong, sharded);
    FAIL() << "expected an error";
  } catch (const StateDictError& e) {
    EXPECT_STREQ(e.what(),
                 "distribute_state_dict: 'm0.rows' has shape [6, 3] in the full state dict, the "
                 "sharded one expects [7, 3]");
  }
}

}  // namespace
