// VerifyStateDictMixin, the optimizer-state-dict checks and the gMock matchers, on top of
// verify_state_dict.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <optional>
#include <unordered_map>

#include "c10dtest/distributed_state_dict.hpp"
#include "c10dtest/model_state_dict.hpp"
#include "c10dtest/optimizer_state_dict.hpp"
#include "c10dtest/verify.hpp"
#include "common/text.hpp"
#include "exchange.hpp"

namespace c10dtest {

namespace {

// FQN of every parameter of `optimizer`, in the order of its param groups chained (PyTorch's
// parameter ids).
std::vector<std::string> fqns_by_id(const torch::nn::Module& model,
                                    const torch::optim::Optimizer& optimizer) {
  std::unordered_map<const void*, std::string> by_impl;
  for (const auto& p : model.named_parameters()) {
    by_impl.emplace(p.value().unsafeGetTensorImpl(), fqn_of(model, p.key()));
  }
  std::vector<std::string> out;
  for (const auto& g : optimizer.param_groups()) {
    for (const auto& p : g.params()) {
      const auto it = by_impl.find(p.unsafeGetTensorImpl());
      if (it == by_impl.end()) {
        throw StateDictError("parameter " + std::to_string(out.size()) +
                             " of the optimizer does not belong to the model");
      }
      out.push_back(it->second);
    }
  }
  return out;
}

bool parse_id(const std::string& s, std::size_t* id) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  *id = static_cast<std::size_t>(std::stoul(s));
  return true;
}

StateList sorted_params(const StateList& params, const std::vector<std::string>& ids) {
  std::vector<std::string> names;
  for (const auto& p : params) {
    if (p.is<std::int64_t>()) {
      const auto id = static_cast<std::size_t>(p.as<std::int64_t>());
      if (id >= ids.size()) {
        throw StateDictError("param_groups: parameter id " + std::to_string(id) +
                             " is not one of the optimizer's " + std::to_string(ids.size()));
      }
      names.push_back(ids[id]);
    } else {
      names.push_back(p.as<std::string>());
    }
  }
  std::sort(names.begin(), names.end());
  StateList out;
  for (auto& n : names) out.emplace_back(std::move(n));
  return out;
}

// A group's hyperparameters (everything but "params") as one comparable text.
std::string hyperparameters(const StateDict& group) {
  StateDict h = group;
  h.erase("params");
  return h.describe();
}

// What differs between two groups' hyperparameters: "lr 0.5 (group 0: 0.01), no eps".
std::string hyperparameter_diff(const StateDict& first, const StateDict& other) {
  std::string out;
  auto add = [&out](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  for (std::size_t i = 0; i < other.size(); ++i) {
    const std::string& k = other.keys()[i];
    if (k == "params") continue;
    if (!first.contains(k)) {
      add(k + " " + other.value(i).summary() + " (group 0: none)");
    } else if (first.at(k).summary() != other.value(i).summary()) {
      add(k + " " + other.value(i).summary() + " (group 0: " + first.at(k).summary() + ")");
    }
  }
  for (std::size_t i = 0; i < first.size(); ++i) {
    if (first.keys()[i] != "params" && !other.contains(first.keys()[i])) add("no " + first.keys()[i]);
  }
  return out.empty() ? "the same values in another form" : out;
}

// `osd` with "params" sorted and, when the reference has exactly one group and `osd` more whose
// hyperparameters agree, those groups merged into one (PyTorch's _verify_osd rule). When they
// cannot be merged, `*why` says why (for the failure message).
StateDict normalise_groups(const StateDict& osd, long long reference_groups, std::string* why) {
  StateDict out = osd;
  if (!out.contains("param_groups") || !out.at("param_groups").is<StateList>()) return out;
  StateList& groups = out.at("param_groups").as<StateList>();
  for (auto& g : groups) {
    if (!g.is<StateDict>() || !g.as<StateDict>().contains("params")) continue;
    auto& params = g.as<StateDict>().at("params");
    if (!params.is<StateList>()) continue;
    const auto& l = params.as<StateList>();
    // Only names are sorted; anything else is left for the comparison to report.
    if (std::all_of(l.begin(), l.end(), [](const StateValue& p) { return p.is<std::string>(); })) {
      params = sorted_params(l, {});
    }
  }
  if (reference_groups != 1 || groups.size() <= 1) return out;
  const std::string not_merged = "the distributed dict's " + std::to_string(groups.size()) +
                                 " param groups were not merged into the reference's one group: ";
  StateList all;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const StateValue& g = groups[i];
    if (!g.is<StateDict>() || !groups[0].is<StateDict>()) {
      *why = not_merged + "param group " + std::to_string(i) + " is not a dict";
      return out;
    }
    if (hyperparameters(g.as<StateDict>()) != hyperparameters(groups[0].as<StateDict>())) {
      *why = not_merged + "their hyperparameters differ: group " + std::to_string(i) + " has " +
             hyperparameter_diff(groups[0].as<StateDict>(), g.as<StateDict>());
      return out;
    }
    const auto& d = g.as<StateDict>();
    if (!d.contains("params") || !d.at("params").is<StateList>()) {
      *why = not_merged + "param group " + std::to_string(i) + " has no list of params";
      return out;
    }
    for (const auto& p : d.at("params").as<StateList>()) {
      if (!p.is<std::string>()) {
        *why = not_merged + "param group " + std::to_string(i) + " lists a param that is not a name";
        return out;
      }
      all.push_back(p);
    }
  }
  StateDict merged = groups[0].as<StateDict>();
  merged.insert("params", sorted_params(all, {}));
  groups = StateList{StateValue(merged)};
  return out;
}

::testing::AssertionResult failure_on_some_rank(const std::string& what,
                                                const std::vector<std::string>& errors) {
  auto r = ::testing::AssertionFailure();
  r << what << " failed";
  for (std::size_t i = 0; i < errors.size(); ++i) {
    if (!errors[i].empty()) r << "\n  rank " << i << ": " << errors[i];
  }
  return r;
}

bool any_error(const std::vector<std::string>& errors) {
  return std::any_of(errors.begin(), errors.end(), [](const std::string& e) { return !e.empty(); });
}

}  // namespace

