// Files from real PyTorch, both directions (run by scripts/test-interop.sh, not by CTest: it needs
// the files test/interop/make_reference.py writes with torch and safetensors).
//
//   C10DTEST_INTEROP_DIR  what make_reference.py wrote (read)
//   C10DTEST_INTEROP_OUT  where this suite writes files for check_written.py (one per world size)
//
// Every value here is computed independently of the files (test/interop/common.py holds the
// Python twin of formula() and of the training run), sharded over the world as DTensors (1-D and
// 2-D meshes, Shard and Replicate) and ShardedTensors, and verified against the file.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/state_dict_file.hpp>
#include <c10dtest/testing/modules.hpp>
#include <torch/optim/adam.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
namespace ct = c10dtest::testing;
using c10dtest::DTensor;
using c10dtest::FileFormat;
using c10dtest::Placement;
using c10dtest::Replicate;
using c10dtest::Shard;
using c10dtest::StateDict;
using c10dtest::StateList;
using c10dtest::StateValue;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// common.py's formula(): arange * 0.37 - 3 + salt in double, then cast.
at::Tensor formula(at::ScalarType dtype, std::vector<std::int64_t> shape, double salt) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  if (dtype == at::kBool) return at::arange(n, at::kLong).reshape(shape).remainder(3).eq(0);
  const at::Tensor v = at::arange(n, at::kDouble).reshape(shape) * 0.37 - 3.0 + salt;
  if (at::isComplexType(dtype)) return at::complex(v, -v).to(dtype);
  return v.to(dtype);
}

struct Entry {
  const char* name;
  at::ScalarType dtype;
  std::vector<std::int64_t> shape;
};

// common.py's FORMULA, then COMPLEX (salt = position).
StateDict formula_dict(bool with_complex) {
  const std::vector<Entry> entries = {
      {"f32", at::kFloat, {7, 5}},    {"f64", at::kDouble, {6, 3}},   {"f16", at::kHalf, {9, 4}},
      {"bf16", at::kBFloat16, {5, 8}}, {"i64", at::kLong, {10}},       {"i32", at::kInt, {4, 4}},
      {"i16", at::kShort, {3, 7}},    {"i8", at::kChar, {6}},          {"u8", at::kByte, {2, 3, 4}},
      {"bool", at::kBool, {7, 3}},    {"scalar", at::kFloat, {}},      {"empty", at::kFloat, {0, 3}},
      {"view.t", at::kFloat, {4, 6}}, {"c64", at::kComplexFloat, {5, 2}},
      {"c128", at::kComplexDouble, {3}}};
  StateDict sd;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (!with_complex && at::isComplexType(e.dtype)) continue;
    const double salt = static_cast<double>(i);
    if (std::string(e.name) == "view.t") {
      sd.insert(e.name, formula(e.dtype, {e.shape[1], e.shape[0]}, salt).t());
    } else {
      sd.insert(e.name, formula(e.dtype, e.shape, salt));
    }
  }
  return sd;
}

// common.fill_with_formula: parameters, then buffers, in registration order.
void fill_with_formula(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> all = m.parameters();
  for (const auto& b : m.buffers()) all.push_back(b);
  for (std::size_t i = 0; i < all.size(); ++i) {
    all[i].copy_(formula(all[i].scalar_type(), all[i].sizes().vec(), 100.0 + static_cast<double>(i)));
  }
}

class Interop : public c10dtest::DistributedTest, public c10dtest::VerifyStateDictMixin {
 protected:
  void SetUp() override {
    c10dtest::DistributedTest::SetUp();
    in_ = env("C10DTEST_INTEROP_DIR");
    if (in_.empty()) GTEST_SKIP() << "C10DTEST_INTEROP_DIR is not set: run scripts/test-interop.sh";
    out_ = env("C10DTEST_INTEROP_OUT");
    mesh_ = c10dtest::DeviceMesh::create({world_size()});
    if (world_size() == 4) mesh2d_ = c10dtest::DeviceMesh::create({2, 2});
  }
  std::string in(const std::string& name) const { return in_ + "/" + name; }

