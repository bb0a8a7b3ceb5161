#include "findings.hpp"

#include <cstdio>
#include <cstdlib>

#include "common/fields.hpp"
#include "leaves.hpp"

namespace c10dtest::detail::verifier {

Finding finding(const std::string& path, Kind kind, std::string text) {
  Finding f;
  f.path = path;
  f.kind = kind;
  f.text = std::move(text);
  return f;
}

std::string hex_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%a", v);
  return buf;
}

void put_element(std::string& out, const detail::ElementAt& e) {
  put_ints(out, e.index);
  put_field(out, e.expected);
  put_field(out, e.actual);
}

detail::ElementAt read_element(detail::FieldReader& r) {
  detail::ElementAt e;
  e.index = read_ints(r);
  e.expected = r.next();
  e.actual = r.next();
  return e;
}

std::string encode_findings(const std::vector<Finding>& findings, std::int64_t reference_keys) {
  std::string out;
  put_field(out, std::to_string(reference_keys));
  put_field(out, std::to_string(findings.size()));
  for (const auto& f : findings) {
    put_field(out, f.path);
    put_field(out, std::to_string(static_cast<int>(f.kind)));
    put_field(out, f.text);
    if (f.kind != Kind::kValues) continue;
    put_field(out, std::to_string(f.stats.checked));
    put_field(out, std::to_string(f.stats.bad));
    put_element(out, f.stats.first);
    put_element(out, f.stats.worst);
    put_field(out, hex_double(f.stats.worst_abs));
    put_field(out, std::to_string(f.stats.worst_class));
    put_field(out, hex_double(f.stats.max_rel));
    put_field(out, std::to_string(f.stats.nan_bad));
    put_field(out, std::to_string(f.stats.inf_bad));
    put_field(out, std::to_string(f.replica));
    put_ints(out, f.first_offsets);
    put_ints(out, f.first_sizes);
    put_field(out, f.whole ? "1" : "0");
  }
  return out;
}

std::vector<Finding> decode_findings(const std::string& data, std::int64_t* reference_keys) {
  detail::FieldReader r(data, "verification findings");
  *reference_keys = r.number();
  std::vector<Finding> out(static_cast<std::size_t>(r.number()));
  for (auto& f : out) {
    f.path = r.next();
    f.kind = static_cast<Kind>(r.number());
    f.text = r.next();
    if (f.kind != Kind::kValues) continue;
    f.stats.checked = r.number();
    f.stats.bad = r.number();
    f.stats.first = read_element(r);
    f.stats.worst = read_element(r);
    f.stats.worst_abs = std::strtod(r.next().c_str(), nullptr);
    f.stats.worst_class = static_cast<int>(r.number());
    f.stats.max_rel = std::strtod(r.next().c_str(), nullptr);
    f.stats.nan_bad = r.number();
    f.stats.inf_bad = r.number();
    f.replica = r.number();
    f.first_offsets = read_ints(r);
    f.first_sizes = read_ints(r);
    f.whole = r.next() == "1";
  }
  return out;
}

}  // namespace c10dtest::detail::verifier
