// The pickle machine for torch.save's data.pkl: a reader of the subset state dicts use, and a
// writer of what Python's torch.save (protocol 2) writes for them. See pickle.hpp.
#include "state_dict/pickle.hpp"

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <variant>

namespace c10dtest::detail::pickle {
namespace {

// ----------------------------------------------------------------------------------------------
// Python objects, as far as a state dict needs them.

struct PyObj;
using PyPtr = std::shared_ptr<PyObj>;
struct PyGlobal {
  std::string module, name;
};
struct PyStorage {
  c10::ScalarType dtype;
  std::string key;
  std::int64_t numel;
};
struct PyUnreadable {
  std::string what;  // "a torch.device", "builtins.complex"
};
struct PyList {
  std::vector<PyPtr> items;
};
struct PyTuple {
  std::vector<PyPtr> items;
};
struct PyDict {
  std::vector<std::pair<PyPtr, PyPtr>> items;
};
struct PyObj {
  std::variant<StateNone, bool, std::int64_t, double, std::string, at::Tensor, PyList, PyTuple,
               PyDict, PyGlobal, PyStorage, PyUnreadable>
      v;
  PyObj() = default;
  PyObj(const PyObj&) = delete;
  PyObj& operator=(const PyObj&) = delete;
  // Without recursion: a pickle can nest a million lists, and a recursive destructor would
  // overflow the stack. Children this object alone holds are emptied one by one.
  ~PyObj() {
    std::vector<PyPtr> work;
    take_children(work);
    while (!work.empty()) {
      PyPtr p = std::move(work.back());
      work.pop_back();
      if (p && p.use_count() == 1) p->take_children(work);
    }
  }
  void take_children(std::vector<PyPtr>& out) {
    if (auto* l = std::get_if<PyList>(&v)) {
      for (auto& e : l->items) out.push_back(std::move(e));
      l->items.clear();
    } else if (auto* t = std::get_if<PyTuple>(&v)) {
      for (auto& e : t->items) out.push_back(std::move(e));
      t->items.clear();
    } else if (auto* d = std::get_if<PyDict>(&v)) {
      for (auto& [k, val] : d->items) {
        out.push_back(std::move(k));
        out.push_back(std::move(val));
      }
      d->items.clear();
    }
  }
};

template <typename T>
PyPtr make(T v) {
  auto p = std::make_shared<PyObj>();
  p->v = std::move(v);
  return p;
}

std::string describe(const PyObj& o) {
  if (auto g = std::get_if<PyGlobal>(&o.v)) return "the class " + g->module + "." + g->name;
  if (auto u = std::get_if<PyUnreadable>(&o.v)) return u->what;
  if (std::holds_alternative<PyStorage>(o.v)) return "a bare storage";
  if (std::holds_alternative<PyTuple>(o.v)) return "a tuple";
  return "a value";
}

// Only the storage dtypes torch.save writes ("torch.FloatStorage", "torch.UntypedStorage").
std::optional<c10::ScalarType> storage_dtype(const std::string& module, const std::string& name) {
  if (module != "torch") return std::nullopt;
  if (name == "UntypedStorage") return c10::ScalarType::Byte;
#define C10DTEST_STORAGE(_, n) \
  if (name == #n "Storage") return c10::ScalarType::n;
  AT_FORALL_SCALAR_TYPES_WITH_COMPLEX(C10DTEST_STORAGE)
#undef C10DTEST_STORAGE
  return std::nullopt;
}

// The pickle machine. `load_storage(key, dtype, numel)` gives a 1-D tensor over a record.
class Unpickler {
 public:
  Unpickler(const char* data, std::size_t size,
            std::function<at::Tensor(const std::string&, c10::ScalarType, std::int64_t)> storage)
      : begin_(data), p_(data), end_(data + size), load_storage_(std::move(storage)) {}

  PyPtr run() {
    while (true) {
      const auto op = static_cast<unsigned char>(byte());
      switch (op) {
        case 0x80: byte(); break;                       // PROTO
        case 0x95: bytes(8); break;                     // FRAME (protocol 4): length ignored
        case '.':                                       // STOP
          if (stack_.size() != 1 || !marks_.empty()) throw PickleError("unbalanced pickle");
          return stack_.back();
        case '(': marks_.push_back(stack_.size()); break;
        case '}': push(make(PyDict{})); break;
        case ']': push(make(PyList{})); break;
        case ')': push(make(PyTuple{})); break;
        case 'd': { PyDict d; auto items = pop_mark(); pairs(items, d); push(make(std::move(d))); break; }
        case 'l': push(make(PyList{pop_mark()})); break;
        case 't': push(make(PyTuple{pop_mark()})); break;
        case 0x85: case 0x86: case 0x87: {              // TUPLE1..3
          const std::size_t n = op - 0x84u;
          need(n);
          PyTuple t{std::vector<PyPtr>(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end())};
          stack_.resize(stack_.size() - n);
          push(make(std::move(t)));
          break;
        }
        case 'a': { auto v = pop(); list_of(top()).items.push_back(v); break; }
        case 'e': { auto items = pop_mark(); auto& l = list_of(top()); l.items.insert(l.items.end(), items.begin(), items.end()); break; }
        case 's': { auto v = pop(); auto k = pop(); dict_of(top()).items.emplace_back(k, v); break; }
        case 'u': { auto items = pop_mark(); pairs(items, dict_of(top())); break; }
        case 'J': push(make(std::int64_t{static_cast<std::int32_t>(le(4))})); break;
        case 'K': push(make(std::int64_t(le(1)))); break;
        case 'M': push(make(std::int64_t(le(2)))); break;
        case 0x8a: {                                    // LONG1
          const auto n = static_cast<std::size_t>(le(1));
          if (n > 8) throw PickleError("an integer wider than 64 bits");
          const char* b = bytes(n);
          std::uint64_t u = 0;
          for (std::size_t i = 0; i < n; ++i) u |= std::uint64_t(static_cast<unsigned char>(b[i])) << (8 * i);
          if (n > 0 && n < 8 && (static_cast<unsigned char>(b[n - 1]) & 0x80)) u |= ~std::uint64_t{0} << (8 * n);
          push(make(static_cast<std::int64_t>(u)));
          break;
        }
        case 'G': {                                     // BINFLOAT, big-endian
          const char* b = bytes(8);
          std::uint64_t u = 0;
          for (int i = 0; i < 8; ++i) u = (u << 8) | static_cast<unsigned char>(b[i]);
          double d;
          std::memcpy(&d, &u, 8);
          push(make(d));
          break;
        }
        case 'N': push(make(StateNone{})); break;
        case 0x88: push(make(true)); break;
        case 0x89: push(make(false)); break;
        case 'X': push(make(string(le(4)))); break;       // BINUNICODE
        case 0x8c: push(make(string(le(1)))); break;      // SHORT_BINUNICODE
        case 0x8d: push(make(string(le(8)))); break;      // BINUNICODE8
        case 'T': push(make(string(le(4)))); break;       // BINSTRING (Python 2 str)
        case 'U': push(make(string(le(1)))); break;       // SHORT_BINSTRING
        case 'B': string(le(4)); push(make(PyUnreadable{"a bytes object"})); break;
        case 'C': string(le(1)); push(make(PyUnreadable{"a bytes object"})); break;
        case 'q': memo(le(1)); break;
        case 'r': memo(le(4)); break;
        case 0x94: memo(memo_.size()); break;            // MEMOIZE
        case 'h': get(le(1)); break;
        case 'j': get(le(4)); break;
        case '0': pop(); break;
        case '1': pop_mark(); break;
        case '2': push(top()); break;
        case 'c': {                                     // GLOBAL
          auto module = line();
          auto name = line();
          push(make(PyGlobal{module, name}));
          break;
        }
        case 0x93: {                                    // STACK_GLOBAL
          auto name = pop();
          auto module = pop();
          auto* m = std::get_if<std::string>(&module->v);
          auto* n = std::get_if<std::string>(&name->v);
          if (!m || !n) throw PickleError("STACK_GLOBAL without two strings");
          push(make(PyGlobal{*m, *n}));
          break;
        }
        case 'R': { auto args = pop(); auto f = pop(); push(reduce(*f, args)); break; }
        case 0x81: { auto args = pop(); auto cls = pop(); push(reduce(*cls, args)); break; }  // NEWOBJ
        case 'b': {                                     // BUILD: an object's state
          auto state = pop();
          (void)state;  // an OrderedDict's _metadata, a Parameter's extra state: not kept
          need(1);
          break;
        }
        case 'Q': {                                     // BINPERSID
          auto pid = pop();
          push(persistent(*pid));
          break;
        }
        default: {
          std::ostringstream os;
          os << "pickle opcode 0x" << std::hex << int(op) << " at byte " << std::dec
             << (p_ - begin_ - 1) << " is not one torch.save writes for a state dict";
          throw PickleError(os.str());
        }
      }
    }
  }

 private:
  char byte() {
    if (p_ >= end_) throw PickleError("the pickle ends early");
    return *p_++;
  }
  const char* bytes(std::size_t n) {
    if (static_cast<std::size_t>(end_ - p_) < n) throw PickleError("the pickle ends early");
    const char* b = p_;
    p_ += n;
    return b;
  }
  std::uint64_t le(std::size_t n) {
    const char* b = bytes(n);
    std::uint64_t u = 0;
    for (std::size_t i = n; i-- > 0;) u = (u << 8) | static_cast<unsigned char>(b[i]);
    return u;
  }
  std::string string(std::uint64_t n) {
    if (n > static_cast<std::uint64_t>(end_ - p_)) throw PickleError("the pickle ends early");
    return std::string(bytes(static_cast<std::size_t>(n)), static_cast<std::size_t>(n));
  }
  std::string line() {
    const char* nl = static_cast<const char*>(std::memchr(p_, '\n', static_cast<std::size_t>(end_ - p_)));
    if (!nl) throw PickleError("the pickle ends early");
    std::string s(p_, nl);
    p_ = nl + 1;
    return s;
  }
  void need(std::size_t n) {
    const std::size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() < floor + n) throw PickleError("the pickle's stack runs empty");
  }
  void push(PyPtr p) {
    if (stack_.size() > 10'000'000) throw PickleError("the pickle's stack grows without end");
    stack_.push_back(std::move(p));
  }
  PyPtr pop() {
    need(1);
    auto p = stack_.back();
    stack_.pop_back();
    return p;
  }
  PyPtr& top() {
    need(1);
    return stack_.back();
  }
  std::vector<PyPtr> pop_mark() {
    if (marks_.empty()) throw PickleError("the pickle pops a mark it never set");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyPtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  void memo(std::uint64_t i) {
    need(1);
    if (i > 100'000'000) throw PickleError("a memo index out of range");
    memo_[i] = stack_.back();
  }
  void get(std::uint64_t i) {
    auto it = memo_.find(i);
    if (it == memo_.end()) throw PickleError("the pickle reads memo " + std::to_string(i) + ", never stored");
    push(it->second);
  }
  static PyList& list_of(PyPtr& p) {
    if (auto l = std::get_if<PyList>(&p->v)) return *l;
    throw PickleError("the pickle appends to " + describe(*p) + ", not a list");
  }
  static PyDict& dict_of(PyPtr& p) {
    if (auto d = std::get_if<PyDict>(&p->v)) return *d;
    throw PickleError("the pickle sets an item of " + describe(*p) + ", not a dict");
  }
  static void pairs(const std::vector<PyPtr>& items, PyDict& d) {
    if (items.size() % 2 != 0) throw PickleError("a dict with an odd number of keys and values");
    for (std::size_t i = 0; i < items.size(); i += 2) d.items.emplace_back(items[i], items[i + 1]);
  }
  static const std::vector<PyPtr>& tuple_items(const PyPtr& p, const char* what) {
    if (auto t = std::get_if<PyTuple>(&p->v)) return t->items;
    throw PickleError(std::string(what) + ": arguments are not a tuple");
  }
  static std::vector<std::int64_t> ints(const PyPtr& p, const char* what) {
    const std::vector<PyPtr>* items = nullptr;
    if (auto t = std::get_if<PyTuple>(&p->v)) items = &t->items;
    if (!items) throw PickleError(std::string(what) + " is not a tuple");
    std::vector<std::int64_t> out;
    for (const auto& e : *items) {
      auto i = std::get_if<std::int64_t>(&e->v);
      if (!i) throw PickleError(std::string(what) + " holds a non-integer");
      out.push_back(*i);
    }
    return out;
  }

  PyPtr persistent(const PyObj& pid) {
    auto t = std::get_if<PyTuple>(&pid.v);
    if (!t || t->items.size() != 5) throw PickleError("a persistent id that is not ('storage', type, key, location, numel)");
    auto tag = std::get_if<std::string>(&t->items[0]->v);
    auto type = std::get_if<PyGlobal>(&t->items[1]->v);
    auto key = std::get_if<std::string>(&t->items[2]->v);
    auto numel = std::get_if<std::int64_t>(&t->items[4]->v);
    if (!tag || *tag != "storage" || !type || !key || !numel || *numel < 0) {
      throw PickleError("a persistent id that is not ('storage', type, key, location, numel)");
    }
    auto dtype = storage_dtype(type->module, type->name);
    if (!dtype) throw PickleError("a storage of unknown type " + type->module + "." + type->name);
    auto& cached = storages_[*key];
    if (!cached.defined()) cached = load_storage_(*key, *dtype, *numel);
    if (cached.scalar_type() != *dtype || cached.numel() != *numel) {
      throw PickleError("storage " + *key + " is used with two types or sizes");
    }
    return make(cached);
  }

  PyPtr reduce(const PyObj& f, const PyPtr& args) {
    auto g = std::get_if<PyGlobal>(&f.v);
    if (!g) return make(PyUnreadable{"a call of " + describe(f)});
    const std::string full = g->module + "." + g->name;
    if (full == "collections.OrderedDict" || full == "builtins.dict") {
      if (!tuple_items(args, full.c_str()).empty()) return make(PyUnreadable{full + " built from items"});
      return make(PyDict{});
    }
    if (full == "torch._utils._rebuild_tensor_v2" || full == "torch._utils._rebuild_tensor") {
      const auto& a = tuple_items(args, "_rebuild_tensor_v2");
      if (a.size() < 4) throw PickleError("_rebuild_tensor_v2 with " + std::to_string(a.size()) + " arguments");
      auto storage = std::get_if<at::Tensor>(&a[0]->v);
      auto offset = std::get_if<std::int64_t>(&a[1]->v);
      if (!storage || !offset) throw PickleError("_rebuild_tensor_v2 without a storage and an offset");
      const auto size = ints(a[2], "a tensor's size");
      const auto stride = ints(a[3], "a tensor's stride");
      return make(view(*storage, *offset, size, stride));
    }
    if (full == "torch._utils._rebuild_parameter" || full == "torch._utils._rebuild_parameter_with_state") {
      const auto& a = tuple_items(args, "_rebuild_parameter");
      if (a.empty() || !std::holds_alternative<at::Tensor>(a[0]->v)) throw PickleError("_rebuild_parameter without a tensor");
      return a[0];
    }
    if (full == "torch._tensor._rebuild_from_type_v2") {
      // (func, type, args, state): a Tensor subclass or a Parameter; the data is func(*args).
      const auto& a = tuple_items(args, "_rebuild_from_type_v2");
      if (a.size() < 3) throw PickleError("_rebuild_from_type_v2 with too few arguments");
      return reduce(*a[0], a[2]);
    }
    if (full == "torch.Size") {
      const auto& a = tuple_items(args, "torch.Size");
      if (a.size() == 1 && std::holds_alternative<PyTuple>(a[0]->v)) return a[0];
    }
    if (full == "torch.device") return make(PyUnreadable{"a torch.device"});
    if (full == "builtins.complex") return make(PyUnreadable{"a complex number"});
    return make(PyUnreadable{"an object of " + full});
  }

  static at::Tensor view(const at::Tensor& storage, std::int64_t offset,
                         const std::vector<std::int64_t>& size,
                         const std::vector<std::int64_t>& stride) {
    if (size.size() != stride.size()) throw PickleError("a tensor whose size and stride differ in length");
    std::int64_t last = offset;  // the highest element index the view reaches
    bool empty = false;
    if (offset < 0) throw PickleError("a tensor at a negative storage offset");
    for (std::size_t d = 0; d < size.size(); ++d) {
      if (size[d] < 0 || stride[d] < 0) throw PickleError("a tensor with a negative size or stride");
      if (size[d] == 0) empty = true;
    }
    if (!empty) {
      for (std::size_t d = 0; d < size.size(); ++d) {
        std::int64_t step = 0;
        if (__builtin_mul_overflow(size[d] - 1, stride[d], &step) || __builtin_add_overflow(last, step, &last)) {
          throw PickleError("a tensor view beyond any storage");
        }
      }
      if (last >= storage.numel()) {
        throw PickleError("a tensor view of size " + shape(size) + ", stride " + shape(stride) +
                          " at offset " + std::to_string(offset) + " reaches beyond its storage of " +
                          std::to_string(storage.numel()) + " elements");
      }
    }
    return storage.as_strided(size, stride, empty ? 0 : offset);
  }
  static std::string shape(const std::vector<std::int64_t>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  }

  const char* begin_;
  const char* p_;
  const char* end_;
  std::function<at::Tensor(const std::string&, c10::ScalarType, std::int64_t)> load_storage_;
  std::vector<PyPtr> stack_;
  std::vector<std::size_t> marks_;
  std::map<std::uint64_t, PyPtr> memo_;
  std::map<std::string, at::Tensor> storages_;
};

// ----------------------------------------------------------------------------------------------
// Python objects to state values.

StateValue to_state(const PyPtr& o, const std::string& path, int depth);

std::string key_text(const PyObj& k, const std::string& path) {
  if (auto s = std::get_if<std::string>(&k.v)) return *s;
  if (auto i = std::get_if<std::int64_t>(&k.v)) return std::to_string(*i);
  throw FileFormatError("a dict key of " + (path.empty() ? std::string("the top level") : "'" + path + "'") +
                        " is " + describe(k) + ", not a string or an integer");
}

StateDict dict_to_state(const PyDict& d, const std::string& path, int depth) {
  StateDict out;
  for (const auto& [k, v] : d.items) {
    const std::string key = key_text(*k, path);
    const std::string sub = path.empty() ? key : path + "." + key;
    if (out.contains(key)) throw FileFormatError("key '" + sub + "' appears twice");
    out.insert(key, to_state(v, sub, depth + 1));
  }
  return out;
}

StateValue to_state(const PyPtr& o, const std::string& path, int depth) {
  if (depth > 100) throw FileFormatError("'" + path + "' is nested more than 100 levels deep");
  return std::visit(
      [&](const auto& v) -> StateValue {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, StateNone> || std::is_same_v<T, bool> ||
                      std::is_same_v<T, std::int64_t> || std::is_same_v<T, double> ||
                      std::is_same_v<T, std::string> || std::is_same_v<T, at::Tensor>) {
          return v;
        } else if constexpr (std::is_same_v<T, PyList> || std::is_same_v<T, PyTuple>) {
          StateList items;
          for (std::size_t i = 0; i < v.items.size(); ++i) {
            items.push_back(to_state(v.items[i], path + "." + std::to_string(i), depth + 1));
          }
          return items;
        } else if constexpr (std::is_same_v<T, PyDict>) {
          return dict_to_state(v, path, depth);
        } else {
          throw FileFormatError("'" + path + "' holds " + describe(*o) +
                                ", a type a state dict cannot hold");
        }
      },
      o->v);
}

// ----------------------------------------------------------------------------------------------
// The pickle writer: what Python's torch.save (protocol 2) writes for these values, so that
// torch.load reads it with weights_only=True.

class Pickler {
 public:
  std::string out;
  std::vector<at::Tensor> storages;
  bool integer_keys = false;

