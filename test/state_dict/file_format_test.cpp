// read_state_dict / write_state_dict in one process: round trips of every dtype and value kind
// through both formats, malformed files (each named problem), and a seeded fuzz of the
// safetensors header parser and of the torch.save reader. Files written by real PyTorch are
// checked by test/interop/ (LibTorch 2.x stage).
#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <c10dtest/c10dtest.hpp>
#include <c10dtest/state_dict_file.hpp>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "state_dict/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
using c10dtest::FileFormat;
using c10dtest::FileFormatError;
using c10dtest::StateDict;
using c10dtest::StateList;
using c10dtest::StateNone;
using c10dtest::StateValue;

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (fs::temp_directory_path() / "c10dtest-files-XXXXXX").string();
    ASSERT_NE(::mkdtemp(t.data()), nullptr);
    dir_ = t;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::string bytes_of(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void put(const std::string& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  // The message of the FileFormatError that reading `p` throws, or "no error".
  static std::string read_error(const std::string& p, c10dtest::ReadFileOptions o = {}) {
    try {
      c10dtest::read_state_dict(p, o);
    } catch (const FileFormatError& e) {
      return e.what();
    }
    return "no error";
  }
  // A safetensors file from a header text and `data` bytes.
  static std::string safetensors(const std::string& header, std::size_t data) {
    std::string out(8, '\0');
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + std::string(data, '\x01');
  }

  fs::path dir_;
};

// Every kind of value a state dict holds, with tensors of every dtype both formats share.
StateDict all_kinds(bool with_complex) {
  at::manual_seed(7);
  StateDict sd;
  sd.insert("f32", at::randn({3, 5}));
  sd.insert("f64", at::randn({4}, at::kDouble));
  sd.insert("f16", at::randn({2, 3}).to(at::kHalf));
  sd.insert("bf16", at::randn({2, 3}).to(at::kBFloat16));
  sd.insert("i64", at::randint(-1000, 1000, {6}, at::kLong));
  sd.insert("i32", at::randint(-1000, 1000, {2, 2}, at::kInt));
  sd.insert("i16", at::randint(-1000, 1000, {5}, at::kShort));
  sd.insert("i8", at::randint(-100, 100, {5}, at::kChar));
  sd.insert("u8", at::randint(0, 255, {5}, at::kByte));
  sd.insert("bool", at::randn({7}) > 0);
  if (with_complex) sd.insert("c64", at::randn({3}, at::kComplexFloat));
  sd.insert("scalar", at::tensor(2.5));
  sd.insert("empty", at::empty({0, 4}));
  sd.insert("view", at::arange(24, at::kFloat).reshape({4, 6}).t().narrow(0, 1, 3));
  StateDict opt;
  StateDict state;
  StateDict p0;
  p0.insert("step", at::tensor(3.0));
  p0.insert("exp_avg", at::randn({3, 5}));
  state.insert("0", p0);
  opt.insert("state", state);
  StateDict group;
  group.insert("lr", 0.001);
  group.insert("betas", StateList{0.9, 0.999});
  group.insert("amsgrad", false);
  group.insert("weight_decay", std::int64_t{0});
  group.insert("name", "adam");
  group.insert("foreach", StateNone{});
  group.insert("params", StateList{std::int64_t{0}});
  opt.insert("param_groups", StateList{group});
  sd.insert("optim", opt);
  sd.insert("nan", std::nan(""));
  sd.insert("inf", -HUGE_VAL);
  sd.insert("big", std::int64_t{1} << 40);
  sd.insert("neg", std::int64_t{-5});
  return sd;
}

// Exact equality of two trees (tensors: dtype, shape and values; NaN equals NaN).
void expect_same(const StateValue& a, const StateValue& b, const std::string& path) {
  ASSERT_STREQ(a.type_name(), b.type_name()) << path;
  if (a.is<at::Tensor>()) {
    const auto& x = a.as<at::Tensor>();
    const auto& y = b.as<at::Tensor>();
    EXPECT_EQ(x.scalar_type(), y.scalar_type()) << path;
    EXPECT_EQ(x.sizes(), y.sizes()) << path;
    if (x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes()) {
      EXPECT_TRUE(x.equal(y)) << path;
    }
  } else if (a.is<StateDict>()) {
    const auto& x = a.as<StateDict>();
    const auto& y = b.as<StateDict>();
    ASSERT_EQ(x.keys(), y.keys()) << path;
    for (std::size_t i = 0; i < x.size(); ++i) expect_same(x.value(i), y.value(i), path + "." + x.keys()[i]);
  } else if (a.is<StateList>()) {
    const auto& x = a.as<StateList>();
    const auto& y = b.as<StateList>();
    ASSERT_EQ(x.size(), y.size()) << path;
    for (std::size_t i = 0; i < x.size(); ++i) expect_same(x[i], y[i], path + "." + std::to_string(i));
  } else if (a.is<double>() && std::isnan(a.as<double>())) {
    EXPECT_TRUE(std::isnan(b.as<double>())) << path;
  } else {
    EXPECT_EQ(a.summary(), b.summary()) << path;
  }
}

TEST_F(FileTest, TorchSaveRoundTripKeepsTreeDtypesAndValues) {
  const StateDict sd = all_kinds(true);
  c10dtest::write_state_dict(path("a.pt"), sd);
  const auto f = c10dtest::read_state_dict_file(path("a.pt"));
  EXPECT_EQ(f.format, FileFormat::kTorchSave);
  expect_same(StateValue(sd), StateValue(f.state_dict), "");
}

TEST_F(FileTest, TorchSaveIntegerKeysComeBackAsDecimalStrings) {
  StateDict state;
  state.insert("0", at::ones({2}));
  state.insert("12", at::zeros({2}));
  state.insert("007", at::zeros({1}));  // not an integer's spelling: stays a string
  StateDict sd;
  sd.insert("state", state);
  c10dtest::WriteFileOptions o;
  o.integer_keys = true;
  c10dtest::write_state_dict(path("o.pt"), sd, FileFormat::kTorchSave, o);
  const StateDict back = c10dtest::read_state_dict(path("o.pt"));
  EXPECT_EQ(back.at("state").as<StateDict>().keys(), (std::vector<std::string>{"0", "12", "007"}));
  // The pickle holds them as ints: BININT 12 (J\x0c\0\0\0) appears, the text "12" does not.
  const std::string bytes = bytes_of(path("o.pt"));
  EXPECT_NE(bytes.find(std::string("J\x0c\0\0\0", 5)), std::string::npos);
}

TEST_F(FileTest, SafetensorsRoundTripFlattensAndKeepsValuesInMetadata) {
  const StateDict sd = all_kinds(true);
  c10dtest::WriteFileOptions o;
  o.metadata = {{"format", "pt"}};
  c10dtest::write_state_dict(path("a.safetensors"), sd, FileFormat::kAuto, o);
  const auto f = c10dtest::read_state_dict_file(path("a.safetensors"));
  EXPECT_EQ(f.format, FileFormat::kSafetensors);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  const StateDict& back = f.state_dict;
  // Tensors under flat paths, values restored under theirs.
  expect_same(sd.at("bf16"), back.at("bf16"), "bf16");
  expect_same(sd.at("view"), back.at("view"), "view");
  expect_same(sd.at("optim").as<StateDict>().at("state").as<StateDict>().at("0").as<StateDict>().at("exp_avg"),
              back.at("optim.state.0.exp_avg"), "exp_avg");
  expect_same(StateList{0.9, 0.999}, back.at("optim.param_groups.0.betas"), "betas");
  EXPECT_EQ(back.at("optim.param_groups.0.name").as<std::string>(), "adam");
  EXPECT_TRUE(back.at("optim.param_groups.0.foreach").is<StateNone>());
  EXPECT_TRUE(std::isnan(back.at("nan").as<double>()));
  EXPECT_EQ(back.at("inf").as<double>(), -HUGE_VAL);
  EXPECT_EQ(back.at("big").as<std::int64_t>(), std::int64_t{1} << 40);
  // The verifier matches the flat file against the nested dict.
  EXPECT_TRUE(c10dtest::verify_state_dict(back, sd));
  // Without restore_values: the tensors only.
  c10dtest::ReadFileOptions r;
  r.restore_values = false;
  EXPECT_FALSE(c10dtest::read_state_dict(path("a.safetensors"), r).contains("nan"));
}

TEST_F(FileTest, SafetensorsDataIsAlignedAndMappedCopyOnWrite) {
  StateDict sd;
  sd.insert("w", at::arange(1000, at::kFloat));
  c10dtest::write_state_dict(path("w.safetensors"), sd);
  const std::string bytes = bytes_of(path("w.safetensors"));
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u) << "the data section starts 8-byte aligned";
  for (bool map : {true, false}) {
    c10dtest::ReadFileOptions o;
    o.map = map;
    at::Tensor t = c10dtest::read_state_dict(path("w.safetensors"), o).at("w").as<at::Tensor>();
    EXPECT_TRUE(t.equal(at::arange(1000, at::kFloat)));
    t.add_(1);  // writable, and never written back
  }
  EXPECT_EQ(bytes_of(path("w.safetensors")), bytes);
  // A tensor outlives the file's name (the mapping holds the file).
  at::Tensor kept = c10dtest::read_state_dict(path("w.safetensors")).at("w").as<at::Tensor>();
  fs::remove(path("w.safetensors"));
  EXPECT_EQ(kept[999].item<float>(), 999.0f);
}

