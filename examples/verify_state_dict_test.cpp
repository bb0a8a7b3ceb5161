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

}  // namespace
