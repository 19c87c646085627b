// gradproof_bench: times our staged and fused kernels next to libtorch and oneDNN on the same
// inputs, in one process, with the machine's measured memory bandwidth as the yardstick.
// Prints a table and writes a JSON file (schema in bench/README.md).
#include "bench.hpp"
#include "harness.hpp"

#include "gradproof/parallel.hpp"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

using namespace gradproof;
using namespace gradproof::bench;

namespace {

// Two profiles. full (./build.sh bench): every shape, every implementation, 1 and 2 threads,
// 25 repetitions. quick (the site build, under a minute): the fused kernels and their peers
// (libtorch, oneDNN) on the shapes the targets use at 2 threads, and the staged rows with the
// fused ones at one small shape on one thread (the staged code is single-threaded and 10-30x
// slower: at the large shapes it dominated the run); 10 repetitions; smaller, shorter probes.
struct Options {
  std::string out = "bench/results.json";
  std::string profile = "full";
  std::vector<int> threads{1, 2};
  int repetitions = 25;
  int layer_repetitions = 10;  // the course layers (issue 12): see --help
  int warmup = 3;
  std::string only;  // run the cases whose "op pass impl" contains this
  bool flush = true;
  Index probe_mib = 256;
  int probe_reps = 20;
};

constexpr int kMinRepetitions = 10;

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: gradproof_bench [--profile full|quick] [--out FILE] [--threads 1,2] [--reps N] [--warmup N]\n"
               "                       [--only TEXT] [--warm] [--probe-mib N]\n"
               "  --profile P    full (default: every shape and implementation, 25 repetitions) or quick\n"
               "                 (the site build's: fused kernels and their peers on the target shapes,\n"
               "                 staged rows at one small shape on one thread, 10 repetitions)\n"
               "  --out FILE     where to write the JSON results (default bench/results.json)\n"
               "  --threads L    comma-separated thread counts (default 1,2)\n"
               "  --reps N       timed repetitions per case, at least 10 (default 25; quick 10)\n"
               "  --warmup N     untimed calls first (default 3; quick 2)\n"
               "  --only TEXT    only the cases whose \"op pass impl\" contains TEXT\n"
               "  --layer-reps N timed repetitions of the course layers' cases (issue 12),\n"
               "                 at least 10 (default 10: libtorch's linear on Debian's\n"
               "                 reference BLAS takes seconds a call)\n"
               "  --warm         do not evict the caches before each repetition\n"
               "  --probe-mib N  size of each array of the start/end bandwidth probe (default 256; quick 64)\n");
  std::exit(code);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; ++i)  // the profile sets defaults that the other flags override
    if (std::string(argv[i]) == "--profile") {
      o.profile = argv[i + 1];
      if (o.profile == "quick") o.repetitions = 10, o.warmup = 2, o.probe_mib = 64, o.probe_reps = 5;
      else if (o.profile != "full") usage(2);
    }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(2);
      return argv[++i];
    };
    if (a == "--profile") value();  // read above
    else if (a == "--out") o.out = value();
    else if (a == "--threads") {
      o.threads.clear();
      std::stringstream list(value());
      for (std::string t; std::getline(list, t, ',');) o.threads.push_back(std::max(1, std::atoi(t.c_str())));
    } else if (a == "--reps") o.repetitions = std::atoi(value().c_str());
    else if (a == "--layer-reps") o.layer_repetitions = std::atoi(value().c_str());
    else if (a == "--warmup") o.warmup = std::atoi(value().c_str());
    else if (a == "--only") o.only = value();
    else if (a == "--warm") o.flush = false;
    else if (a == "--probe-mib") o.probe_mib = std::atol(value().c_str());
    else if (a == "-h" || a == "--help") usage(0);
    else usage(2);
  }
  if (o.repetitions < kMinRepetitions || o.layer_repetitions < kMinRepetitions) {
    std::fprintf(stderr,
                 "gradproof_bench: --reps and --layer-reps must be at least %d (got %d, %d)\n",
                 kMinRepetitions, o.repetitions, o.layer_repetitions);
    std::exit(2);
  }
  return o;
}

struct Row {
  Case c;
  int threads = 0;
  Timing t;
  double gbps = 0, bandwidth = 0, fraction = 0, agreement = -1, extra_ms = -1;
  double gflops = 0;      // rows with flops
  int deterministic = -1;  // rows with a determinism check: 1 identical bits, 0 not
};