// Mapped, not copied, in both formats: a page not yet written to shows the file's bytes, so a
// change made to the file in place (the documented hazard) shows through a mapped tensor and not
// through a copied one.
TEST_F(FileTest, BothFormatsMapTheirTensorData) {
  const float marker = 1234.5f;
  StateDict sd;
  sd.insert("w", at::full({4096}, marker));
  for (const char* name : {"m.pt", "m.safetensors"}) {
    SCOPED_TRACE(name);
    c10dtest::write_state_dict(path(name), sd);
    c10dtest::ReadFileOptions copied;
    copied.map = false;
    const at::Tensor mapped = c10dtest::read_state_dict(path(name)).at("w").as<at::Tensor>();
    const at::Tensor copy = c10dtest::read_state_dict(path(name), copied).at("w").as<at::Tensor>();
    std::string bytes = bytes_of(path(name));
    const std::string pattern(reinterpret_cast<const char*>(&marker), sizeof marker);
    std::size_t replaced = 0;
    for (auto at = bytes.find(pattern); at != std::string::npos; at = bytes.find(pattern, at + 4)) {
      bytes.replace(at, 4, std::string(4, '\0'));
      ++replaced;
    }
    EXPECT_EQ(replaced, 4096u);
    {
      std::fstream f(path(name), std::ios::in | std::ios::out | std::ios::binary);  // in place
      f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    EXPECT_EQ(mapped[100].item<float>(), 0.0f) << "not mapped";
    EXPECT_EQ(copy[100].item<float>(), marker);
  }
}

TEST_F(FileTest, WritingAFailingDictLeavesNoFile) {
  StateDict sd;
  sd.insert("ok", at::ones({2}));
  sd.insert("bad", at::Tensor());
  for (const char* name : {"x.pt", "x.safetensors"}) {
    try {
      c10dtest::write_state_dict(path(name), sd);
      ADD_FAILURE() << "no error";
    } catch (const FileFormatError& e) {
      EXPECT_NE(std::string(e.what()).find(path(name)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::is_empty(dir_)) << name;
  }
}

// A header whose length leaves the data unaligned (other writers do not pad): the tensor is
// copied, with the right values.
TEST_F(FileTest, MisalignedSafetensorsDataIsCopied) {
  const std::string header = R"({"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})";
  ASSERT_NE((8 + header.size()) % 8, 0u);
  put(path("u.safetensors"), safetensors(header, 16));
  const at::Tensor w = c10dtest::read_state_dict(path("u.safetensors")).at("w").as<at::Tensor>();
  EXPECT_TRUE(w.equal(at::full({2}, std::int64_t{0x0101010101010101}, at::kLong)));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(w.data_ptr()) % 8, 0u);
}

