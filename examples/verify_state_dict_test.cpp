// Verifying sharded training state against a local model: copy this into your suite.
//
//   mpirun -np 4 build/examples/verify_state_dict_example
//
// The local and FSDP trainers come from c10dtest::testing; in your own tests the "dist" side is
// your sharded model's state dict (DTensors or ShardedTensors) and the reference is a plain
// model trained on the same data.
#include <ATen/ATen.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/testing/trainers.hpp>
#include <gmock/gmock.h>

namespace {

namespace ct = c10dtest::testing;

class Checkpoint : public c10dtest::DistributedTest, public c10dtest::VerifyStateDictMixin {};

TEST_F(Checkpoint, FsdpMatchesLocal) {
  at::manual_seed(1);
  ct::DataParallelTrainer local(ct::composite_param_model_spec(), ct::Parallelism::Local,
                                ct::adam(1e-3));
  at::manual_seed(1);
  ct::DataParallelTrainer fsdp(ct::composite_param_model_spec(), ct::Parallelism::FSDP,
                               ct::adam(1e-3));
  const at::Tensor x = at::rand({8, 100});  // the same batch on every rank
  local.step(x);
  fsdp.step(x);
  EXPECT_TRUE(verify_msd(local.model_state_dict(), fsdp.model_state_dict()));
  EXPECT_TRUE(verify_osd(local.model(), local.optimizer(), fsdp.optimizer_state_dict()));
  C10DTEST_EXPECT_STATE_DICT_MATCHES(local.model_state_dict(), fsdp.model_state_dict());
  EXPECT_THAT(fsdp.model_state_dict(), c10dtest::StateDictMatches(local.model_state_dict()));
}

// Only rank 0 holds the reference: the others pass an empty dict and their shards are gathered
// to rank 0 for the comparison (the verdict is still everyone's).
TEST_F(Checkpoint, ReferenceOnRankZeroOnly) {
  at::manual_seed(2);
  ct::DataParallelTrainer local(ct::composite_param_model_spec(), ct::Parallelism::Local,
                                ct::sgd(1e-4));
  at::manual_seed(2);
  ct::DataParallelTrainer ddp(ct::composite_param_model_spec(), ct::Parallelism::DDP,
                              ct::sgd(1e-4));
  const at::Tensor x = at::rand({8, 100});
  local.step(x);
  ddp.step(x);
  const c10dtest::StateDict reference =
      rank() == 0 ? local.model_state_dict() : c10dtest::StateDict();
  C10DTEST_EXPECT_STATE_DICT_MATCHES(reference, ddp.model_state_dict());
}

// Hand-built sharded state: a row-parallel layer's output held as Partial(sum) (each rank's
// addend), and a second pipeline stage whose weights live on a mesh over half of the ranks. The
// verifier reduces Partial values before it compares them, and ranks outside a value's mesh take
// part without holding any of it: every rank gets the same verdict.
TEST_F(Checkpoint, PartialValuesAndASubMesh) {
  at::manual_seed(3);
  const at::Tensor out = at::randn({4, 6});
  const at::Tensor stage2 = at::randn({5, 3});
  c10dtest::StateDict reference;
  reference.insert("stage1.out", out);
  reference.insert("stage2.weight", stage2);

  const auto world = c10dtest::DeviceMesh::create({world_size()});
  std::vector<int> half;
  for (int r = 0; r < std::max(1, world_size() / 2); ++r) half.push_back(r);
  const auto stage2_mesh = c10dtest::DeviceMesh::create({static_cast<std::int64_t>(half.size())}, half);
  // Each rank's addend: rank 0 holds `out`, the others zeros (distribute_tensor's Partial(sum)).
  c10dtest::StateDict dist;
  dist.insert("stage1.out", c10dtest::distribute_tensor(out, world, {c10dtest::Partial{}}));
  dist.insert("stage2.weight",
              c10dtest::distribute_tensor(stage2, stage2_mesh, {c10dtest::Shard{0}}));
  C10DTEST_EXPECT_STATE_DICT_MATCHES(reference, dist);
}

// A sharded checkpoint: every rank writes its pieces of the FSDP model's state dict to a
// safetensors file of its own, in a directory all ranks share for this test (temp_dir(), gone
// after it). Read back whole (here by every rank; any process at any world size can), the files
// hold the local model's state.
TEST_F(Checkpoint, ShardedFilesComeBackWhole) {
  at::manual_seed(4);
  ct::DataParallelTrainer local(ct::composite_param_model_spec(), ct::Parallelism::Local,
                                ct::adam(1e-3));
  at::manual_seed(4);
  ct::DataParallelTrainer fsdp(ct::composite_param_model_spec(), ct::Parallelism::FSDP,
                               ct::adam(1e-3));
  const at::Tensor x = at::rand({8, 100});
  local.step(x);
  fsdp.step(x);
  auto file_of = [&](int r) { return temp_dir() + "/model.rank" + std::to_string(r) + ".safetensors"; };
  c10dtest::write_state_dict(file_of(rank()), fsdp.model_state_dict());
  barrier();  // every rank's file is written
  std::vector<std::string> files;
  for (int r = 0; r < world_size(); ++r) files.push_back(file_of(r));
  EXPECT_TRUE(verify_msd(local.model_state_dict(), c10dtest::read_sharded_state_dict(files)));
}

}  // namespace
