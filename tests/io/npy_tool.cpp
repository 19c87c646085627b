// The .npy reader and writer from the command line, for tests/io/npy_numpy.py (numpy's files read
// here, and ours read by numpy):
//   npy_tool dump FILE                                prints "dtype order shape" then the values
//                                                     in C order, one per line (%.17g)
//   npy_tool write FILE DTYPE c|f D0,D1,... V...      writes the values (C order) as DTYPE
#include "gradproof/io/npy.hpp"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

using namespace gradproof;

int main(int argc, char** argv) try {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "dump" && argc == 3) {
    const io::NpyArray a = io::read_npy(argv[2]);
    std::printf("%s %s %s\n", io::name(a.dtype), a.fortran_order ? "f" : "c", to_string(a.values.shape()).c_str());
    for (Index i = 0; i < a.values.size(); ++i) std::printf("%.17g\n", a.values[i]);
    return 0;
  }
  if (cmd == "write" && argc >= 6) {
    const std::string d = argv[3];
    io::NpyDtype dtype{};
    bool found = false;
    for (auto t : {io::NpyDtype::float16, io::NpyDtype::bfloat16, io::NpyDtype::float32, io::NpyDtype::float64,
                   io::NpyDtype::int32, io::NpyDtype::int64})
      if (d == io::name(t)) dtype = t, found = true;
    if (!found) throw InvalidArgument("unknown dtype " + d);
    Shape shape;
    std::stringstream dims(argv[5]);
    for (std::string s; std::getline(dims, s, ',');)
      if (!s.empty()) shape.push_back(std::stoll(s));
    TensorD t(shape);
    if (argc - 6 != t.size()) throw InvalidArgument("wrong number of values");
    for (Index i = 0; i < t.size(); ++i) t[i] = std::strtod(argv[6 + i], nullptr);
    io::write_npy(argv[2], t, dtype, std::string(argv[4]) == "f");
    return 0;
  }
  std::cerr << "usage: npy_tool dump FILE | npy_tool write FILE DTYPE c|f D0,D1,... V...\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "npy_tool: " << e.what() << '\n';
  return 1;
}