// ----------------------------------------------------------------------------------------------
// Malformed safetensors files: each problem named.

TEST_F(FileTest, MalformedSafetensorsAreNamed) {
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  struct Case {
    const char* name;
    std::string bytes;
    const char* expected;
  };
  std::string huge(8, '\0');
  huge[5] = 0x10;  // 2^44 bytes
  std::string big_header = safetensors("{}", 0);
  big_header[3] = 0x10;  // 256 MB
  const std::vector<Case> cases = {
      {"empty", "", "truncated: 0 bytes"},
      {"short", "abc", "truncated: 3 bytes"},
      {"claims more than the file", huge, "header too large"},
      {"header beyond the file", safetensors(ok, 8).substr(0, 20), "truncated: the header claims"},
      {"over the limit", big_header, "more than the limit of 100000000"},
      {"not JSON", safetensors("{\"w\":", 0), "header is not valid JSON"},
      {"not an object", safetensors("[1,2]", 0), "does not start with '{'"},
      {"entry not an object", safetensors(R"({"w":3})", 0), "tensor 'w': is number, not an object"},
      {"no dtype", safetensors(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), "tensor 'w': no \"dtype\""},
      {"unknown dtype", safetensors(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8),
       "tensor 'w': unknown dtype 'F33'"},
      {"negative shape", safetensors(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       "shape [-2] holds -2, not a non-negative integer"},
      {"float shape", safetensors(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
       "not a non-negative integer"},
      {"size mismatch", safetensors(R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,96]}})", 96),
       "tensor 'w': data_offsets [0, 96] hold 96 bytes, but shape [4,4] of F32 needs 64"},
      {"overflowing shape",
       safetensors(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
       "has more bytes than any file"},
      {"offsets reversed", safetensors(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", 8),
       "end before they begin"},
      {"three offsets", safetensors(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 8),
       "is not [begin, end]"},
      {"out of range", safetensors(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 8),
       "lies beyond the data section's 8 bytes"},
      {"overlap",
       safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "tensor 'b' [4, 12] overlaps tensor 'a' [0, 8]"},
      {"gap",
       safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
       "leaves a gap of 4 bytes"},
      {"trailing bytes", safetensors(ok, 12), "4 bytes after the last tensor's data"},
      {"duplicate name",
       safetensors(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       "name 'w' appears twice"},
      {"deep nesting", safetensors("{\"w\":{\"shape\":[[[[[[1]]]]]]}}", 0), "nested deeper"},
      {"metadata not strings", safetensors(R"({"__metadata__":{"a":1}})", 0),
       "__metadata__ entry 'a' is number, not a string"},
      {"values not ours",
       safetensors(R"({"__metadata__":{"c10dtest.values":"{\"k\":{\"int\":\"x\"}}"}})", 0),
       "the value of k is not one c10dtest wrote"},
      {"legacy torch.save", std::string("\x80\x02\x8a\x0a", 4) + std::string(20, '\0'),
       "format before PyTorch 1.6"},
      {"control characters in a name", safetensors("{\"a\\u0001\":3}", 0), "tensor 'a\\x01'"},
  };
  for (const auto& c : cases) {
    put(path("bad.safetensors"), c.bytes);
    const std::string e = read_error(path("bad.safetensors"));
    EXPECT_NE(e.find(path("bad.safetensors") + ": "), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.expected), std::string::npos) << c.name << ": " << e;
  }
  // Values nested far deeper than any c10dtest writes, in the metadata's JSON.
  {
    // The values' JSON text, escaped as a string inside the header's JSON.
    std::string v = "{\\\"k\\\":";
    for (int i = 0; i < 200'000; ++i) v += "{\\\"list\\\":[";
    v += "{\\\"int\\\":1}";
    for (int i = 0; i < 200'000; ++i) v += "]}";
    v += "}";
    put(path("deep.safetensors"),
        safetensors("{\"__metadata__\":{\"c10dtest.values\":\"" + v + "\"}}", 0));
    EXPECT_NE(read_error(path("deep.safetensors")).find("the value of k is not one c10dtest wrote"),
              std::string::npos);
  }
  EXPECT_NE(read_error(path("missing")).find("missing: cannot open: No such file"), std::string::npos);
  EXPECT_NE(read_error(dir_.string()).find("not a regular file"), std::string::npos);
}

TEST_F(FileTest, UnsupportedValuesAreNamedWhenWriting) {
  StateDict sd;
  sd.insert("c128", at::randn({2}, at::kComplexDouble));
  try {
    c10dtest::write_state_dict(path("c.safetensors"), sd);
    ADD_FAILURE() << "no error";
  } catch (const FileFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("c128: dtype ComplexDouble has no safetensors type"),
              std::string::npos)
        << e.what();
  }
  c10dtest::WriteFileOptions o;
  o.metadata = {{"c10dtest.values", "x"}};
  StateDict plain;
  plain.insert("w", at::ones({1}));
  EXPECT_THROW(c10dtest::write_state_dict(path("m.safetensors"), plain, FileFormat::kAuto, o),
               FileFormatError);
}

// ----------------------------------------------------------------------------------------------
// Per-rank files of a sharded dict that do not make a whole (read_sharded_state_dict). Random
// layouts written by real ranks are in sharded_file_test (state_dict_test).

struct F32 {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// A safetensors file of float tensors with c10dtest's metadata entries as given (JSON texts).
std::string pieces_file(const std::vector<F32>& tensors, const std::string& shards,
                        const std::string& values = "") {
  std::string header = "{\"__metadata__\":{";
  if (!shards.empty()) header += quoted("c10dtest.shards") + ":" + quoted(shards);
  if (!values.empty()) {
    header += (shards.empty() ? "" : ",") + quoted("c10dtest.values") + ":" + quoted(values);
  }
  header += "}";
  std::string data;
  for (const auto& t : tensors) {
    std::string shape;
    for (auto n : t.shape) shape += (shape.empty() ? "" : ",") + std::to_string(n);
    const std::size_t bytes = t.values.size() * sizeof(float);
    header += "," + quoted(t.name) + ":{\"dtype\":\"F32\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + bytes) + "]}";
    data.append(reinterpret_cast<const char*>(t.values.data()), bytes);
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string piece_of_w(std::int64_t offset, const std::string& global = "[4]") {
  return R"({"w":{"key":"w","global_shape":)" + global + R"(,"offsets":[)" +
         std::to_string(offset) + "]}}";
}

TEST_F(FileTest, ShardedFilesThatMakeNoWholeAreNamed) {
  put(path("a"), pieces_file({{"w", {2}, {1, 2}}}, piece_of_w(0)));
  put(path("b"), pieces_file({{"w", {2}, {3, 4}}}, piece_of_w(2)));
  put(path("a2"), pieces_file({{"w", {2}, {1, 2}}}, piece_of_w(0)));
  const at::Tensor whole = at::arange(1, 5, at::kFloat);
  for (const auto& files : std::vector<std::vector<std::string>>{
           {path("a"), path("b")}, {path("b"), path("a")}, {path("a"), path("a2"), path("b")}}) {
    const StateDict sd = c10dtest::read_sharded_state_dict(files);
    ASSERT_EQ(sd.keys(), std::vector<std::string>{"w"});
    EXPECT_TRUE(at::equal(sd.at("w").as<at::Tensor>(), whole));
  }
  // Pieces that overlap in part agree where they meet.
  put(path("o1"), pieces_file({{"w", {3}, {1, 2, 3}}}, piece_of_w(0)));
  put(path("o2"), pieces_file({{"w", {2}, {3, 4}}}, piece_of_w(2)));
  put(path("o3"), pieces_file({{"w", {2}, {9, 4}}}, piece_of_w(2)));
  EXPECT_TRUE(at::equal(
      c10dtest::read_sharded_state_dict({path("o1"), path("o2")}).at("w").as<at::Tensor>(), whole));
  put(path("c"), pieces_file({{"w", {2}, {1, 9}}}, piece_of_w(0)));
  put(path("d"), pieces_file({{"w", {2}, {1, 2}}}, piece_of_w(3)));
  put(path("e"), pieces_file({{"w", {2}, {1, 2}}}, piece_of_w(2, "[5]")));
  put(path("f"), pieces_file({{"w", {2}, {1, 2}}}, piece_of_w(0, "[4, 1]")));
  put(path("g"), pieces_file({{"w", {4}, {1, 2, 3, 4}}}, ""));
  put(path("p1"), pieces_file({{"p", {2}, {1, 2}}}, ""));
  put(path("p2"), pieces_file({{"p", {2}, {1, 3}}}, ""));
  put(path("v1"), pieces_file({}, "", R"({"lr":{"float":0.1}})"));
  put(path("v2"), pieces_file({}, "", R"({"lr":{"float":0.2}})"));
  put(path("json"), pieces_file({{"w", {2}, {1, 2}}}, "{"));
  put(path("nokey"), pieces_file({{"w", {2}, {1, 2}}}, R"({"w":{"global_shape":[4],"offsets":[0]}})"));
  put(path("neg"), pieces_file({{"w", {2}, {1, 2}}}, R"({"w":{"key":"w","global_shape":[4],"offsets":[-1]}})"));
  put(path("names"), pieces_file({{"w", {2}, {1, 2}}}, R"({"x":{"key":"x","global_shape":[4],"offsets":[0]}})"));
  put(path("huge"), pieces_file({{"w", {2}, {1, 2}}}, piece_of_w(0, "[1000000000000]")));
  StateDict plain;
  plain.insert("w", at::ones({2}));
  c10dtest::write_state_dict(path("t.pt"), plain);
  struct Case {
    std::vector<std::string> files;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{path("a")}, "'w' [4]: 2 of 4 elements are in none of the 1 files (the first at [2]): a "
                    "rank's file is missing?"},
      {{path("a"), path("c"), path("b")},
       path("c") + ": 'w': the piece 'w' of shape [2] at offsets [0] differs from the "
                   "overlapping piece in " + path("a") + " (offsets [0], shape [2]): replicas"},
      {{path("o1"), path("o3")},
       path("o3") + ": 'w': the piece 'w' of shape [2] at offsets [2] differs from the "
                    "overlapping piece in " + path("o1") + " (offsets [0], shape [3])"},
      {{path("d")}, path("d") + ": 'w': the piece 'w' of shape [2] at offsets [3] lies outside "
                                "the global shape [4]"},
      {{path("a"), path("e")}, "is a piece of a Float [5], but " + path("a") +
                                   " has pieces of a Float [4]"},
      {{path("f")}, "does not fit a global shape of 2 dims [4, 1]"},
      {{path("a"), path("g")}, path("g") + ": 'w' is written whole here and in pieces in " +
                                   path("a")},
      {{path("g"), path("a")}, path("a") + ": 'w' is written in pieces here and whole in " +
                                   path("g")},
      {{path("p1"), path("p2")}, "'p' differs between the files: Tensor[2] Float cpu in " +
                                     path("p1") + ", Tensor[2] Float cpu in " + path("p2")},
      {{path("v1"), path("v2")}, "'lr' differs between the files: "},
      {{path("json")}, path("json") + ": c10dtest.shards is not valid JSON"},
      {{path("nokey")}, "c10dtest.shards: the entry of 'w' is not one c10dtest wrote"},
      {{path("neg")}, "the entry of 'w': \"offsets\" holds -1, not a non-negative integer"},
      {{path("names")}, "c10dtest.shards names 'x', which is no tensor of the file"},
      {{path("huge")}, "needs 4000000000000 bytes, more than all 1 files hold"},
      {{path("t.pt")}, path("t.pt") + ": a torch.save file holds no per-rank pieces"},
      {{}, "read_sharded_state_dict: no files given"},
      {{path("a"), path("nothing")}, path("nothing") + ": cannot open"},
  };
  for (const auto& c : cases) {
    std::string got = "no error";
    try {
      c10dtest::read_sharded_state_dict(c.files);
    } catch (const FileFormatError& e) {
      got = e.what();
    }
    EXPECT_NE(got.find(c.expected), std::string::npos) << "expected: " << c.expected
                                                       << "\ngot:      " << got;
  }
}

// ----------------------------------------------------------------------------------------------
// Malformed torch.save archives.

// A zip archive as torch.save writes it, holding `pickle` as data.pkl and `records`.
std::string archive(const std::string& pickle,
                    const std::vector<std::pair<std::string, std::string>>& records = {}) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter w([&out](const void* d, std::size_t n) {
    out.append(static_cast<const char*>(d), n);
    return n;
  });
  w.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [name, bytes] : records) w.writeRecord(name, bytes.data(), bytes.size());
  w.writeEndOfFile();
  return out;
}