std::vector<std::string> frozen_keys_of(const torch::nn::Module& model) {
  std::vector<std::string> out;
  for (const auto& p : model.named_parameters()) {
    if (!p.value().requires_grad()) out.push_back(fqn_of(model, p.key()));
  }
  return out;
}

StateDict canonical_optimizer_state_dict(const torch::nn::Module& model,
                                         const torch::optim::Optimizer& optimizer,
                                         const StateDict& osd) {
  const std::vector<std::string> ids = fqns_by_id(model, optimizer);
  StateDict out;
  for (std::size_t i = 0; i < osd.size(); ++i) {
    const std::string& key = osd.keys()[i];
    const StateValue& v = osd.value(i);
    if (key == "state" && v.is<StateDict>()) {
      StateDict state;
      const auto& s = v.as<StateDict>();
      for (std::size_t j = 0; j < s.size(); ++j) {
        std::size_t id = 0;
        if (parse_id(s.keys()[j], &id)) {
          if (id >= ids.size()) {
            throw StateDictError("state: parameter id " + s.keys()[j] +
                                 " is not one of the optimizer's " + std::to_string(ids.size()));
          }
          state.insert(ids[id], s.value(j));
        } else {
          state.insert(s.keys()[j], s.value(j));
        }
      }
      out.insert(key, state);
    } else if (key == "param_groups" && v.is<StateList>()) {
      StateList groups;
      for (const auto& g : v.as<StateList>()) {
        StateDict group = g.as<StateDict>();
        if (group.contains("params")) {
          group.insert("params", sorted_params(group.at("params").as<StateList>(), ids));
        }
        groups.emplace_back(group);
      }
      out.insert(key, groups);
    } else {
      out.insert(key, v);
    }
  }
  return out;
}

namespace {

// PyTorch's param-group entries that LibTorch's optimizers lack, and the values of theirs that
// mean LibTorch's behaviour (torch/optim/*.py defaults).
bool is_pytorch_only_default(const std::string& key, const StateValue& v) {
  static const char* const kKeys[] = {"foreach",        "maximize", "capturable",
                                      "differentiable", "fused",    "decoupled_weight_decay"};
  if (std::find_if(std::begin(kKeys), std::end(kKeys),
                   [&](const char* k) { return key == k; }) == std::end(kKeys)) {
    return false;
  }
  return v.is<StateNone>() || (v.is<bool>() && !v.as<bool>());
}

// A one-element tensor holding a whole number, as that number.
std::optional<std::int64_t> whole_step(const StateValue& v) {
  if (!v.is<at::Tensor>()) return std::nullopt;
  const at::Tensor& t = v.as<at::Tensor>();
  if (!t.defined() || t.numel() != 1 || t.is_complex() || t.scalar_type() == at::kBool) {
    return std::nullopt;
  }
  const double d = t.item<double>();
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) return std::nullopt;
  return static_cast<std::int64_t>(d);
}

}  // namespace

