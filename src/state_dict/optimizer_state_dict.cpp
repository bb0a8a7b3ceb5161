#include "c10dtest/optimizer_state_dict.hpp"

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <functional>
#include <set>
#include <sstream>
#include <type_traits>

#include "c10dtest/distributed_state_dict.hpp"
#include "offload.hpp"
#include "parameter_value.hpp"

namespace c10dtest {

namespace {

namespace optim = torch::optim;

// optimizer.state() is keyed by std::string on LibTorch 1.13 and by void* on 2.x.
using StateMap = std::decay_t<decltype(std::declval<optim::Optimizer&>().state())>;
using StateKey = StateMap::key_type;

template <typename Key = StateKey>
Key state_key(const at::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << p.unsafeGetTensorImpl();
    return os.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

// A parameter of the model: its FQN (after modifiers) and path (for layouts).
struct ParamName {
  std::string fqn;
  std::string path;
};

std::map<const void*, ParamName> names_of(const torch::nn::Module& model) {
  std::map<const void*, ParamName> out;
  for (const auto& p : model.named_parameters()) {
    // A tied parameter keeps its first name.
    out.emplace(p.value().unsafeGetTensorImpl(), ParamName{fqn_of(model, p.key()), p.key()});
  }
  return out;
}

const ParamName& name_of(const std::map<const void*, ParamName>& names, const at::Tensor& p) {
  const auto it = names.find(p.unsafeGetTensorImpl());
  if (it == names.end()) {
    std::ostringstream os;
    os << "the optimizer holds a parameter of shape " << p.sizes()
       << " that is not a parameter of the model";
    throw StateDictError(os.str());
  }
  return it->second;
}

using Wrap = std::function<StateValue(const at::Tensor&)>;

// ---- hyperparameters -----------------------------------------------------------------------

double number(const StateDict& d, const std::string& key, const std::string& where) {
  if (!d.contains(key)) throw StateDictError(where + ": '" + key + "' is missing");
  const StateValue& v = d.at(key);
  if (v.is<double>()) return v.as<double>();
  if (v.is<std::int64_t>()) return static_cast<double>(v.as<std::int64_t>());
  throw StateDictError(where + ": '" + key + "' is a " + v.type_name() + ", not a number");
}

bool flag(const StateDict& d, const std::string& key, const std::string& where) {
  if (!d.contains(key)) throw StateDictError(where + ": '" + key + "' is missing");
  return d.at(key).as<bool>();
}

std::tuple<double, double> betas(const StateDict& d, const std::string& where) {
  if (!d.contains("betas")) throw StateDictError(where + ": 'betas' is missing");
  const auto& l = d.at("betas").as<StateList>();
  if (l.size() != 2) throw StateDictError(where + ": 'betas' must hold 2 numbers");
  StateDict pair;
  pair.insert("0", l[0]);
  pair.insert("1", l[1]);
  return {number(pair, "0", where + " betas"), number(pair, "1", where + " betas")};
}

void put(StateDict& d, const char* key, const at::Tensor& t, const Wrap& wrap) {
  if (t.defined()) d.insert(key, wrap(t));
}

using Unwrap = std::function<at::Tensor(const StateValue&, const std::string& field)>;

at::Tensor tensor(const StateDict& d, const char* key, const Unwrap& unwrap, bool required,
                  const std::string& where) {
  if (!d.contains(key)) {
    if (required) throw StateDictError(where + ": '" + key + "' is missing");
    return {};
  }
  return unwrap(d.at(key), key);
}

std::int64_t step(const StateDict& d, const std::string& where) {
  if (!d.contains("step")) throw StateDictError(where + ": 'step' is missing");
  const StateValue& v = d.at("step");
  if (v.is<std::int64_t>()) return v.as<std::int64_t>();
  if (v.is<at::Tensor>()) return v.as<at::Tensor>().item<std::int64_t>();
  throw StateDictError(where + ": 'step' is a " + v.type_name() + ", not an integer");
}

// ---- one traits entry per optimizer ----------------------------------------------------------
// Each says how its hyperparameters and per-parameter state map to state-dict fields (PyTorch's
// names), both ways. Adding an optimizer: one struct here and one line in kKinds below.

// Adam and AdamW share their hyperparameters and state fields.
template <typename O, typename S>
struct AdamLike {
  using Options = O;
  using State = S;
  static void options_into(const Options& a, StateDict& d) {
    d.insert("lr", a.lr());
    d.insert("betas", StateList{std::get<0>(a.betas()), std::get<1>(a.betas())});
    d.insert("eps", a.eps());
    d.insert("weight_decay", a.weight_decay());
    d.insert("amsgrad", a.amsgrad());
  }
  static void apply(const StateDict& d, Options& a, const std::string& where) {
    a.lr(number(d, "lr", where)).betas(betas(d, where)).eps(number(d, "eps", where));
    a.weight_decay(number(d, "weight_decay", where)).amsgrad(flag(d, "amsgrad", where));
  }
  static void state_into(const State& a, StateDict& d, const Wrap& wrap) {
    d.insert("step", a.step());
    put(d, "exp_avg", a.exp_avg(), wrap);
    put(d, "exp_avg_sq", a.exp_avg_sq(), wrap);
    put(d, "max_exp_avg_sq", a.max_exp_avg_sq(), wrap);
  }
  static void fill(State& s, const StateDict& d, const Unwrap& unwrap, const std::string& where) {
    s.step(step(d, where));
    s.exp_avg(tensor(d, "exp_avg", unwrap, true, where));
    s.exp_avg_sq(tensor(d, "exp_avg_sq", unwrap, true, where));
    s.max_exp_avg_sq(tensor(d, "max_exp_avg_sq", unwrap, false, where));
  }
};

struct SgdTraits {
  using Options = optim::SGDOptions;
  using State = optim::SGDParamState;
  static void options_into(const Options& s, StateDict& d) {
    d.insert("lr", s.lr());
    d.insert("momentum", s.momentum());
    d.insert("dampening", s.dampening());
    d.insert("weight_decay", s.weight_decay());
    d.insert("nesterov", s.nesterov());
  }
  static void apply(const StateDict& d, Options& s, const std::string& where) {
    s.lr(number(d, "lr", where)).momentum(number(d, "momentum", where));
    s.dampening(number(d, "dampening", where)).weight_decay(number(d, "weight_decay", where));
    s.nesterov(flag(d, "nesterov", where));
  }
  static void state_into(const State& m, StateDict& d, const Wrap& wrap) {
    put(d, "momentum_buffer", m.momentum_buffer(), wrap);
  }
  static void fill(State& s, const StateDict& d, const Unwrap& unwrap, const std::string& where) {
    s.momentum_buffer(tensor(d, "momentum_buffer", unwrap, false, where));
  }
};

struct AdagradTraits {
  using Options = optim::AdagradOptions;
  using State = optim::AdagradParamState;
  static void options_into(const Options& g, StateDict& d) {
    d.insert("lr", g.lr());
    d.insert("lr_decay", g.lr_decay());
    d.insert("weight_decay", g.weight_decay());
    d.insert("initial_accumulator_value", g.initial_accumulator_value());
    d.insert("eps", g.eps());
  }
  static void apply(const StateDict& d, Options& g, const std::string& where) {
    g.lr(number(d, "lr", where)).lr_decay(number(d, "lr_decay", where));
    g.weight_decay(number(d, "weight_decay", where));
    g.initial_accumulator_value(number(d, "initial_accumulator_value", where));
    g.eps(number(d, "eps", where));
  }
  static void state_into(const State& g, StateDict& d, const Wrap& wrap) {
    d.insert("step", g.step());
    put(d, "sum", g.sum(), wrap);
  }
  static void fill(State& s, const StateDict& d, const Unwrap& unwrap, const std::string& where) {
    s.step(step(d, where));
    s.sum(tensor(d, "sum", unwrap, true, where));
  }
};

struct RmspropTraits {
  using Options = optim::RMSpropOptions;
  using State = optim::RMSpropParamState;
  static void options_into(const Options& r, StateDict& d) {
    d.insert("lr", r.lr());
    d.insert("alpha", r.alpha());
    d.insert("eps", r.eps());
    d.insert("weight_decay", r.weight_decay());
    d.insert("momentum", r.momentum());
    d.insert("centered", r.centered());
  }
  static void apply(const StateDict& d, Options& r, const std::string& where) {
    r.lr(number(d, "lr", where)).alpha(number(d, "alpha", where)).eps(number(d, "eps", where));
    r.weight_decay(number(d, "weight_decay", where)).momentum(number(d, "momentum", where));
    r.centered(flag(d, "centered", where));
  }
  static void state_into(const State& r, StateDict& d, const Wrap& wrap) {
    d.insert("step", r.step());
    put(d, "square_avg", r.square_avg(), wrap);
    put(d, "momentum_buffer", r.momentum_buffer(), wrap);
    put(d, "grad_avg", r.grad_avg(), wrap);
  }
  static void fill(State& s, const StateDict& d, const Unwrap& unwrap, const std::string& where) {
    s.step(step(d, where));
    s.square_avg(tensor(d, "square_avg", unwrap, true, where));
    s.momentum_buffer(tensor(d, "momentum_buffer", unwrap, false, where));
    s.grad_avg(tensor(d, "grad_avg", unwrap, false, where));
  }
};

// A traits struct behind type-erased entry points: the table below is the only list.
struct OptimizerKind {
  bool (*owns_options)(const optim::OptimizerOptions&);
  bool (*owns_state)(const optim::OptimizerParamState&);
  void (*options_into)(const optim::OptimizerOptions&, StateDict&);
  void (*apply)(const StateDict&, optim::OptimizerOptions&, const std::string&);
  void (*state_into)(const optim::OptimizerParamState&, StateDict&, const Wrap&);
  std::unique_ptr<optim::OptimizerParamState> (*make_state)(const StateDict&, const Unwrap&,
                                                            const std::string&);
};

template <typename T>
constexpr OptimizerKind kind_of() {
  using O = typename T::Options;
  using S = typename T::State;
  return {
      [](const optim::OptimizerOptions& o) { return dynamic_cast<const O*>(&o) != nullptr; },
      [](const optim::OptimizerParamState& s) { return dynamic_cast<const S*>(&s) != nullptr; },
      [](const optim::OptimizerOptions& o, StateDict& d) {
        T::options_into(static_cast<const O&>(o), d);
      },
      [](const StateDict& d, optim::OptimizerOptions& o, const std::string& where) {
        T::apply(d, static_cast<O&>(o), where);
      },
      [](const optim::OptimizerParamState& s, StateDict& d, const Wrap& wrap) {
        T::state_into(static_cast<const S&>(s), d, wrap);
      },
      [](const StateDict& d, const Unwrap& unwrap, const std::string& where)
          -> std::unique_ptr<optim::OptimizerParamState> {
        auto s = std::make_unique<S>();
        T::fill(*s, d, unwrap, where);
        return s;
      }};
}

const OptimizerKind kKinds[] = {
    kind_of<AdamLike<optim::AdamOptions, optim::AdamParamState>>(),
    kind_of<AdamLike<optim::AdamWOptions, optim::AdamWParamState>>(),
    kind_of<SgdTraits>(),
    kind_of<AdagradTraits>(),
    kind_of<RmspropTraits>(),
};
constexpr const char* kSupported = "only SGD, Adam, AdamW, Adagrad and RMSprop";

const OptimizerKind& kind_of_options(const optim::OptimizerOptions& o) {
  for (const auto& k : kKinds) {
    if (k.owns_options(o)) return k;
  }
  throw StateDictError(std::string("unsupported optimizer: ") + kSupported);
}

StateDict options_dict(const optim::OptimizerOptions& o) {
  StateDict d;
  kind_of_options(o).options_into(o, d);
  return d;
}

void apply_options(const StateDict& d, optim::OptimizerOptions& o, const std::string& where) {
  kind_of_options(o).apply(d, o, where);
}

StateDict state_dict_of(const optim::OptimizerParamState& s, const Wrap& wrap) {
  for (const auto& k : kKinds) {
    if (k.owns_state(s)) {
      StateDict d;
      k.state_into(s, d, wrap);
      return d;
    }
  }
  throw StateDictError(std::string("unsupported optimizer state: ") + kSupported);
}

std::unique_ptr<optim::OptimizerParamState> make_state(const optim::OptimizerOptions& o,
                                                       const StateDict& d, const Unwrap& unwrap,
                                                       const std::string& where) {
  return kind_of_options(o).make_state(d, unwrap, where);
}

std::vector<std::string> fqns_of_group(const optim::OptimizerParamGroup& group,
                                       const std::map<const void*, ParamName>& names) {
  std::vector<std::string> out;
  for (const auto& p : group.params()) out.push_back(name_of(names, p).fqn);
  return out;
}

bool is_flat(const StateDict& osd) {
  if (osd.contains("state") || osd.contains("param_groups")) return false;
  for (const auto& k : osd.keys()) {
    if (k.rfind("state.", 0) == 0 || k.rfind("param_groups.", 0) == 0) return true;
  }
  return false;
}

}  // namespace

StateDict get_optimizer_state_dict(const torch::nn::Module& model,
                                   const optim::Optimizer& optimizer,
                                   const StateDictOptions& options, const ParamLayouts& layouts) {
  const auto names = names_of(model);
  StateDict state;
  StateList groups;
  for (const auto& group : optimizer.param_groups()) {
    StateDict g = options_dict(group.options());
    StateList params;
    for (const auto& p : group.params()) {
      const ParamName& name = name_of(names, p);
      params.push_back(name.fqn);
      const auto it = optimizer.state().find(state_key(p));
      if (it == optimizer.state().end()) continue;
      const auto layout = layouts.find(name.path);
      const Wrap wrap = [&](const at::Tensor& t) -> StateValue {
        if (layout == layouts.end()) return t.detach();
        return DTensor(t.detach(), layout->second.mesh, layout->second.placements,
                       layout->second.global_shape);
      };
      state.insert(name.fqn, state_dict_of(*it->second, wrap));
    }
    g.insert("params", params);
    groups.push_back(g);
  }
  StateDict osd;
  osd.insert("state", state);
  osd.insert("param_groups", groups);
  if (options.full_state_dict) {
    GatherOptions gather;
    gather.cpu_offload = options.cpu_offload;
    if (options.cpu_offload) gather.ranks_only = std::vector<int>{0};
    return gather_state_dict(osd, gather);
  }
  if (options.cpu_offload) {
    StateValue tree(std::move(osd));
    detail::offload_to_cpu(tree);
    return std::move(tree.as<StateDict>());
  }
  return osd;
}

void set_optimizer_state_dict(const torch::nn::Module& model, optim::Optimizer& optimizer,
                              const StateDict& input, const StateDictOptions& options,
                              const ParamLayouts& layouts) {
  const StateDict osd = is_flat(input) ? unflatten_optimizer_state_dict(input, model, optimizer)
                                       : input;
  if (!osd.contains("state") || !osd.contains("param_groups")) {
    throw StateDictError("an optimizer state dict needs 'state' and 'param_groups' entries");
  }
  const auto& state = osd.at("state").as<StateDict>();
  const auto& groups = osd.at("param_groups").as<StateList>();
  const auto names = names_of(model);
  std::set<std::string> known;
  for (std::size_t gi = 0; gi < optimizer.param_groups().size(); ++gi) {
    auto& group = optimizer.param_groups()[gi];
    const auto fqns = fqns_of_group(group, names);
    const std::set<std::string> wanted(fqns.begin(), fqns.end());
    const StateDict* match = nullptr;
    for (const auto& g : groups) {
      const auto& listed = g.as<StateDict>().at("params").as<StateList>();
      std::set<std::string> have;
      for (const auto& f : listed) have.insert(f.as<std::string>());
      if (have == wanted) match = &g.as<StateDict>();
    }
    std::ostringstream where;
    where << "param group " << gi << " [";
    for (std::size_t i = 0; i < fqns.size() && i < 4; ++i) where << (i ? ", " : "") << fqns[i];
    where << (fqns.size() > 4 ? ", ...]" : "]");
    if (match == nullptr) {
      throw StateDictError(where.str() + ": no param group of the state dict holds exactly "
                                         "these parameters");
    }
    apply_options(*match, group.options(), where.str());
    for (const auto& p : group.params()) {
      const ParamName& name = name_of(names, p);
      known.insert(name.fqn);
      if (!state.contains(name.fqn)) {
        if (options.strict) {
          throw StateDictError("optimizer state of '" + name.fqn + "' is missing");
        }
        continue;
      }
      const auto layout = layouts.find(name.path);
      const Unwrap unwrap = [&](const StateValue& v, const std::string& field) -> at::Tensor {
        const std::string what = "optimizer state " + name.fqn + "." + field;
        const at::Tensor t = detail::tensor_for_parameter(
            v, layout == layouts.end() ? nullptr : &layout->second, what);
        if (!t.defined()) throw StateDictError(what + " is a " + v.type_name() + ", not a tensor");
        if (t.sizes() != p.sizes()) {
          std::ostringstream os;
          os << what << " has shape " << t.sizes() << ", the parameter " << p.sizes();
          throw StateDictError(os.str());
        }
        return t.to(p.device()).clone();
      };
      optimizer.state()[state_key(p)] =
          make_state(group.options(), state.at(name.fqn).as<StateDict>(), unwrap,
                     "optimizer state of '" + name.fqn + "'");
    }
  }
  if (options.strict) {
    for (const auto& key : state.keys()) {
      if (known.count(key) == 0) {
        throw StateDictError("optimizer state of '" + key +
                             "' belongs to no parameter of the optimizer");
      }
    }
  }
}

StateDict flatten_optimizer_state_dict(const StateDict& osd) {
  StateDict flat;
  const auto& state = osd.at("state").as<StateDict>();
  for (std::size_t i = 0; i < state.size(); ++i) {
    const auto& fields = state.value(i).as<StateDict>();
    for (std::size_t k = 0; k < fields.size(); ++k) {
      flat.insert("state." + state.keys()[i] + "." + fields.keys()[k], fields.value(k));
    }
  }
  for (const auto& g : osd.at("param_groups").as<StateList>()) {
    const auto& group = g.as<StateDict>();
    for (const auto& fqn : group.at("params").as<StateList>()) {
      for (std::size_t k = 0; k < group.size(); ++k) {
        if (group.keys()[k] == "params") continue;
        flat.insert("param_groups." + fqn.as<std::string>() + "." + group.keys()[k],
                    group.value(k));
      }
    }
  }
  return flat;
}

StateDict unflatten_optimizer_state_dict(const StateDict& flat, const torch::nn::Module& model,
                                         const optim::Optimizer& optimizer) {
  const auto names = names_of(model);
  StateDict state;
  StateList groups;
  for (const auto& group : optimizer.param_groups()) {
    const auto fqns = fqns_of_group(group, names);
    StateDict g;
    StateList params;
    for (const auto& fqn : fqns) {
      params.push_back(fqn);
      const std::string state_prefix = "state." + fqn + ".";
      const std::string group_prefix = "param_groups." + fqn + ".";
      StateDict fields;
      for (std::size_t i = 0; i < flat.size(); ++i) {
        const std::string& key = flat.keys()[i];
        if (key.rfind(state_prefix, 0) == 0) {
          fields.insert(key.substr(state_prefix.size()), flat.value(i));
        } else if (key.rfind(group_prefix, 0) == 0) {
          const std::string field = key.substr(group_prefix.size());
          if (!g.contains(field)) g.insert(field, flat.value(i));
        }
      }
      if (!fields.empty()) state.insert(fqn, fields);
    }
    g.insert("params", params);
    groups.push_back(g);
  }
  StateDict osd;
  osd.insert("state", state);
  osd.insert("param_groups", groups);
  return osd;
}

}  // namespace c10dtest