TEST_F(FileTest, MalformedTorchSaveAreNamed) {
  using namespace std::string_literals;
  const std::string head = "\x80\x02}(X\x01\x00\x00\x00k"s;
  // ('storage', torch.FloatStorage, '0', 'cpu', numel 4) as a persistent id, then
  // _rebuild_tensor_v2(storage, offset, (size), (stride), False, OrderedDict()).
  auto tensor = [](const std::string& size, const std::string& stride, char offset) {
    return "ctorch._utils\n_rebuild_tensor_v2\n("s + "(X\x07\x00\x00\x00storage"s +
           "ctorch\nFloatStorage\n"s + "X\x01\x00\x00\x00"s + "0"s + "X\x03\x00\x00\x00"s +
           "cpu"s + "K\x04tQ"s + "K"s + std::string(1, offset) + "("s + size + "t("s + stride +
           "t\x89"s + "ccollections\nOrderedDict\n)RtR"s;
  };
  const std::string floats(16, '\0');
  struct Case {
    const char* name;
    std::string bytes;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"not a zip", std::string("PK\x03\x04", 4) + "garbage", "not a torch.save archive"},
      {"no data.pkl", [] {
         std::string out;
         caffe2::serialize::PyTorchStreamWriter w([&out](const void* d, std::size_t n) {
           out.append(static_cast<const char*>(d), n);
           return n;
         });
         w.writeRecord("other", "x", 1);
         w.writeEndOfFile();
         return out;
       }(), "without data.pkl"},
      {"unknown class", archive(head + "cbuiltins\nset\n)Ru."s), "'k' holds an object of builtins.set"},
      {"torch.device", archive(head + "ctorch\ndevice\nX\x03\x00\x00\x00"s + "cpu\x85Ru."s), "'k' holds a torch.device"},
      {"not a dict", archive("\x80\x02]."s), "not a dict"},
      {"tuple key", archive("\x80\x02}(K\x01K\x02\x86K\x03u."s), "is a tuple, not a string or an integer"},
      {"ends early", archive(head), "the pickle ends early"},
      {"unknown opcode", archive("\x80\x02\xff"s), "pickle opcode 0xff at byte 2"},
      {"missing storage", archive(head + tensor("K\x04"s, "K\x01"s, 0) + "u."s), "storage 0 has no record data/0"},
      {"short storage", archive(head + tensor("K\x04"s, "K\x01"s, 0) + "u."s, {{"data/0", std::string(8, '\0')}}),
       "storage 0 holds 8 bytes, fewer than its 4 elements of Float need"},
      {"view beyond storage", archive(head + tensor("K\x04"s, "K\x02"s, 0) + "u."s, {{"data/0", floats}}),
       "reaches beyond its storage of 4 elements"},
      {"negative stride", archive(head + tensor("K\x02"s, "J\xff\xff\xff\xff"s, 0) + "u."s, {{"data/0", floats}}),
       "negative size or stride"},
      {"memo never stored", archive("\x80\x02h\x05."s), "reads memo 5, never stored"},
      {"big-endian", archive("\x80\x02}."s, {{"byteorder", "big"}}), "byte order 'big'"},
      {"unbalanced", archive("\x80\x02}}."s), "unbalanced pickle"},
  };
  for (const auto& c : cases) {
    put(path("bad.pt"), c.bytes);
    const std::string e = read_error(path("bad.pt"));
    EXPECT_NE(e.find(path("bad.pt") + ": "), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.expected), std::string::npos) << c.name << ": " << e;
  }
  // A million nested lists: refused by depth, and freed without recursion (no stack overflow).
  {
    std::string deep = "\x80\x02}(X\x01\x00\x00\x00k"s;
    const int levels = 1'000'000;
    deep += std::string(levels, ']');
    for (int i = 1; i < levels; ++i) deep += 'a';
    deep += "u."s;
    put(path("deep.pt"), archive(deep));
    EXPECT_NE(read_error(path("deep.pt")).find("nested more than 100 levels deep"), std::string::npos);
  }
  // A storage record whose central-directory entry says "encrypted": LibTorch's reader throws
  // its own error while the record is located; it comes out as this file's FileFormatError
  // (found by the fuzz test with C10DTEST_FUZZ_SEED=7).
  {
    std::string a = archive(head + tensor("K\x04"s, "K\x01"s, 0) + "u."s, {{"data/0", floats}});
    const std::string sig("PK\x01\x02", 4);
    int flagged = 0;
    for (auto at = a.find(sig); at != std::string::npos; at = a.find(sig, at + 4)) {
      const std::size_t len = static_cast<unsigned char>(a[at + 28]) |
                              static_cast<std::size_t>(static_cast<unsigned char>(a[at + 29])) << 8;
      const std::string name = a.substr(at + 46, len);
      if (name.size() >= 7 && name.compare(name.size() - 7, 7, "/data/0") == 0) {
        a[at + 8] = static_cast<char>(a[at + 8] | 1);
        ++flagged;
      }
    }
    ASSERT_EQ(flagged, 1);
    put(path("enc.pt"), a);
    const std::string e = read_error(path("enc.pt"));
    EXPECT_NE(e.find(path("enc.pt") + ": data.pkl: cannot read record data/0"), std::string::npos) << e;
  }
  // The hand-made tensor pickle is right when its storage is there.
  put(path("ok.pt"), archive(head + tensor("K\x02K\x02"s, "K\x02K\x01"s, 0) + "u."s, {{"data/0", floats}}));
  const StateDict ok = c10dtest::read_state_dict(path("ok.pt"));
  EXPECT_EQ(ok.at("k").as<at::Tensor>().sizes(), (c10::IntArrayRef{2, 2}));
}