// The family of a row: the Performance page has a table per family.
std::string group_of(const std::string& op) {
  const auto& acts = activation_names();
  if (std::find(acts.begin(), acts.end(), op) != acts.end()) return "activations";
  if (op == "softmax" || op == "log_softmax" || op == "cross_entropy") return "softmax";
  if (op == "linear" || op == "embedding") return op;
  return "normalization";
}

// The passes of a course layer's cases.
std::vector<std::string> layer_passes(const std::string& op) {
  if (op == "cross_entropy") return {"forward+backward"};
  if (op == "embedding") return {"backward"};
  return {"forward", "backward"};
}

std::string shape_text(const std::vector<std::int64_t>& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

// ---- The targets of issue 4 -------------------------------------------------------------------
struct Target {
  std::string what;
  double measured = 0, threshold = 0;
  bool at_least = true;  // measured >= threshold (else <=)
  bool met = false;
};

const Row* find_row(const std::vector<Row>& rows, const std::string& op, const std::string& pass,
                    const std::string& impl, const std::vector<std::int64_t>& shape, int threads) {
  for (const Row& r : rows)
    if (r.c.op == op && r.c.pass == pass && r.c.impl == impl && r.c.shape == shape && r.threads == threads) return &r;
  return nullptr;
}

// The targets at 2 threads: fused ≥ 75% of the bandwidth on the benchmark shape of each op;
// faster than libtorch (batch-norm forward by 3×); batch norm at least as fast as oneDNN's
// blocked layout. A target whose rows did not run (a filtered run, no libtorch) is left out.
std::vector<Target> evaluate_targets(const std::vector<Row>& rows) {
  std::vector<Target> out;
  const auto add = [&](std::string what, double measured, double threshold, bool at_least) {
    out.push_back({std::move(what), measured, threshold, at_least,
                   at_least ? measured >= threshold : measured <= threshold});
  };
  const std::vector<std::int64_t> bn{32, 64, 56, 56}, rows_shape{4096, 1024};
  for (const auto& [op, shape] : {std::pair{std::string("batchnorm"), bn}, std::pair{std::string("layernorm"), rows_shape},
                                  std::pair{std::string("rmsnorm"), rows_shape}}) {
    for (const std::string pass : {"forward", "backward"}) {
      const Row* fused = find_row(rows, op, pass, "fused", shape, 2);
      if (!fused) continue;
      const std::string name = op + " " + pass + " " + shape_text(shape);
      add(name + ": fused, fraction of bandwidth", fused->fraction, 0.75, true);
      if (const Row* torch = find_row(rows, op, pass, "libtorch", shape, 2)) {
        const double factor = op == "batchnorm" && pass == "forward" ? 3.0 : 1.0;
        add(name + ": libtorch time / fused time", torch->t.median_ms / fused->t.median_ms, factor, true);
      }
      if (const Row* blocked = find_row(rows, op, pass, "onednn-nchw16c", shape, 2))
        add(name + ": oneDNN nChw16c time / fused time", blocked->t.median_ms / fused->t.median_ms, 1.0, true);
    }
  }
  // Issue 12, at every thread count that ran: activations at >= 80% of the bandwidth, the
  // softmax family at >= 75%, both faster than libtorch; linear at >= 90% of the faster peer's
  // GFLOP/s; embedding backward with identical bits in repeated runs, and faster than libtorch.
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> layers;
  for (const std::string& a : activation_names()) layers.push_back({a, {4096, 4096}});
  for (const char* a : {"softmax", "log_softmax", "cross_entropy"})
    layers.push_back({a, {8192, 4096}});
  layers.push_back({"linear", {4096, 1024}});
  layers.push_back({"embedding", {262144, 256}});
  for (const int t : {1, 2})
    for (const auto& [op, shape] : layers)
      for (const std::string& pass : layer_passes(op)) {
        const Row* fused = find_row(rows, op, pass, "fused", shape, t);
        if (!fused) continue;
        const std::string name = op + " " + pass + " " + shape_text(shape) + ", " +
                                 std::to_string(t) + (t == 1 ? " thread" : " threads");
        const Row* torch = find_row(rows, op, pass, "libtorch", shape, t);
        const std::string g = group_of(op);
        const auto vs_torch = [&] {
          if (torch)
            add(name + ": libtorch time / fused time", torch->t.median_ms / fused->t.median_ms,
                1.0, true);
        };
        if (g == "activations" || g == "softmax") {
          add(name + ": fused, fraction of bandwidth", fused->fraction,
              g == "activations" ? 0.8 : 0.75, true);
          vs_torch();
        } else if (g == "linear") {
          const Row* dnnl = find_row(rows, op, pass, "onednn", shape, t);
          double peer = 0;
          for (const Row* r : {torch, dnnl})
            if (r) peer = std::max(peer, r->gflops);
          if (peer > 0)
            add(name + ": fused GFLOP/s / the faster peer's", fused->gflops / peer, 0.9, true);
        } else {
          if (fused->deterministic >= 0)
            add(name + ": fused, bits identical in 3 runs (1 yes, 0 no)", fused->deterministic,
                1.0, true);
          vs_torch();
        }
      }
  return out;
}

// ---- JSON -------------------------------------------------------------------------------------
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", ch);
      out += buf;
      continue;
    }
    out += ch;
  }
  return out + "\"";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

