// Sharded dicts written one safetensors file per rank and put back together by
// read_sharded_state_dict: seeded random layouts (1-D and 2-D meshes, sub-meshes, Shard on any
// dim, Replicate, uneven and empty pieces, ShardedTensor row blocks), every dtype the format
// keeps, plain tensors and values beside them; read back by every rank in its own file order.
// Malformed sets of files are in file_format_test.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/state_dict_file.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using c10dtest::DTensor;
using c10dtest::FileFormatError;
using c10dtest::Placement;
using c10dtest::StateDict;
using c10dtest::StateList;

std::uint64_t file_seed() {
  const char* s = std::getenv("C10DTEST_SHARDED_FILE_SEED");
  return s != nullptr ? std::strtoull(s, nullptr, 10) : 20261203;
}
int cases_per_run() {
  const char* s = std::getenv("C10DTEST_SHARDED_FILE_CASES");
  return s != nullptr ? std::atoi(s) : 12;
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous();
  const at::Tensor y = b.contiguous();
  return x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

// The same values on every rank: everything below is drawn from one seeded generator.
at::Tensor random_tensor(std::mt19937_64& rng, std::vector<std::int64_t> shape, at::ScalarType t) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(rng());
  at::Tensor x = at::randn(shape, gen, at::kDouble) * 100;
  if (t == at::kBool) return x.gt(0);
  if (at::isIntegralType(t, false)) return x.round().to(t);
  if (t == at::kComplexFloat) {
    return at::complex(x.to(at::kFloat), at::randn(shape, gen, at::kFloat));
  }
  return x.to(t);
}

class ShardedFile : public c10dtest::DistributedTest {
 protected:
  std::string file(const std::string& name, int r) const {
    return temp_dir() + "/" + name + ".rank" + std::to_string(r) + ".safetensors";
  }
  // Every rank's file of `name`, starting with this rank's (so each rank reads in its own order).
  std::vector<std::string> files(const std::string& name) const {
    std::vector<std::string> out;
    for (int i = 0; i < world_size(); ++i) out.push_back(file(name, (rank() + i) % world_size()));
    return out;
  }
};