// ----------------------------------------------------------------------------------------------
// Seeded fuzzing: every mutant either reads (and every tensor's bytes can be touched) or is a
// FileFormatError. Any other exception, a crash or a sanitizer report fails.

std::size_t fuzz_iterations() {
  const char* e = std::getenv("C10DTEST_FUZZ_ITERATIONS");
  return e ? std::strtoul(e, nullptr, 10) : 10000;
}

// C10DTEST_FUZZ_SEED (default 0) is added to each fuzz test's own seed.
std::uint64_t fuzz_seed(std::uint64_t base) {
  const char* e = std::getenv("C10DTEST_FUZZ_SEED");
  return base + (e ? std::strtoull(e, nullptr, 10) : 0);
}

std::string mutate(std::string s, std::mt19937_64& rng, std::size_t protect = 0) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  static const std::vector<std::string> tokens = {
      "{", "}", "[", "]", ",", ":", "\"", "-1", "0", "18446744073709551615", "1e400", "null",
      "\"F32\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"", "\\u0000", "true"};
  for (int i = 0; i < edits && s.size() > protect; ++i) {
    const std::size_t at = protect + rng() % (s.size() - protect);
    switch (rng() % 6) {
      case 0: s[at] = static_cast<char>(rng()); break;
      case 1: s.erase(at, 1 + rng() % 8); break;
      case 2: s.insert(at, tokens[rng() % tokens.size()]); break;
      case 3: s.resize(at); break;
      case 4: s[at] ^= static_cast<char>(1 << (rng() % 8)); break;
      default: s.insert(at, s.substr(rng() % s.size(), rng() % 16)); break;
    }
  }
  return s;
}