template <class Reference>
void write_json(const std::string& path, const Options& o, const std::vector<std::pair<std::string, std::string>>& machine,
                const std::vector<Bandwidth>& bw, const Reference& reference, const std::vector<Row>& rows,
                const std::vector<Target>& targets, Index flush_bytes) {
  std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  std::ofstream out(path);
  out << "{\n  \"schema\": 1,\n  \"generated_utc\": " << quoted(utc_now()) << ",\n  \"profile\": {\"name\": "
      << quoted(o.profile) << ", \"what\": "
      << quoted(o.profile == "quick"
                    ? "the site build's quick profile: the fused kernels and their peers (libtorch, oneDNN) on the "
                      "shapes of the targets at the largest thread count, the staged rows with the fused ones at one "
                      "small shape on one thread, 10 repetitions"
                    : "the full profile: every shape and every implementation at every thread count")
      << ", \"other\": "
      << quoted(o.profile == "quick"
                    ? "./build.sh bench runs the full profile (every shape and implementation, 25 repetitions, "
                      "several minutes); GRADPROOF_SKIP_BENCH=1 ./build.sh site then renders its results"
                    : "./build.sh site runs the quick profile (about a minute); ./build.sh bench --profile quick "
                      "runs it alone")
      << "},\n  \"machine\": {";
  for (std::size_t i = 0; i < machine.size(); ++i)
    out << (i ? "," : "") << "\n    " << quoted(machine[i].first) << ": " << quoted(machine[i].second);
  out << "\n  },\n  \"bandwidth\": {";
  for (std::size_t i = 0; i < o.threads.size(); ++i) {
    const int t = o.threads[i];
    out << (i ? ", " : "") << quoted(std::to_string(t) + (t == 1 ? " thread" : " threads")) << ": " << num(reference(t));
  }
  out << "},\n  \"bandwidth_probes\": [";
  for (std::size_t i = 0; i < bw.size(); ++i)
    out << (i ? "," : "") << "\n    {\"when\": " << quoted(bw[i].when) << ", \"threads\": " << bw[i].threads
        << ", \"triad_gbps\": " << num(bw[i].triad)
        << ", \"triad_streaming_gbps\": " << num(bw[i].triad_nt) << ", \"read_gbps\": " << num(bw[i].read)
        << ", \"reference_gbps\": " << num(bw[i].reference()) << "}";
  out << "\n  ],\n  \"method\": {"
      << "\n    \"warmup\": " << o.warmup << ",\n    \"repetitions\": " << o.repetitions
      << ",\n    \"layer_repetitions\": " << o.layer_repetitions
      << ",\n    \"statistic\": \"median, with min and max, of the repetitions\""
      << ",\n    \"allocator\": \"glibc malloc keeps every block in the heap (M_MMAP_THRESHOLD and M_TRIM_THRESHOLD "
         "1 GiB), so the outputs libtorch allocates on every call reuse memory instead of faulting in fresh pages\""
      << ",\n    \"cache\": "
      << quoted(o.flush ? "before every repetition, the triad with streaming stores over three arrays of " +
                              std::to_string(flush_bytes >> 20) +
                              " MiB on every thread: it evicts the caches and measures the bandwidth of that moment"
                        : "not evicted (warm): operands may be in cache")
      << ",\n    \"bytes\": \"minimum traffic: forward 8 B/element (read x, write y), backward 12 B/element "
         "(read x and dy, write dx; the softmax family reads y instead of x); fused "
         "cross-entropy forward+backward 8 B/element (read the logits, write dx); linear: "
         "every operand read once and every output written once; embedding backward: read dy "
         "and the indices, write dW\""
      << ",\n    \"flops\": \"linear: 2 per multiply-add (forward 2NIO + NO for the bias, "
         "backward 4NIO + NO); gflops = flops / median time\""
      << ",\n    \"bandwidth\": "
      << quoted(o.flush ? "fraction_of_bandwidth = gbps / bandwidth_gbps, the median of the triad probes run between "
                          "the row's repetitions; top-level bandwidth: per thread count, the median of its rows' "
                          "bandwidth_gbps; bandwidth_probes: triad, triad with streaming stores and read-sum on " +
                              std::to_string(o.probe_mib) + " MiB arrays, at the start and the end of the run"
                        : "fraction_of_bandwidth = gbps / the best of the start and end probes for the row's threads")
      << "\n  },\n  \"rows\": [";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    out << (i ? "," : "") << "\n    {\"op\": " << quoted(r.c.op) << ", \"pass\": " << quoted(r.c.pass)
        << ", \"impl\": " << quoted(r.c.impl) << ", \"shape\": [";
    for (std::size_t k = 0; k < r.c.shape.size(); ++k) out << (k ? ", " : "") << r.c.shape[k];
    out << "], \"threads\": " << r.threads << ", \"median_ms\": " << num(r.t.median_ms)
        << ", \"min_ms\": " << num(r.t.min_ms) << ", \"max_ms\": " << num(r.t.max_ms) << ", \"gbps\": " << num(r.gbps)
        << ", \"fraction_of_bandwidth\": " << num(r.fraction) << ", \"bandwidth_gbps\": " << num(r.bandwidth)
        << ", \"repetitions\": " << r.t.repetitions
        << ", \"bytes\": " << num(r.c.bytes) << ", \"agreement\": " << (r.agreement >= 0 ? num(r.agreement) : "null");
    if (r.extra_ms >= 0)
      out << ", \"extra_ms\": " << num(r.extra_ms) << ", \"extra_what\": " << quoted(r.c.extra_what);
    if (!r.c.note.empty()) out << ", \"note\": " << quoted(r.c.note);
    out << ", \"group\": " << quoted(r.c.group);
    if (r.c.flops > 0)
      out << ", \"flops\": " << num(r.c.flops) << ", \"gflops\": " << num(r.gflops);
    if (r.deterministic >= 0)
      out << ", \"deterministic\": " << (r.deterministic ? "true" : "false");
    out << "}";
  }
  out << "\n  ],\n  \"targets\": [";
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const Target& t = targets[i];
    out << (i ? "," : "") << "\n    {\"target\": " << quoted(t.what) << ", \"measured\": " << num(t.measured)
        << ", \"threshold\": " << num(t.threshold) << ", \"at_least\": " << (t.at_least ? "true" : "false")
        << ", \"met\": " << (t.met ? "true" : "false") << "}";
  }
  out << "\n  ]\n}\n";
  if (!out) {
    std::fprintf(stderr, "gradproof_bench: could not write %s\n", path.c_str());
    std::exit(1);
  }
}