TEST_F(ShardedFile, RandomLayoutsComeBackWhole) {
  const int ws = world_size();
  const std::vector<at::ScalarType> dtypes = {at::kFloat, at::kDouble, at::kHalf,  at::kBFloat16,
                                              at::kLong,  at::kInt,    at::kShort, at::kChar,
                                              at::kByte,  at::kBool,   at::kComplexFloat};
  int pieces_checked = 0;
  for (int c = 0; c < cases_per_run(); ++c) {
    std::mt19937_64 rng(file_seed() * 1000003 + static_cast<std::uint64_t>(c));
    SCOPED_TRACE("case " + std::to_string(c) + " (C10DTEST_SHARDED_FILE_SEED=" +
                 std::to_string(file_seed()) + ")");
    // The mesh: the whole world in 1-D, 2-D where it splits, or a sub-mesh of some ranks.
    std::vector<int> ranks(ws);
    for (int r = 0; r < ws; ++r) ranks[r] = r;
    std::shuffle(ranks.begin(), ranks.end(), rng);
    const int pick = static_cast<int>(rng() % 3);
    std::shared_ptr<const c10dtest::DeviceMesh> mesh;
    if (pick == 1 && ws == 4) {
      mesh = c10dtest::DeviceMesh::create({2, 2}, ranks);
    } else if (pick == 2 && ws > 1) {
      ranks.resize(static_cast<std::size_t>(1 + rng() % (ws - 1)));
      mesh = c10dtest::DeviceMesh::create({static_cast<std::int64_t>(ranks.size())}, ranks);
    } else {
      mesh = c10dtest::DeviceMesh::create({ws}, ranks);
    }
    StateDict full;
    StateDict dist;
    const int keys = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < keys; ++k) {
      const int ndim = static_cast<int>(rng() % 4);
      std::vector<std::int64_t> shape;
      for (int d = 0; d < ndim; ++d) shape.push_back(static_cast<std::int64_t>(rng() % 8));
      const at::ScalarType dtype = dtypes[rng() % dtypes.size()];
      const at::Tensor t = random_tensor(rng, shape, dtype);
      std::vector<Placement> placements;
      for (int d = 0; d < mesh->ndim(); ++d) {
        if (ndim > 0 && rng() % 3 != 0) {
          placements.emplace_back(c10dtest::Shard{static_cast<std::int64_t>(rng() % ndim)});
        } else {
          placements.emplace_back(c10dtest::Replicate{});
        }
      }
      const std::string key = "layer" + std::to_string(k) + ".weight";
      full.insert(key, t);
      dist.insert(key, c10dtest::distribute_tensor(t, mesh, placements));
    }
    // A ShardedTensor: uneven row blocks over the whole world, some ranks with none.
    {
      const std::int64_t rows = static_cast<std::int64_t>(rng() % 10);
      const at::Tensor t = random_tensor(rng, {rows, 3}, at::kFloat);
      std::vector<std::int64_t> cuts = {0, rows};
      for (int r = 1; r < ws; ++r) cuts.push_back(static_cast<std::int64_t>(rng() % (rows + 1)));
      std::sort(cuts.begin(), cuts.end());
      std::vector<c10dtest::LocalShard> mine;
      const std::int64_t from = cuts[rank()];
      const std::int64_t n = cuts[rank() + 1] - from;
      if (n > 0) mine.push_back({t.narrow(0, from, n).clone(), {{from, 0}, {n, 3}, rank()}});
      full.insert("table", t);
      dist.insert("table", c10dtest::ShardedTensor::from_local_shards(mine, {rows, 3},
                                                                      process_group()));
    }
    // Written whole by every rank.
    const at::Tensor plain = random_tensor(rng, {4}, at::kFloat);
    full.insert("plain", plain);
    dist.insert("plain", plain);
    full.insert("step", static_cast<std::int64_t>(c));
    dist.insert("step", static_cast<std::int64_t>(c));
    full.insert("betas", StateList{0.9, 0.999});
    dist.insert("betas", StateList{0.9, 0.999});

    const std::string name = "case" + std::to_string(c);
    c10dtest::write_state_dict(file(name, rank()), dist);
    c10dtest::World::instance().min_over_ranks(0);  // every file is written
    const StateDict back = c10dtest::read_sharded_state_dict(files(name));
    ASSERT_EQ(back.keys().size(), full.keys().size()) << back.describe();
    for (std::size_t i = 0; i < full.size(); ++i) {
      const std::string& key = full.keys()[i];
      ASSERT_TRUE(back.contains(key)) << key;
      const auto& want = full.value(i);
      const auto& got = back.at(key);
      if (want.is<at::Tensor>()) {
        ASSERT_TRUE(got.is<at::Tensor>()) << key << ": " << got.summary();
        EXPECT_TRUE(same_bits(got.as<at::Tensor>(), want.as<at::Tensor>()))
            << key << ": " << got.summary() << " against " << want.summary() << " on mesh "
            << mesh->describe() << "\n"
            << got.as<at::Tensor>() << "\n"
            << want.as<at::Tensor>();
        ++pieces_checked;
      } else {
        EXPECT_EQ(got.summary(), want.summary()) << key;
      }
    }
    EXPECT_EQ(back.at("betas").as<StateList>().at(1).as<double>(), 0.999);
  }
  EXPECT_GT(pieces_checked, cases_per_run());
}

// Without one rank's file, what only that rank held is named as missing.
TEST_F(ShardedFile, AMissingRanksFileIsNamed) {
  C10DTEST_REQUIRE_WORLD_SIZE(2);
  const auto mesh = c10dtest::DeviceMesh::create({world_size()});
  const at::Tensor t = at::arange(4 * world_size(), at::kFloat).reshape({world_size(), 4});
  StateDict dist;
  dist.insert("w", c10dtest::distribute_tensor(t, mesh, {c10dtest::Shard{0}}));
  dist.insert("r", c10dtest::distribute_tensor(t, mesh, {c10dtest::Replicate{}}));
  c10dtest::write_state_dict(file("sd", rank()), dist);
  c10dtest::World::instance().min_over_ranks(0);
  std::vector<std::string> some = files("sd");
  const std::string left_out = some.back();
  some.pop_back();
  try {
    c10dtest::read_sharded_state_dict(some);
    FAIL() << "expected an error without " << left_out;
  } catch (const FileFormatError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'w' [" + std::to_string(world_size()) + ", 4]: 4 of " +
                     std::to_string(4 * world_size()) + " elements are in none of the " +
                     std::to_string(world_size() - 1) + " files"),
              std::string::npos)
        << m;
  }
  // A replicated DTensor comes back whole from any one rank's file.
  StateDict replicated;
  replicated.insert("r", dist.at("r"));
  c10dtest::write_state_dict(file("replicated", rank()), replicated);
  c10dtest::World::instance().min_over_ranks(0);
  const StateDict one = c10dtest::read_sharded_state_dict({file("replicated", world_size() - 1)});
  EXPECT_TRUE(same_bits(one.at("r").as<at::Tensor>(), t));
}

}  // namespace