void touch_all(const StateDict& sd) {
  for (std::size_t i = 0; i < sd.size(); ++i) {
    const StateValue& v = sd.value(i);
    if (v.is<at::Tensor>() && v.as<at::Tensor>().numel() > 0) {
      (void)v.as<at::Tensor>().clone();  // reads every byte
    } else if (v.is<StateDict>()) {
      touch_all(v.as<StateDict>());
    }
  }
}

TEST_F(FileTest, FuzzedSafetensorsHeadersReadOrFailCleanly) {
  StateDict sd = all_kinds(true);
  c10dtest::write_state_dict(path("seed.safetensors"), sd);
  const std::string seed = bytes_of(path("seed.safetensors"));
  std::mt19937_64 rng(fuzz_seed(20261202));
  std::size_t read = 0, refused = 0;
  const std::size_t n = fuzz_iterations();
  for (std::size_t i = 0; i < n; ++i) {
    std::string m = mutate(seed, rng);
    // Half of the mutants keep a consistent length prefix, so that the JSON itself is fuzzed.
    if (i % 2 == 0 && m.size() >= 8) {
      std::uint64_t len = 0;
      for (int b = 7; b >= 0; --b) len = (len << 8) | static_cast<unsigned char>(seed[b]);
      const std::int64_t grown = static_cast<std::int64_t>(m.size()) - static_cast<std::int64_t>(seed.size());
      len = static_cast<std::uint64_t>(static_cast<std::int64_t>(len) + grown);
      for (int b = 0; b < 8; ++b) m[b] = static_cast<char>((len >> (8 * b)) & 0xff);
    }
    put(path("m.safetensors"), m);
    try {
      touch_all(c10dtest::read_state_dict(path("m.safetensors")));
      ++read;
    } catch (const FileFormatError&) {
      ++refused;
    } catch (const std::exception& e) {
      FAIL() << "mutant " << i << " threw " << e.what();
    }
  }
  EXPECT_EQ(read + refused, n);
  EXPECT_GT(refused, n / 2) << "the mutations barely changed anything";
  std::cout << "fuzzed " << n << " safetensors files: " << read << " read, " << refused
            << " refused\n";
}

