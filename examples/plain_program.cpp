// c10dtest's sharding, state dicts and verifier in a plain program: no gtest main, no
// c10dtest::main. The program makes its own TCPStore and Gloo group from the launcher's
// environment, as a training job would, and hands them to c10dtest as a Context.
//
//   mpirun -np 4 ./plain_program                      # Open MPI, one host
//   MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 RANK=r WORLD_SIZE=4 ./plain_program   # torchrun style
//
// It builds a 2 x 2 mesh, shards a CompositeParamModel's state dict over it, gathers it back,
// verifies it against the local model (which must pass) and against a planted difference on
// rank 1 (which must fail, naming the key and the rank). Exit code 0 when both verdicts are right
// on this rank, 1 otherwise.
#include <c10dtest/context.hpp>
#include <c10dtest/distributed_state_dict.hpp>
#include <c10dtest/dtensor.hpp>
#include <c10dtest/model_state_dict.hpp>
#include <c10dtest/testing/modules.hpp>
#include <c10dtest/verify.hpp>
#include <sys/stat.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

namespace {

std::string g_port_file;  // rank 0's published port, removed once every rank has connected

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// LibTorch 2.x asks for a libuv store by default; builds without libuv need the classic one.
template <typename Options>
auto classic_store(Options& o, int) -> decltype(o.useLibUV = false, void()) {
  o.useLibUV = false;
}
template <typename Options>
void classic_store(Options&, long) {}

// torchrun style: MASTER_ADDR/MASTER_PORT name rank 0's store. mpirun on one host: rank 0's store
// listens on loopback on a port the kernel picks, and rank 0 publishes the port in a private
// (0700) directory named after the job.
c10::intrusive_ptr<c10d::Store> make_store(int rank, int size) {
  c10d::TCPStoreOptions o;
  o.isServer = rank == 0;
  o.numWorkers = static_cast<std::size_t>(size);
  o.timeout = std::chrono::seconds(60);
  classic_store(o, 0);
  if (const char* port = std::getenv("MASTER_PORT")) {
    const char* addr = std::getenv("MASTER_ADDR");
    o.port = static_cast<std::uint16_t>(std::atoi(port));
    return c10::make_intrusive<c10d::TCPStore>(addr != nullptr ? addr : "127.0.0.1", o);
  }
  const char* job = std::getenv("PMIX_NAMESPACE");
  const std::string dir = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                          "/plain-program-" + std::to_string(getuid()) + "-" +
                          (job != nullptr ? job : std::to_string(getppid()));
  const std::string file = dir + "/port";
  if (rank == 0) {
    o.port = 0;
    o.waitWorkers = false;  // the others learn the port only after this returns
    auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
    mkdir(dir.c_str(), 0700);
    { std::ofstream(file + ".tmp") << store->getPort() << "\n"; }
    std::rename((file + ".tmp").c_str(), file.c_str());
    g_port_file = file;
    return store;
  }
  int port = 0;
  for (int i = 0; i < 600 && port == 0; ++i) {
    std::ifstream in(file);
    if (!(in >> port)) {
      port = 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  if (port == 0) throw std::runtime_error("rank 0 published no store port in " + file);
  o.port = static_cast<std::uint16_t>(port);
  return c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
}

}  // namespace

int main() {
  const int rank = env_int("OMPI_COMM_WORLD_RANK", env_int("RANK", 0));
  const int size = env_int("OMPI_COMM_WORLD_SIZE", env_int("WORLD_SIZE", 1));
  const std::string me = "plain_program: rank " + std::to_string(rank) + " of " +
                         std::to_string(size) + ": ";
  if (size != 4) {
    std::cerr << me << "run it with 4 ranks (mpirun -np 4)\n";
    return 1;
  }
  int wrong = 0;
  try {
    const auto store = make_store(rank, size);
    // The program's own world group, from its own store: c10dtest only borrows it.
    c10dtest::GroupOptions group;
    const auto world = c10dtest::make_process_group(store, rank, size, group);
    if (!g_port_file.empty()) {  // every rank is connected: the port is no longer needed
      std::remove(g_port_file.c_str());
      rmdir(g_port_file.substr(0, g_port_file.rfind('/')).c_str());
    }
    const c10dtest::ContextPtr context = c10dtest::make_context(world, store);
    c10dtest::ScopedContext use(context);

    // The same local model on every rank; the sharded copy: rows over mesh dim 0, columns over
    // mesh dim 1 for 2-D weights, dim 0 over the whole mesh for the rest.
    torch::manual_seed(0);
    c10dtest::testing::CompositeParamModel local;
    const auto mesh = c10dtest::DeviceMesh::create(context, {2, 2});
    const c10dtest::StateDict reference = c10dtest::get_model_state_dict(*local);
    c10dtest::StateDict sharded;
    for (const auto& key : reference.keys()) {
      const at::Tensor full = reference.at(key).as<at::Tensor>();
      std::vector<c10dtest::Placement> placements;
      if (full.dim() >= 2) {
        placements = {c10dtest::Shard{0}, c10dtest::Shard{1}};
      } else {
        placements = {c10dtest::Shard{0}, c10dtest::Replicate{}};
      }
      sharded.insert(key, c10dtest::distribute_tensor(full, mesh, placements));
    }

    const c10dtest::StateDict gathered = c10dtest::gather_state_dict(sharded);
    for (const auto& key : reference.keys()) {
      if (!gathered.contains(key) ||
          !at::equal(gathered.at(key).as<at::Tensor>(), reference.at(key).as<at::Tensor>())) {
        std::cerr << me << "gather_state_dict: " << key << " differs\n";
        ++wrong;
      }
    }
    const auto same = c10dtest::verify_state_dict(reference, sharded);
    if (!same) {
      std::cerr << me << "verify_state_dict failed on equal state dicts:\n" << same.message() << "\n";
      ++wrong;
    }

    // The planted difference: rank 1 changes one element of its shard of the first key.
    const std::string planted_key = reference.keys().front();
    if (rank == 1) {
      sharded.at(planted_key).as<c10dtest::DTensor>().local().view(-1)[0].add_(1.0);
    }
    const auto planted = c10dtest::verify_state_dict(reference, sharded);
    const std::string message = planted.message();
    if (planted || message.find(planted_key) == std::string::npos ||
        message.find("rank 1") == std::string::npos) {
      std::cerr << me << "the planted difference in " << planted_key << " on rank 1 was "
                << (planted ? "not found" : "reported without its key or rank") << ":\n"
                << message << "\n";
      ++wrong;
    }
    if (rank == 0) std::cout << "plain_program: the planted difference:\n" << message << "\n";
  } catch (const std::exception& e) {
    std::cerr << me << e.what() << "\n";
    return 1;
  }
  if (wrong == 0) std::cout << me << "every verdict as expected\n";
  return wrong == 0 ? 0 : 1;
}