  // Every tensor of `full` laid out over the world, by position: DTensor Shard(0), Shard(1),
  // Replicate, a ShardedTensor of row blocks, and on 4 ranks a 2-D mesh [Shard(0), Shard(1)].
  StateValue shard(const StateValue& v, std::size_t& counter) const {
    if (v.is<StateDict>()) {
      StateDict out;
      const auto& d = v.as<StateDict>();
      for (std::size_t i = 0; i < d.size(); ++i) out.insert(d.keys()[i], shard(d.value(i), counter));
      return out;
    }
    if (!v.is<at::Tensor>()) return v;
    const at::Tensor& t = v.as<at::Tensor>();
    const std::size_t k = counter++;
    if (t.dim() == 0) return c10dtest::distribute_tensor(t, mesh_, {Replicate{}});
    switch (k % 5) {
      case 0: return c10dtest::distribute_tensor(t, mesh_, {Shard{0}});
      case 1:
        return c10dtest::distribute_tensor(t, mesh_, {t.dim() > 1 ? Placement(Shard{1}) : Placement(Shard{0})});
      case 2: return c10dtest::distribute_tensor(t, mesh_, {Replicate{}});
      case 3: {
        // Row blocks, ceil(rows / world) each; a rank past the end holds no shard.
        const std::int64_t rows = t.size(0);
        const std::int64_t block = (rows + world_size() - 1) / world_size();
        std::vector<c10dtest::LocalShard> mine;
        const std::int64_t begin = block * rank();
        if (begin < rows && block > 0) {
          const std::int64_t len = std::min(block, rows - begin);
          std::vector<std::int64_t> offsets(static_cast<std::size_t>(t.dim()), 0);
          offsets[0] = begin;
          std::vector<std::int64_t> sizes = t.sizes().vec();
          sizes[0] = len;
          mine.push_back({t.narrow(0, begin, len).clone(), {offsets, sizes, rank()}});
        }
        return c10dtest::ShardedTensor::from_local_shards(mine, t.sizes().vec(), process_group());
      }
      default:
        if (mesh2d_ && t.dim() > 1) return c10dtest::distribute_tensor(t, mesh2d_, {Shard{0}, Shard{1}});
        return c10dtest::distribute_tensor(t, mesh_, {Shard{0}});
    }
  }
  StateDict shard(const StateDict& full) const {
    std::size_t counter = 0;
    return shard(StateValue(full), counter).as<StateDict>();
  }

  std::string in_, out_;
  std::shared_ptr<const c10dtest::DeviceMesh> mesh_, mesh2d_;
};

TEST_F(Interop, FormulaFilesVerifySharded) {
  for (const char* name : {"formula.pt", "formula_p5.pt", "formula.safetensors"}) {
    SCOPED_TRACE(name);
    const auto file = c10dtest::read_state_dict_file(in(name));
    const bool pt = file.format == FileFormat::kTorchSave;
    if (!pt) {
      EXPECT_EQ(file.metadata.at("written_by"), "make_reference.py");
    }
    const StateDict dist = shard(formula_dict(pt));
    c10dtest::VerifyOptions exact;
    exact.compare.rtol = 0;
    exact.compare.atol = 0;
    EXPECT_TRUE(c10dtest::verify_state_dict(file.state_dict, dist, exact));
    EXPECT_TRUE(verify_msd(file.state_dict, dist, exact));  // the mixin, as a port would call it
    // torch.save kept the view: non-contiguous, with the transpose's strides.
    if (pt) {
      const at::Tensor& view = file.state_dict.at("view.t").as<at::Tensor>();
      EXPECT_FALSE(view.is_contiguous());
      EXPECT_EQ(view.strides(), (c10::IntArrayRef{1, 4}));
    }
  }
}