  void value(const StateValue& v, const std::string& path) {
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, StateNone>) {
            out += 'N';
          } else if constexpr (std::is_same_v<T, bool>) {
            out += x ? '\x88' : '\x89';
          } else if constexpr (std::is_same_v<T, std::int64_t>) {
            integer(x);
          } else if constexpr (std::is_same_v<T, double>) {
            std::uint64_t u;
            std::memcpy(&u, &x, 8);
            out += 'G';
            for (int i = 7; i >= 0; --i) out += static_cast<char>((u >> (8 * i)) & 0xff);
          } else if constexpr (std::is_same_v<T, std::string>) {
            text(x);
          } else if constexpr (std::is_same_v<T, at::Tensor>) {
            tensor(x, path);
          } else if constexpr (std::is_same_v<T, StateList>) {
            out += "](";
            for (std::size_t i = 0; i < x.size(); ++i) value(x[i], path + "." + std::to_string(i));
            out += 'e';
          } else if constexpr (std::is_same_v<T, StateDict>) {
            dict(x, path);
          } else {
            throw FileFormatError("'" + path + "' is a " + std::string(StateValue(x).type_name()) +
                                  ": torch.save files hold full tensors (gather_state_dict first)");
          }
        },
        v.variant());
  }

  void dict(const StateDict& d, const std::string& path) {
    out += "}(";
    for (std::size_t i = 0; i < d.size(); ++i) {
      const std::string& k = d.keys()[i];
      const bool digits = !k.empty() && k.size() < 19 &&
                          k.find_first_not_of("0123456789") == std::string::npos &&
                          (k.size() == 1 || k[0] != '0');
      if (integer_keys && digits) {
        integer(std::stoll(k));
      } else {
        text(k);
      }
      value(d.value(i), path.empty() ? k : path + "." + k);
    }
    out += 'u';
  }

 private:
  void integer(std::int64_t x) {
    if (x >= -(std::int64_t{1} << 31) && x < (std::int64_t{1} << 31)) {
      out += 'J';
      const auto u = static_cast<std::uint32_t>(static_cast<std::int32_t>(x));
      for (int i = 0; i < 4; ++i) out += static_cast<char>((u >> (8 * i)) & 0xff);
    } else {
      out += '\x8a';
      out += '\x08';
      const auto u = static_cast<std::uint64_t>(x);
      for (int i = 0; i < 8; ++i) out += static_cast<char>((u >> (8 * i)) & 0xff);
    }
  }
  void text(const std::string& s) {
    out += 'X';
    const auto n = static_cast<std::uint32_t>(s.size());
    for (int i = 0; i < 4; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
    out += s;
  }
  void global(const char* module, const std::string& name) {
    out += 'c';
    out += module;
    out += '\n';
    out += name;
    out += '\n';
  }
  void ints(c10::IntArrayRef v) {
    out += '(';
    for (auto x : v) integer(x);
    out += 't';
  }
  void tensor(const at::Tensor& t, const std::string& path) {
    if (!t.defined()) throw FileFormatError("'" + path + "' is an undefined tensor");
    if (t.device().type() == c10::DeviceType::Meta) {
      throw FileFormatError("'" + path + "' is on the meta device: it holds no values");
    }
    if (t.is_sparse() || t.is_quantized() || t.is_mkldnn()) {
      throw FileFormatError("'" + path + "' is a sparse, quantized or mkldnn tensor");
    }
    const at::Tensor c = t.detach().cpu().contiguous();
    const std::string key = std::to_string(storages.size());
    storages.push_back(c);
    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())
    global("torch._utils", "_rebuild_tensor_v2");
    out += '(';
    // persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
    out += '(';
    text("storage");
    global("torch", std::string(c10::toString(c.scalar_type())) + "Storage");
    text(key);
    text("cpu");
    integer(c.numel());
    out += "tQ";
    integer(0);
    ints(c.sizes());
    ints(c.strides());
    out += '\x89';
    global("collections", "OrderedDict");
    out += ")R";
    out += "tR";
  }
};

}  // namespace

StateDict read(const char* data, std::size_t size, const StorageLoader& load_storage) {
  Unpickler u(data, size, load_storage);
  const PyPtr root = u.run();
  auto* d = std::get_if<PyDict>(&root->v);
  if (!d) throw FileFormatError("holds " + describe(*root) + ", not a dict (a state dict)");
  return dict_to_state(*d, "", 0);
}

std::string write(const StateDict& sd, bool integer_keys, std::vector<at::Tensor>* storages) {
  Pickler p;
  p.integer_keys = integer_keys;
  p.out = "\x80\x02";
  p.dict(sd, "");
  p.out += '.';
  *storages = std::move(p.storages);
  return p.out;
}

}  // namespace c10dtest::detail::pickle