StateDict from_pytorch_optimizer_state_dict(const torch::nn::Module& model,
                                            const torch::optim::Optimizer& optimizer,
                                            const StateDict& osd) {
  StateDict out = canonical_optimizer_state_dict(model, optimizer, osd);
  if (out.contains("state") && out.at("state").is<StateDict>()) {
    StateDict& state = out.at("state").as<StateDict>();
    for (std::size_t i = 0; i < state.size(); ++i) {
      if (!state.value(i).is<StateDict>()) continue;
      StateDict& per = state.value(i).as<StateDict>();
      if (!per.contains("step")) continue;
      if (const auto step = whole_step(per.at("step"))) per.insert("step", *step);
    }
  }
  if (out.contains("param_groups") && out.at("param_groups").is<StateList>()) {
    // The entries LibTorch's groups have: those of this optimizer's own state dict.
    std::vector<std::string> own;
    const StateDict mine = get_optimizer_state_dict(model, optimizer);
    for (const auto& g : mine.at("param_groups").as<StateList>()) {
      for (const auto& k : g.as<StateDict>().keys()) own.push_back(k);
    }
    for (StateValue& g : out.at("param_groups").as<StateList>()) {
      if (!g.is<StateDict>()) continue;
      StateDict& group = g.as<StateDict>();
      std::vector<std::string> drop;
      for (std::size_t k = 0; k < group.size(); ++k) {
        const std::string& key = group.keys()[k];
        if (std::find(own.begin(), own.end(), key) == own.end() &&
            is_pytorch_only_default(key, group.value(k))) {
          drop.push_back(key);
        }
      }
      for (const auto& key : drop) group.erase(key);
    }
  }
  return out;
}

namespace detail {

::testing::AssertionResult verify_osd_impl(const torch::nn::Module& model,
                                           const torch::optim::Optimizer& optim,
                                           const StateDict& osd, const StateDict& dist_osd,
                                           const VerifyOptions& options) {
  StateDict reference;
  std::string error;
  long long groups = -1;
  try {
    if (!osd.empty()) {
      reference = canonical_optimizer_state_dict(model, optim, osd);
      groups = reference.contains("param_groups")
                   ? static_cast<long long>(reference.at("param_groups").as<StateList>().size())
                   : 0;
    }
  } catch (const Error& e) {
    error = e.what();
  }
  // Every rank learns whether the reference could be read and how many groups it has.
  const auto all =
      detail::exchange_text(detail::verify_context(options, dist_osd).get(), "verify-osd",
                            error.empty() ? std::to_string(groups) : "!" + error);
  std::vector<std::string> errors;
  for (const auto& a : all) {
    errors.push_back(a.rfind('!', 0) == 0 ? a.substr(1) : "");
    if (a.rfind('!', 0) != 0 && groups < 0) groups = std::stoll(a);
  }
  if (any_error(errors)) return failure_on_some_rank("reading the reference optimizer state", errors);
  std::string why;
  const StateDict normalised = normalise_groups(dist_osd, groups, &why);
  auto result = verify_state_dict(reference, normalised, options);
  if (result) return result;
  // Every rank has the same verdict: one more exchange gives every rank the same note.
  const auto whys =
      detail::exchange_text(detail::verify_context(options, dist_osd).get(), "verify-osd-why", why);
  std::map<std::string, std::vector<int>> by_reason;
  for (std::size_t r = 0; r < whys.size(); ++r) {
    if (!whys[r].empty()) by_reason[whys[r]].push_back(static_cast<int>(r));
  }
  for (const auto& [reason, ranks] : by_reason) {
    result << "\n  note: " << reason;
    if (whys.size() > 1) {
      result << " [" << (ranks.size() == whys.size() ? std::string("every rank") : detail::rank_list(ranks)) << "]";
    }
  }
  return result;
}

}  // namespace detail

::testing::AssertionResult VerifyStateDictMixin::compare_tensor(const at::Tensor& orig,
                                                                const StateValue& dist) {
  return compare_tensor(orig, dist, verify_options_);
}

::testing::AssertionResult VerifyStateDictMixin::compare_tensor(const at::Tensor& orig,
                                                                const StateValue& dist,
                                                                const VerifyOptions& options) {
  return verify_tensor(orig, dist, options);
}

::testing::AssertionResult VerifyStateDictMixin::compare_tensor(const at::Tensor& orig,
                                                                const StateValue& dist,
                                                                const std::string& key) {
  return verify_tensor(orig, dist, verify_options_, key);
}

::testing::AssertionResult VerifyStateDictMixin::compare_tensor(const at::Tensor& orig,
                                                                const StateValue& dist,
                                                                const VerifyOptions& options,
                                                                const std::string& key) {
  return verify_tensor(orig, dist, options, key);
}