void print_row_header() {
  std::printf("%-10s %-9s %-15s %-15s %3s %10s %19s %7s %6s %9s\n", "op", "pass", "impl", "shape", "thr",
              "median ms", "min - max ms", "GB/s", "of bw", "agreement");
}

void print_row(const Row& r, bool with_fraction) {
  char range[48], fraction[16];
  std::snprintf(range, sizeof range, "%.3f - %.3f", r.t.min_ms, r.t.max_ms);
  std::snprintf(fraction, sizeof fraction, with_fraction ? "%5.0f%%" : "     -", 100 * r.fraction);
  std::printf("%-10s %-9s %-15s %-15s %3d %10.3f %19s %7.1f %6s %9.1e\n", r.c.op.c_str(), r.c.pass.c_str(),
              r.c.impl.c_str(), shape_text(r.c.shape).c_str(), r.threads, r.t.median_ms, range, r.gbps, fraction,
              r.agreement);
  if (r.extra_ms >= 0) std::printf("%44s + %.3f ms to %s\n", "", r.extra_ms, r.c.extra_what.c_str());
  if (r.c.flops > 0) std::printf("%44s %.1f GFLOP/s\n", "", r.gflops);
  if (r.deterministic >= 0)
    std::printf("%44s bits identical in 3 runs: %s\n", "", r.deterministic ? "yes" : "NO");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  // libtorch allocates its outputs on every call. By default glibc serves blocks above a
  // dynamic threshold with fresh mmaps, whose pages fault on first touch (about 12 µs per 4 KiB
  // page here, which would dominate); keeping every block in the heap lets those outputs reuse
  // memory from one call to the next, as our preallocated outputs do.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  auto machine = describe_machine();
  machine.emplace_back("load average at start", load_average());
  for (const auto& [k, v] : machine) std::printf("%-22s %s\n", (k + ":").c_str(), v.c_str());

  // Before each timed repetition: the triad with streaming stores over three arrays of twice the
  // last-level cache (at least 64 MiB each), which evicts the caches and measures the bandwidth
  // of that moment; a row's fraction divides by the median of the probes between its repetitions.
  const Index probe_bytes = std::max<Index>(2 * last_level_cache_bytes(), Index(64) << 20);
  std::unique_ptr<TriadProbe> probe_between;
  if (o.flush) probe_between = std::make_unique<TriadProbe>(probe_bytes);

  // The probe runs before and after the cases (the machine's bandwidth drifts when other work
  // shares it); each thread count's reference is the best figure of either run.
  std::vector<Bandwidth> probes;
  const auto probe = [&](const char* when) {
    for (int t : o.threads) {
      parallel::set_threads(t);
      probes.push_back(probe_bandwidth(t, o.probe_mib << 20, o.probe_reps));
      probes.back().when = when;
      const Bandwidth& b = probes.back();
      std::printf("bandwidth at %s, %d thread%s: triad %.1f GB/s, triad with streaming stores %.1f GB/s, read %.1f GB/s\n",
                  when, t, t == 1 ? "" : "s", b.triad, b.triad_nt, b.read);
    }
  };
  const auto reference = [&](int threads) {
    double best = 0;
    for (const Bandwidth& b : probes)
      if (b.threads == threads) best = std::max(best, b.reference());
    return best;
  };
  probe("start");

  const bool quick = o.profile == "quick";
  std::printf("profile: %s (%d repetitions, %d warm-up calls)\n", o.profile.c_str(), o.repetitions, o.warmup);
  std::printf("preparing the inputs and the float64 references...\n");
  std::fflush(stdout);
  // A problem, and whether only the staged and fused rows run on it (quick: the small shape).
  struct BnInput { BnPtr p; bool small; };
  struct RowInput { RowNormPtr p; bool small; };
  std::vector<BnInput> bn;
  std::vector<RowInput> rows_norm;
  if (quick) {
    bn.push_back({make_bn_problem({32, 64, 56, 56}), false});
    bn.push_back({make_bn_problem({8, 32, 28, 28}), true});
    for (const char* op : {"layernorm", "rmsnorm"}) {
      rows_norm.push_back({make_rownorm_problem(op, {4096, 1024}), false});
      rows_norm.push_back({make_rownorm_problem(op, {256, 1024}), true});
    }
  } else {
    for (const Shape& s : {Shape{32, 64, 56, 56}, Shape{64, 256, 14, 14}, Shape{8, 32, 128, 128}})
      bn.push_back({make_bn_problem(s), false});
    for (const char* op : {"layernorm", "rmsnorm"}) rows_norm.push_back({make_rownorm_problem(op, {4096, 1024}), false});
  }
  // quick: the staged rows only at the small shape and on the first thread count (1), where the
  // fused rows join them; the fused rows and their peers (libtorch, oneDNN) at the large shapes on
  // the last thread count (2, that of the targets).
  const auto keep = [&](const Case& c, bool small, int threads) {
    if (!o.only.empty() && (c.op + " " + c.pass + " " + c.impl).find(o.only) == std::string::npos) return false;
    if (!quick) return true;
    if (small) return threads == o.threads.front() && (c.impl == "staged" || c.impl == "fused");
    return c.impl != "staged" && threads == o.threads.back();
  };

  // The groups of implementations of one case (one shape, one pass) at thread count t. They own
  // preallocated buffers, so they are made for one thread count at a time, just before it runs.
  struct Group { int threads; std::vector<Case> cases; };
  const auto make_groups = [&](int t) {
    parallel::set_threads(t);
    libtorch_set_threads(t);  // oneDNN sizes its primitives to the threads set when they are made
    std::vector<std::pair<std::vector<Case>, bool>> by_shape;
    for (const BnInput& in : bn) {
      by_shape.push_back({ours_batchnorm(in.p), in.small});
      if (in.small && quick) continue;
      for (auto* make : {&libtorch_batchnorm, &onednn_batchnorm})
        for (auto& c : make(in.p)) by_shape.back().first.push_back(std::move(c));
    }
    for (const RowInput& in : rows_norm) {
      by_shape.push_back({ours_rownorm(in.p), in.small});
      if (in.small && quick) continue;
      for (auto& c : libtorch_rownorm(in.p)) by_shape.back().first.push_back(std::move(c));
    }
    std::vector<Group> groups;
    for (auto& [cases, small] : by_shape)
      for (const std::string pass : {"forward", "backward"}) {
        Group g{t, {}};  // in the order staged, fused, libtorch, oneDNN
        for (Case& c : cases)
          if (c.pass == pass && keep(c, small, t)) g.cases.push_back(std::move(c));
        if (!g.cases.empty()) groups.push_back(std::move(g));
      }
    return groups;
  };
  // How many groups there will be, for the progress lines, from the names alone (no buffers).
  std::size_t total = 0;
  for (const int t : o.threads) {
    const auto count = [&](const std::string& op, bool small, bool peers, bool bn_op) {
      std::vector<std::string> impls{"staged", "fused"};
      if (peers && !libtorch_version().empty()) impls.push_back("libtorch");
      if (peers && bn_op && !onednn_version().empty()) impls.insert(impls.end(), {"onednn-nchw", "onednn-nchw16c"});
      for (const std::string pass : {"forward", "backward"})
        total += std::any_of(impls.begin(), impls.end(), [&](const std::string& impl) {
          Case c;
          c.op = op, c.pass = pass, c.impl = impl;
          return keep(c, small, t);
        });
    };
    for (const BnInput& in : bn) count("batchnorm", in.small, !(in.small && quick), true);
    for (const RowInput& in : rows_norm) count(in.p->op, in.small, !(in.small && quick), false);
  }

  // The course layers (issue 12). full: every case at every thread count. quick: a few cases at
  // the last thread count (2), to keep the site build's run within its minute.
  const std::vector<std::pair<std::string, std::string>> quick_layers{
      {"gelu", "backward"}, {"softmax", "backward"}, {"embedding", "backward"}};
  const auto keep_layer = [&](const Case& c, int threads) {
    const std::string name = c.op + " " + c.pass + " " + c.impl;
    if (!o.only.empty() && name.find(o.only) == std::string::npos) return false;
    if (!quick) return true;
    const auto q = std::find(quick_layers.begin(), quick_layers.end(), std::pair{c.op, c.pass});
    return threads == o.threads.back() && q != quick_layers.end();
  };
  std::vector<std::string> layer_ops = activation_names();
  for (const char* op : {"softmax", "log_softmax", "cross_entropy", "linear", "embedding"})
    layer_ops.push_back(op);
  for (const int t : o.threads)
    for (const std::string& op : layer_ops)
      for (const std::string& pass : layer_passes(op)) {
        Case c;
        c.op = op, c.pass = pass, c.impl = "fused";
        total += keep_layer(c, t);
      }

  std::vector<Row> rows;
  print_row_header();
  std::size_t done = 0;
  int status = 0;
  const auto run_group = [&](Group& g, int repetitions) {
      ++done;
      std::string impls;
      for (const Case& c : g.cases) impls += (impls.empty() ? "" : ", ") + c.impl;
      const Case& first = g.cases.front();
      std::fprintf(stderr, "bench: case %zu of %zu (%zu left): %s %s %s, %d thread%s: %s\n", done, total,
                   total > done ? total - done : 0, first.op.c_str(), first.pass.c_str(), shape_text(first.shape).c_str(),
                   g.threads, g.threads == 1 ? "" : "s", impls.c_str());
      // The implementations of one case take turns, repetition by repetition, so that they all
      // meet the same conditions (the bandwidth of a shared machine drifts within seconds).
      std::vector<std::function<void()>> runs;
      for (const Case& c : g.cases) runs.push_back(c.run);
      const std::vector<Measured> ms =
          time_interleaved(runs, o.warmup, repetitions, probe_between.get());
      for (std::size_t k = 0; k < g.cases.size(); ++k) {
        Case& c = g.cases[k];
        Row r;
        r.threads = g.threads;
        r.t = ms[k].time;
        r.bandwidth = ms[k].probe_gbps;
        r.gbps = c.bytes / (r.t.median_ms * 1e6);
        r.fraction = r.bandwidth > 0 ? r.gbps / r.bandwidth : 0;  // warm runs: set after the end probe
        if (c.agreement) r.agreement = c.agreement();
        if (c.extra) r.extra_ms = time_calls(c.extra, 1, o.repetitions, probe_between.get()).time.median_ms;
        if (c.flops > 0) r.gflops = c.flops / (r.t.median_ms * 1e6);
        if (c.deterministic) {
          r.deterministic = c.deterministic() ? 1 : 0;
          if (!r.deterministic && c.impl == "fused") {
            std::fprintf(stderr,
                         "gradproof_bench: %s %s fused gave different bits in repeated runs\n",
                         c.op.c_str(), c.pass.c_str());
            status = 1;
          }
        }
        if (c.group.empty()) c.group = group_of(c.op);
        // The row keeps the case's description, not its closures: they own the case's buffers
        // and its inputs (gigabytes over the whole run).
        c.run = nullptr, c.agreement = nullptr, c.extra = nullptr, c.deterministic = nullptr;
        r.c = std::move(c);
        print_row(r, r.bandwidth > 0);
        rows.push_back(std::move(r));
      }
      g.cases.clear();  // frees the buffers of the case
  };
  for (const int t : o.threads)
    for (Group& g : make_groups(t)) run_group(g, o.repetitions);
  // One problem at a time, made just before its first case and freed after its last, at every
  // thread count (its float64 references are computed once, on first use).
  for (const std::string& op : layer_ops) {
    LayerPtr p;
    for (const int t : o.threads) {
      std::vector<std::string> passes;
      for (const std::string& pass : layer_passes(op)) {
        Case c;
        c.op = op, c.pass = pass, c.impl = "fused";
        if (keep_layer(c, t)) passes.push_back(pass);
      }
      if (passes.empty()) continue;
      parallel::set_threads(t);
      libtorch_set_threads(t);
      if (!p) p = make_layer_problem(op);
      std::vector<Case> all = ours_layer(p);
      for (auto* make : {&libtorch_layer, &onednn_layer})
        for (auto& c : make(p)) all.push_back(std::move(c));
      for (const std::string& pass : passes) {
        Group g{t, {}};
        for (Case& c : all)
          if (c.pass == pass && keep_layer(c, t)) g.cases.push_back(std::move(c));
        if (!g.cases.empty()) run_group(g, o.layer_repetitions);
      }
    }
  }
  machine.emplace_back("load average at end", load_average());
  std::printf("load average at end:   %s\n", machine.back().second.c_str());
  probe("end");
  if (!o.flush) {  // warm runs have no probe between repetitions: the best probe at start or end
    std::printf("\nfraction of bandwidth (reference: the best probe at start or end for the row's threads):\n");
    print_row_header();
    for (Row& r : rows) {
      r.bandwidth = reference(r.threads);
      r.fraction = r.gbps / r.bandwidth;
      print_row(r, true);
    }
  }
  // The bandwidth of each thread count, for the table and plot: the median of the probes that
  // ran between the repetitions of its rows (the best start/end probe in a warm run).
  const auto summary = [&](int threads) {
    std::vector<double> v;
    for (const Row& r : rows)
      if (r.threads == threads) v.push_back(r.bandwidth);
    if (v.empty()) return reference(threads);
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  const std::vector<Target> targets = evaluate_targets(rows);
  if (!targets.empty()) {
    std::printf("\ntargets (issue 4: 2 threads; issue 12: each thread count; medians):\n");
    for (const Target& t : targets)
      std::printf("  %-4s %-62s measured %.3g, needs %s %.3g\n", t.met ? "met" : "MISS", t.what.c_str(), t.measured,
                  t.at_least ? ">=" : "<=", t.threshold);
  }
  write_json(o.out, o, machine, probes, summary, rows, targets, probe_bytes);
  std::printf("wrote %s (%zu rows)\n", o.out.c_str(), rows.size());
  return status;
}