TEST_F(FileTest, FuzzedTorchSavePicklesReadOrFailCleanly) {
  const StateDict sd = all_kinds(true);
  c10dtest::write_state_dict(path("seed.pt"), sd);
  // Mutate the pickle inside a valid archive (mutating the zip mostly fails its checks).
  caffe2::serialize::PyTorchStreamReader reader(path("seed.pt"));
  auto [data, size] = reader.getRecord("data.pkl");
  const std::string pickle(static_cast<const char*>(data.get()), size);
  std::vector<std::pair<std::string, std::string>> records;
  for (const auto& r : reader.getAllRecords()) {
    if (r.rfind("data/", 0) == 0) {
      auto [d, s] = reader.getRecord(r);
      records.emplace_back(r, std::string(static_cast<const char*>(d.get()), s));
    }
  }
  std::mt19937_64 rng(fuzz_seed(1202));
  std::size_t read = 0, refused = 0;
  const std::size_t n = fuzz_iterations() / 3;
  for (std::size_t i = 0; i < n; ++i) {
    put(path("m.pt"), archive(mutate(pickle, rng, 2), records));
    try {
      touch_all(c10dtest::read_state_dict(path("m.pt")));
      ++read;
    } catch (const FileFormatError&) {
      ++refused;
    } catch (const std::exception& e) {
      FAIL() << "mutant " << i << " threw " << e.what();
    }
  }
  // And raw bytes of the archive: anywhere, or in its last 2 KiB (the central directory, which
  // the in-place reading of stored records follows).
  const std::string whole = bytes_of(path("seed.pt"));
  ASSERT_GT(whole.size(), 4096u);
  for (std::size_t i = 0; i < n / 2; ++i) {
    put(path("m.pt"), mutate(whole, rng, i % 2 ? whole.size() - 2048 : 4));
    try {
      touch_all(c10dtest::read_state_dict(path("m.pt"), {FileFormat::kTorchSave}));
    } catch (const FileFormatError&) {
    } catch (const std::exception& e) {
      FAIL() << "archive mutant " << i << " threw " << e.what();
    }
  }
  EXPECT_GT(refused, n / 4);
  std::cout << "fuzzed " << n << " torch.save pickles: " << read << " read, " << refused
            << " refused\n";
}

}  // namespace
