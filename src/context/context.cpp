#include "c10dtest/context.hpp"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <algorithm>
#include <mutex>
#include <set>
#include <utility>

#include "c10dtest/error.hpp"
#include "comm/bytes.hpp"
#include "groups.hpp"
#include "common/text.hpp"

namespace c10dtest {

ProcessGroupPtr Context::new_group(const std::vector<int>& ranks) { return new_subgroups({ranks}); }

namespace detail {

void check_subgroups(const std::vector<std::vector<int>>& groups, int world_size) {
  std::set<int> seen;
  for (const auto& g : groups) {
    if (g.empty()) throw ConfigError("new_subgroups: a group is empty");
    for (int r : g) {
      if (r < 0 || r >= world_size) {
        throw ConfigError("new_subgroups: rank " + std::to_string(r) +
                          " is outside the world of " + std::to_string(world_size));
      }
      if (!seen.insert(r).second) {
        throw ConfigError("new_subgroups: rank " + std::to_string(r) + " appears twice");
      }
    }
  }
}

std::string group_name(const std::vector<int>& ranks) {
  std::string name = "group [";
  for (std::size_t k = 0; k < ranks.size(); ++k) {
    name += (k ? ", " : "") + std::to_string(ranks[k]);
  }
  return name + "]";
}

}  // namespace detail

namespace {

// A context over a store and a group the program made (or make_context made).
class GroupContext final : public Context {
 public:
  GroupContext(ProcessGroupPtr world, c10::intrusive_ptr<c10d::Store> store,
               ContextOptions options)
      : world_(std::move(world)), store_(std::move(store)), options_(std::move(options)) {
    rank_ = world_->getRank();
    size_ = world_->getSize();
    if (options_.device) {
      device_ = *options_.device;
    } else if (options_.group.backend == BackendKind::kNccl) {
      device_ = c10::Device(c10::DeviceType::CUDA,
                            static_cast<c10::DeviceIndex>(options_.group.cuda_device));
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  c10::Device device() const override { return device_; }
  ProcessGroupPtr process_group() override { return world_; }

  ProcessGroupPtr new_subgroups(const std::vector<std::vector<int>>& groups) override {
    if (!store_) {
      throw ConfigError("new_group/new_subgroups: this context was made from a group without a "
                        "store; pass the store to make_context to make sub-groups (a DeviceMesh "
                        "needs one per dimension)");
    }
    detail::check_subgroups(groups, size_);
    const int seq = seq_++;
    ProcessGroupPtr mine;
    for (std::size_t i = 0; i < groups.size(); ++i) {
      const auto& g = groups[i];
      const auto it = std::find(g.begin(), g.end(), rank_);
      if (it == g.end()) continue;
      auto store = c10::make_intrusive<c10d::PrefixStore>(
          options_.prefix + "/g" + std::to_string(seq) + "." + std::to_string(i), store_);
      GroupOptions o = options_.group;
      o.name = detail::group_name(g);
      mine = make_process_group(store, static_cast<int>(it - g.begin()),
                                static_cast<int>(g.size()), o);
    }
    return mine;
  }

  std::vector<std::string> all_gather_text(const std::string& what,
                                           const std::string& value) override {
    if (size_ == 1) return {value};
    at::Tensor bytes = at::empty({static_cast<std::int64_t>(value.size())}, at::kByte);
    std::copy(value.begin(), value.end(), bytes.data_ptr<std::uint8_t>());
    std::vector<at::Tensor> all;
    try {
      all = detail::all_gather_bytes(world_, bytes);
    } catch (const std::exception& e) {
      throw Error("rank " + std::to_string(rank_) + ": the exchange '" + what +
                  "' over the context's group failed: " + e.what());
    }
    std::vector<std::string> out;
    out.reserve(all.size());
    for (const auto& t : all) {
      const at::Tensor c = t.cpu().contiguous();
      const auto* p = c.data_ptr<std::uint8_t>();
      out.emplace_back(p, p + c.numel());
    }
    return out;
  }

 private:
  ProcessGroupPtr world_;
  c10::intrusive_ptr<c10d::Store> store_;
  ContextOptions options_;
  int rank_ = 0;
  int size_ = 1;
  c10::Device device_{c10::DeviceType::CPU};
  int seq_ = 0;
};

std::mutex g_default_mutex;
ContextPtr g_default;
thread_local ContextPtr t_scoped;

}  // namespace

ContextPtr make_context(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                        const ContextOptions& options) {
  if (!store) throw ConfigError("make_context: no store");
  if (size < 1 || rank < 0 || rank >= size) {
    throw ConfigError("make_context: rank " + std::to_string(rank) + " of a world of " +
                      std::to_string(size));
  }
  auto world_store = c10::make_intrusive<c10d::PrefixStore>(options.prefix + "/world", store);
  ProcessGroupPtr world = make_process_group(world_store, rank, size, options.group);
  return std::make_shared<GroupContext>(std::move(world), store, options);
}

ContextPtr make_context(ProcessGroupPtr world_group, const c10::intrusive_ptr<c10d::Store>& store,
                        const ContextOptions& options) {
  if (!world_group) throw ConfigError("make_context: no group");
  return std::make_shared<GroupContext>(std::move(world_group), store, options);
}

ContextPtr current_context() {
  if (t_scoped) return t_scoped;
  {
    std::lock_guard<std::mutex> lock(g_default_mutex);
    if (g_default) return g_default;
  }
  throw ConfigError(
      "no c10dtest context: link the test binary with c10dtest::main (or call c10dtest::init), "
      "or make one with c10dtest::make_context and pass it, or install it with "
      "c10dtest::ScopedContext / c10dtest::set_default_context");
}

bool has_context() {
  if (t_scoped) return true;
  std::lock_guard<std::mutex> lock(g_default_mutex);
  return g_default != nullptr;
}

void set_default_context(ContextPtr context) {
  std::lock_guard<std::mutex> lock(g_default_mutex);
  g_default = std::move(context);
}

ScopedContext::ScopedContext(ContextPtr context) : previous_(std::move(t_scoped)) {
  t_scoped = std::move(context);
}

ScopedContext::~ScopedContext() { t_scoped = std::move(previous_); }

}  // namespace c10dtest