TEST_F(Interop, PlantedDifferenceInOneShardIsCaughtAndNamed) {
  for (const char* name : {"formula.pt", "formula.safetensors"}) {
    SCOPED_TRACE(name);
    const StateDict ref = c10dtest::read_state_dict(in(name));
    StateDict dist = shard(formula_dict(std::string(name) == "formula.pt"));
    // "f32" is laid out Shard(0) (position 0): the last rank's rows are changed there only.
    DTensor& d = dist.at("f32").as<DTensor>();
    const int victim = world_size() - 1;
    if (rank() == victim) {
      at::Tensor local = d.local().clone();
      local.view({-1})[0] += 0.5;
      d = DTensor(local, d.mesh(), d.placements(), d.global_shape());
    }
    const auto r = c10dtest::verify_state_dict(ref, dist);
    ASSERT_FALSE(r);
    const std::string msg = r.message();
    EXPECT_NE(msg.find("'f32'"), std::string::npos) << msg;
    if (world_size() > 1) {
      EXPECT_NE(msg.find("rank " + std::to_string(victim)), std::string::npos) << msg;
    }
    EXPECT_EQ(msg.find("'f64'"), std::string::npos) << msg;
  }
}

// PyTorch's own torch.save archives are used in place too (stored records, 64-byte aligned): a
// change made to a copy of the file in place shows through the mapped tensor.
TEST_F(Interop, PyTorchsArchivesAreMappedNotCopied) {
  const std::string copy =
      (fs::temp_directory_path() / ("c10dtest-marker-" + std::to_string(::getpid()) + ".pt")).string();
  fs::copy_file(in("marker.pt"), copy, fs::copy_options::overwrite_existing);
  const at::Tensor w = c10dtest::read_state_dict(copy).at("w").as<at::Tensor>();
  EXPECT_EQ(w[7].item<float>(), 1234.5f);
  std::string bytes;
  {
    std::ifstream f(copy, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  const float marker = 1234.5f;
  const std::string pattern(reinterpret_cast<const char*>(&marker), sizeof marker);
  for (auto at = bytes.find(pattern); at != std::string::npos; at = bytes.find(pattern, at + 4)) {
    bytes.replace(at, 4, std::string(4, '\0'));
  }
  {
    std::fstream f(copy, std::ios::in | std::ios::out | std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  EXPECT_EQ(w[100].item<float>(), 0.0f) << "the storage was copied, not mapped";
  fs::remove(copy);
}

// Python's FusionEmbeddingWithHook (test_state_dict.py's) against the C++ one and against
// FusionEmbeddingWithModifier, which reaches the same keys through an FQN modifier.
TEST_F(Interop, FusionEmbeddingsMatchPythonsKeysAndValues) {
  ct::FusionEmbeddingWithHook hooked(4, 4, 4);
  ct::FusionEmbeddingWithModifier modified(4, 4, 4);
  fill_with_formula(*hooked);
  fill_with_formula(*modified);
  const StateDict dist_hooked = shard(c10dtest::get_model_state_dict(*hooked));
  const StateDict dist_modified = shard(c10dtest::get_model_state_dict(*modified));
  for (const char* name : {"fusion.pt", "fusion.safetensors"}) {
    SCOPED_TRACE(name);
    const StateDict ref = c10dtest::read_state_dict(in(name));
    EXPECT_TRUE(ref.contains("weight") && ref.contains("fusion_embedding.weight")) << ref.describe();
    EXPECT_TRUE(c10dtest::verify_state_dict(ref, dist_hooked));
    EXPECT_TRUE(c10dtest::verify_state_dict(ref, dist_modified));
  }
}

// CompositeParamModel from Python's initial state, trained here on Python's inputs, as
// make_reference.py trained it.
struct Trained {
  ct::CompositeParamModel model;
  std::unique_ptr<torch::optim::Adam> optim;
};

Trained train(const std::string& dir) {
  Trained t;
  c10dtest::set_model_state_dict(*t.model, c10dtest::read_state_dict(dir + "/composite_init.pt"));
  const StateDict inputs = c10dtest::read_state_dict(dir + "/composite_inputs.pt");
  t.optim = std::make_unique<torch::optim::Adam>(t.model->parameters(),
                                                 torch::optim::AdamOptions(1e-3));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    t.optim->zero_grad();
    t.model->forward(inputs.at(std::to_string(i)).as<at::Tensor>()).sum().backward();
    t.optim->step();
  }
  return t;
}

// The "state" of a canonical (FQN-keyed) optimizer state dict without "step", which PyTorch
// keeps as a float tensor and LibTorch's Adam as an integer (compared apart).
StateDict state_without_step(const StateDict& osd, std::map<std::string, double>* steps) {
  StateDict out;
  const StateDict& state = osd.at("state").as<StateDict>();
  for (std::size_t i = 0; i < state.size(); ++i) {
    StateDict per = state.value(i).as<StateDict>();
    const StateValue& s = per.at("step");
    (*steps)[state.keys()[i]] = s.is<at::Tensor>() ? s.as<at::Tensor>().item<double>()
                                                    : static_cast<double>(s.as<std::int64_t>());
    per.erase("step");
    out.insert(state.keys()[i], per);
  }
  return out;
}

TEST_F(Interop, CompositeParamModelTrainedInCppMatchesPythonsFiles) {
  Trained t = train(in_);
  const StateDict dist_msd = shard(c10dtest::get_model_state_dict(*t.model));
  for (const char* name : {"composite_msd.pt", "composite_msd.safetensors"}) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(c10dtest::verify_state_dict(c10dtest::read_state_dict(in(name)), dist_msd));
  }
  // Optimizer: Python's ids mapped to FQNs by the optimizer's parameter order.
  const StateDict cpp_osd = c10dtest::get_optimizer_state_dict(*t.model, *t.optim);
  const StateDict py_osd = c10dtest::canonical_optimizer_state_dict(
      *t.model, *t.optim, c10dtest::read_state_dict(in("composite_osd.pt")));
  std::map<std::string, double> py_steps, cpp_steps;
  const StateDict ref_state = state_without_step(py_osd, &py_steps);
  const StateDict dist_state = shard(state_without_step(cpp_osd, &cpp_steps));
  EXPECT_TRUE(c10dtest::verify_state_dict(ref_state, dist_state));
  EXPECT_EQ(py_steps, cpp_steps);
  EXPECT_EQ(py_steps.size(), 15u);
  // The hyperparameters both have (PyTorch's groups also hold foreach, maximize, ...).
  const StateDict& pg = py_osd.at("param_groups").as<StateList>().at(0).as<StateDict>();
  const StateDict& cg = cpp_osd.at("param_groups").as<StateList>().at(0).as<StateDict>();
  for (const char* k : {"lr", "betas", "eps", "weight_decay", "amsgrad"}) {
    EXPECT_EQ(pg.at(k).summary(), cg.at(k).summary()) << k;
  }
  // verify_osd against PyTorch's file as it is: everything matches but the step's type and the
  // hyperparameters LibTorch's Adam has not (docs/files.md).
  const auto whole = c10dtest::detail::verify_osd_impl(
      *t.model, *t.optim, c10dtest::read_state_dict(in("composite_osd.pt")), shard(cpp_osd), {});
  EXPECT_FALSE(whole);
  const std::string why = whole.message();
  EXPECT_NE(why.find("step"), std::string::npos) << why;
  EXPECT_EQ(why.find("exp_avg"), std::string::npos) << why;
  if (rank() == 0) std::cout << "verify_osd against PyTorch's own file:\n" << why << "\n";
  // from_pytorch_optimizer_state_dict (docs/files.md): the step as an integer, without PyTorch's
  // param-group entries at defaults that mean LibTorch's behaviour. Then verify_osd passes.
  const StateDict ref = c10dtest::from_pytorch_optimizer_state_dict(
      *t.model, *t.optim, c10dtest::read_state_dict(in("composite_osd.pt")));
  EXPECT_TRUE(c10dtest::detail::verify_osd_impl(*t.model, *t.optim, ref, shard(cpp_osd), {}));
  // The safetensors copy: flat "state.<id>.<name>" tensors.
  const StateDict flat = c10dtest::read_state_dict(in("composite_osd.safetensors"));
  std::vector<std::string> fqns;
  for (const auto& p : t.model->named_parameters()) fqns.push_back(p.key());
  StateDict ref_flat;
  for (const auto& key : flat.keys()) {
    const auto dot1 = key.find('.');
    const auto dot2 = key.find('.', dot1 + 1);
    const std::string field = key.substr(dot2 + 1);
    if (field == "step") continue;
    const std::size_t id = std::stoul(key.substr(dot1 + 1, dot2 - dot1 - 1));
    ASSERT_LT(id, fqns.size()) << key;
    ref_flat.insert(fqns[id] + "." + field, flat.at(key));
  }
  EXPECT_TRUE(c10dtest::verify_state_dict(ref_flat, dist_state));
}

// PyTorch's VerifyStateDictMixin._verify_msd verdicts (diff/verdicts.txt) against
// verify_state_dict(..., like_pytorch()) on the same pair, the distributed side sharded. The
// kinds where c10dtest decides otherwise on purpose are listed in docs/files.md.
TEST_F(Interop, VerdictsAgreeWithPyTorchsVerifyMsd) {
  std::ifstream verdicts(in("diff/verdicts.txt"));
  ASSERT_TRUE(verdicts) << in("diff/verdicts.txt");
  const std::map<std::string, std::string> differs = {
      {"broadcast", "torch.allclose broadcasts the shapes; a state dict must match exactly"},
  };
  std::string line;
  int cases = 0, agree = 0, documented = 0;
  std::map<std::string, std::pair<int, int>> by_kind;  // agree, total
  while (std::getline(verdicts, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream is(line);
    std::string id, kind, torch_verdict;
    is >> id >> kind >> torch_verdict;
    const StateDict ref = c10dtest::read_state_dict(in("diff/" + id + ".ref.pt"));
    const StateDict dist = shard(c10dtest::read_state_dict(in("diff/" + id + ".dist.pt")));
    const auto r = c10dtest::verify_state_dict(ref, dist, c10dtest::VerifyOptions::like_pytorch());
    const std::string ours = r ? "pass" : "fail";
    ++cases;
    auto& k = by_kind[kind];
    ++k.second;
    if (ours == torch_verdict) {
      ++agree;
      ++k.first;
    } else if (differs.count(kind) != 0) {
      ++documented;
    } else {
      ADD_FAILURE() << "case " << id << " (" << kind << "): PyTorch says " << torch_verdict
                    << ", c10dtest says " << ours << "\n"
                    << r.message();
    }
  }
  EXPECT_GE(cases, 100);
  if (rank() == 0) {
    std::cout << "differential: " << cases << " cases, " << agree << " agree, " << documented
              << " differ as documented;";
    for (const auto& [kind, n] : by_kind) std::cout << " " << kind << " " << n.first << "/" << n.second;
    std::cout << "\n";
  }
}

TEST_F(Interop, WritesFilesPythonLoads) {
  if (out_.empty()) GTEST_SKIP() << "C10DTEST_INTEROP_OUT is not set";
  if (rank() == 0) fs::create_directories(out_);
  // Full files from rank 0, after gathering sharded dicts.
  const StateDict full_pt = c10dtest::gather_state_dict(shard(formula_dict(true)));
  const StateDict full_st = c10dtest::gather_state_dict(shard(formula_dict(false)));
  Trained t = train(in_);
  const StateDict msd = c10dtest::gather_state_dict(shard(c10dtest::get_model_state_dict(*t.model)));
  StateDict osd = c10dtest::get_optimizer_state_dict(*t.model, *t.optim);
  if (rank() == 0) {
    c10dtest::write_state_dict(out_ + "/formula.pt", full_pt);
    c10dtest::WriteFileOptions meta;
    meta.metadata = {{"format", "pt"}};
    c10dtest::write_state_dict(out_ + "/formula.safetensors", full_st, FileFormat::kAuto, meta);
    c10dtest::write_state_dict(out_ + "/composite_msd.pt", msd);
    c10dtest::write_state_dict(out_ + "/composite_msd.safetensors", msd);
    c10dtest::write_state_dict(out_ + "/composite_osd.pt", osd);
    c10dtest::write_state_dict(out_ + "/composite_osd.safetensors", osd);
  }
  // Every rank: its own pieces, global offsets in the metadata.
  c10dtest::World::instance().min_over_ranks(0);  // the directory exists before anyone writes
  c10dtest::write_state_dict(out_ + "/formula.rank" + std::to_string(rank()) + ".safetensors",
                             shard(formula_dict(false)));
}

}  // namespace