::testing::AssertionResult VerifyStateDictMixin::verify_msd(const StateDict& msd,
                                                            const StateDict& dist_msd) {
  return verify_msd(msd, dist_msd, verify_options_);
}

::testing::AssertionResult VerifyStateDictMixin::verify_msd(const StateDict& msd,
                                                            const StateDict& dist_msd,
                                                            const VerifyOptions& options) {
  return verify_state_dict(msd, dist_msd, options);
}

::testing::AssertionResult VerifyStateDictMixin::verify_msd(const torch::nn::Module& model,
                                                            const StateDict& dist_msd,
                                                            const VerifyOptions& options) {
  VerifyOptions o = options;
  for (auto& k : frozen_keys_of(model)) o.frozen_keys.push_back(std::move(k));
  return verify_state_dict(get_model_state_dict(model), dist_msd, o);
}

::testing::AssertionResult VerifyStateDictMixin::verify_osd(const torch::nn::Module& model,
                                                            const torch::optim::Optimizer& optim,
                                                            const StateDict& osd,
                                                            const StateDict& dist_osd) {
  return detail::verify_osd_impl(model, optim, osd, dist_osd, verify_options_);
}

::testing::AssertionResult VerifyStateDictMixin::verify_osd(const torch::nn::Module& model,
                                                            const torch::optim::Optimizer& optim,
                                                            const StateDict& osd,
                                                            const StateDict& dist_osd,
                                                            const VerifyOptions& options) {
  return detail::verify_osd_impl(model, optim, osd, dist_osd, options);
}

::testing::AssertionResult VerifyStateDictMixin::verify_osd(const torch::nn::Module& model,
                                                            const torch::optim::Optimizer& optim,
                                                            const StateDict& dist_osd) {
  return detail::verify_osd_impl(model, optim, get_optimizer_state_dict(model, optim), dist_osd,
                                 verify_options_);
}

::testing::AssertionResult VerifyStateDictMixin::verify_osd_by_load(
    const torch::nn::Module& model, const torch::optim::Optimizer& optim,
    torch::optim::Optimizer& new_optim, const StateDict& dist_osd) {
  GatherOptions gather;
  gather.context = verify_options_.context;
  const StateDict full = gather_state_dict(dist_osd, gather);  // collective
  std::string error;
  try {
    set_optimizer_state_dict(model, new_optim, full);
  } catch (const Error& e) {
    error = e.what();
  }
  const ContextPtr context = detail::verify_context(verify_options_, dist_osd);
  const auto errors = detail::exchange_text(context.get(), "verify-osd-load", error);
  if (any_error(errors)) {
    return failure_on_some_rank("loading the gathered optimizer state dict", errors);
  }
  VerifyOptions o = verify_options_;
  o.strategy = VerifyStrategy::kShardLocal;  // every rank holds both optimizers
  const StateDict reference = get_optimizer_state_dict(model, optim);
  auto loaded = verify_state_dict(reference, get_optimizer_state_dict(model, new_optim), o);
  if (loaded) return loaded;
  // The loaded state differs (the same verdict on every rank): the distributed dict compared
  // with the reference where it lies names the rank and the shard that hold the difference.
  const auto located = detail::verify_osd_impl(model, optim, reference, dist_osd, verify_options_);
  loaded << "\n  where the distributed optimizer state dict differs: "
         << (located ? std::string("nowhere: its values match; the load changed them")
                     : std::string(located.message()));
  return loaded;
}

namespace detail {

bool StateDictMatcher::MatchAndExplain(const StateDict& dist, std::ostream* listener) const {
  const auto r = verify_state_dict(*reference_, dist, options_);
  if (!r && listener != nullptr) *listener << r.message();
  return static_cast<bool>(r);
}

void StateDictMatcher::DescribeTo(std::ostream* os) const {
  *os << "matches the reference state dict (" << reference_->size() << " keys)";
}

void StateDictMatcher::DescribeNegationTo(std::ostream* os) const {
  *os << "does not match the reference state dict";
}

bool TensorMatcher::MatchAndExplain(const StateValue& dist, std::ostream* listener) const {
  const auto r = verify_tensor(reference_, dist, options_, key_);
  if (!r && listener != nullptr) *listener << r.message();
  return static_cast<bool>(r);
}

bool TensorMatcher::MatchAndExplain(const at::Tensor& dist, std::ostream* listener) const {
  return MatchAndExplain(StateValue(dist), listener);
}

void TensorMatcher::DescribeTo(std::ostream* os) const {
  *os << "matches the reference tensor";
}

void TensorMatcher::DescribeNegationTo(std::ostream* os) const {
  *os << "does not match the reference tensor";
}

}  // namespace detail

}  // namespace c10dtest
