#include "c10dtest/launch.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>

#include "c10dtest/error.hpp"

namespace {

using c10dtest::ConfigError;
using c10dtest::detect_launch;
using c10dtest::Launcher;
using c10dtest::RendezvousKind;

class FakeEnv {
 public:
  explicit FakeEnv(std::map<std::string, std::string> vars) : vars_(std::move(vars)) {
    if (!vars_.count("TMPDIR")) vars_["TMPDIR"] = ::testing::TempDir();
  }
  c10dtest::EnvLookup lookup() const {
    return [this](const char* name) -> const char* {
      auto it = vars_.find(name);
      return it == vars_.end() ? nullptr : it->second.c_str();
    };
  }

 private:
  std::map<std::string, std::string> vars_;
};

std::string error_of(const std::map<std::string, std::string>& vars, int spawn = 0) {
  FakeEnv env(vars);
  try {
    detect_launch(env.lookup(), spawn);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(DetectLaunch, BareRunIsWorldSizeOne) {
  FakeEnv env({});
  const auto info = detect_launch(env.lookup(), 0);
  EXPECT_EQ(info.launcher, Launcher::kBare);
  EXPECT_EQ(info.rank, 0);
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.rendezvous, RendezvousKind::kNone);
}

TEST(DetectLaunch, OpenMpiUsesAPrivateRendezvousFileNamedAfterTheJob) {
  FakeEnv env({{"OMPI_COMM_WORLD_RANK", "2"},
               {"OMPI_COMM_WORLD_SIZE", "4"},
               {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
               {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
               {"OMPI_MCA_ess_base_jobid", "12345"}});
  const auto info = detect_launch(env.lookup(), 0);
  EXPECT_EQ(info.launcher, Launcher::kOpenMPI);
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.world_size, 4);
  EXPECT_EQ(info.local_rank, 2);
  EXPECT_EQ(info.rendezvous, RendezvousKind::kFile);
  EXPECT_NE(info.rendezvous_file.find("/c10dtest-" + std::to_string(getuid()) + "/ompi-12345"),
            std::string::npos)
      << info.rendezvous_file;
  EXPECT_EQ(info.describe(), "rank 2 of 4 (OpenMPI, local rank 2)");
}

TEST(DetectLaunch, TwoOpenMpiJobsGetDifferentRendezvousFiles) {
  FakeEnv a({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
             {"OMPI_MCA_ess_base_jobid", "1"}});
  FakeEnv b({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
             {"OMPI_MCA_ess_base_jobid", "2"}});
  EXPECT_NE(detect_launch(a.lookup(), 0).rendezvous_file,
            detect_launch(b.lookup(), 0).rendezvous_file);
}

TEST(DetectLaunch, OpenMpiAcrossHostsNeedsAMasterAddress) {
  const std::map<std::string, std::string> vars{{"OMPI_COMM_WORLD_RANK", "0"},
                                                {"OMPI_COMM_WORLD_SIZE", "4"},
                                                {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                                                {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}};
  EXPECT_NE(error_of(vars).find("spans several hosts; set MASTER_ADDR and MASTER_PORT"),
            std::string::npos);
  auto with_addr = vars;
  with_addr["MASTER_ADDR"] = "10.0.0.1";
  with_addr["MASTER_PORT"] = "29999";
  FakeEnv env(with_addr);
  const auto info = detect_launch(env.lookup(), 0);
  EXPECT_EQ(info.rendezvous, RendezvousKind::kAddress);
  EXPECT_EQ(info.master_addr, "10.0.0.1");
  EXPECT_EQ(info.master_port, 29999);
}

TEST(DetectLaunch, MpichHydra) {
  FakeEnv env({{"PMI_RANK", "1"}, {"PMI_SIZE", "3"}, {"MPI_LOCALRANKID", "1"},
               {"MPI_LOCALNRANKS", "3"}});
  const auto info = detect_launch(env.lookup(), 0);
  EXPECT_EQ(info.launcher, Launcher::kMPICH);
  EXPECT_EQ(info.rank, 1);
  EXPECT_EQ(info.world_size, 3);
}

TEST(DetectLaunch, SlurmStepOnOneNode) {
  FakeEnv env({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "3"},
               {"SLURM_STEP_ID", "0"}, {"SLURM_JOB_ID", "77"}, {"SLURM_STEP_NUM_NODES", "1"}});
  const auto info = detect_launch(env.lookup(), 0);
  EXPECT_EQ(info.launcher, Launcher::kSlurm);
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.world_size, 4);
  EXPECT_EQ(info.job_id, "slurm-77.0");
  EXPECT_EQ(info.rendezvous, RendezvousKind::kFile);
}

TEST(DetectLaunch, SlurmAllocationWithoutAStepIsNotALaunch) {
  // sbatch sets SLURM_PROCID for the batch script itself; only srun steps are launches.
  FakeEnv env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_JOB_ID", "77"}});
  EXPECT_EQ(detect_launch(env.lookup(), 0).launcher, Launcher::kBare);
}

TEST(DetectLaunch, TorchrunStyle) {
  FakeEnv env({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
               {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
               {"MASTER_PORT", "40001"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
               {"TORCHELASTIC_RUN_ID", "abc"}});
  const auto info = detect_launch(env.lookup(), 0);
  EXPECT_EQ(info.launcher, Launcher::kTorchrun);
  EXPECT_EQ(info.rendezvous, RendezvousKind::kAddress);
  EXPECT_EQ(info.master_port, 40001);
  EXPECT_TRUE(info.store_is_external);
  EXPECT_EQ(info.job_id, "torchrun-abc-0");
}

TEST(DetectLaunch, TorchrunStyleWithoutMasterIsNamed) {
  EXPECT_NE(error_of(std::map<std::string, std::string>{{"RANK", "0"}, {"WORLD_SIZE", "2"}})
                .find("needs MASTER_ADDR and MASTER_PORT"),
            std::string::npos);
}

TEST(DetectLaunch, BadValuesNameTheVariable) {
  EXPECT_EQ(error_of({{"OMPI_COMM_WORLD_RANK", "x"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
            "OMPI_COMM_WORLD_RANK='x' is not an integer");
  EXPECT_EQ(error_of({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
            "OMPI_COMM_WORLD_RANK=2 is not below OMPI_COMM_WORLD_SIZE=2");
  EXPECT_EQ(error_of({{"OMPI_COMM_WORLD_RANK", "0"}}), "OMPI_COMM_WORLD_SIZE is not set");
  EXPECT_EQ(error_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}}), "WORLD_SIZE=0 must be at least 1");
  EXPECT_EQ(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"},
                      {"MASTER_PORT", "70000"}}),
            "MASTER_PORT=70000 is not a TCP port");
}

TEST(DetectLaunch, SelfSpawnParentFromFlagOrVariable) {
  FakeEnv none({});
  auto info = detect_launch(none.lookup(), 4);
  EXPECT_EQ(info.launcher, Launcher::kSelfSpawnParent);
  EXPECT_EQ(info.world_size, 4);
  FakeEnv var(std::map<std::string, std::string>{{"C10DTEST_WORLD_SIZE", "3"}});
  EXPECT_EQ(detect_launch(var.lookup(), 0).world_size, 3);
  // World size 1 needs no children.
  EXPECT_EQ(detect_launch(none.lookup(), 1).launcher, Launcher::kBare);
}

TEST(DetectLaunch, SelfSpawnChild) {
  FakeEnv env({{"C10DTEST_SPAWN_RANK", "1"}, {"C10DTEST_SPAWN_WORLD_SIZE", "2"},
               {"C10DTEST_RDZV_DIR", "/tmp/x"}, {"C10DTEST_WORLD_SIZE", "2"}});
  const auto info = detect_launch(env.lookup(), 2);
  EXPECT_EQ(info.launcher, Launcher::kSelfSpawnChild);
  EXPECT_EQ(info.rank, 1);
  EXPECT_EQ(info.rendezvous_file, "/tmp/x/port");
}

TEST(DetectLaunch, SelfSpawnUnderALauncherWithAnotherSizeIsAnError) {
  EXPECT_NE(error_of({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}}, 4)
                .find("self-spawn of 4 ranks was asked for, but OpenMPI already started 2"),
            std::string::npos);
  // The same size is no conflict.
  FakeEnv env({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  EXPECT_EQ(detect_launch(env.lookup(), 2).launcher, Launcher::kOpenMPI);
}

TEST(PrivateRuntimeDir, IsCreatedWithMode0700) {
  const std::string tmp = ::testing::TempDir() + "c10dtest-prd-" + std::to_string(getpid());
  std::filesystem::create_directories(tmp);
  FakeEnv env({{"TMPDIR", tmp}});
  const std::string dir = c10dtest::private_runtime_dir(env.lookup());
  struct stat st {};
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  std::filesystem::remove_all(tmp);
}

TEST(PrivateRuntimeDir, RefusesADirectoryOthersCanWrite) {
  const std::string tmp = ::testing::TempDir() + "c10dtest-prd2-" + std::to_string(getpid());
  const std::string dir = tmp + "/c10dtest-" + std::to_string(getuid());
  std::filesystem::create_directories(dir);
  chmod(dir.c_str(), 0777);
  FakeEnv env({{"TMPDIR", tmp}});
  try {
    c10dtest::private_runtime_dir(env.lookup());
    ADD_FAILURE() << "expected a refusal";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("with mode 0700; refusing"), std::string::npos);
  }
  std::filesystem::remove_all(tmp);
}

}  // namespace
