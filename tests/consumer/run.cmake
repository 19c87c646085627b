# Installs this build into a scratch prefix, then configures, builds and runs a separate project
# that finds it with find_package(gradproof). Called by ctest with SOURCE_DIR, BINARY_DIR,
# GENERATOR and SANITIZE defined; with PYTHON (the interpreter) and PYTHON_DIR (the module's
# directory under the prefix), it also imports the installed Python module and runs one op and
# one check with it (PYTHON_PRELOAD: the ASan runtime a sanitized module needs loaded first). A sanitized static library needs a sanitized consumer.
set(prefix "${BINARY_DIR}/consumer/prefix")
set(build "${BINARY_DIR}/consumer/build")
file(REMOVE_RECURSE "${BINARY_DIR}/consumer")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "consumer test: '${cmd}' failed with ${rc}")
  endif()
endfunction()

run(${CMAKE_COMMAND} --install "${BINARY_DIR}" --prefix "${prefix}")
set(flags "")
if(SANITIZE)
  set(flags "-fsanitize=address,undefined")
endif()
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/consumer/project" -B "${build}" -G "${GENERATOR}"
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS=${flags}"
    "-DCMAKE_EXE_LINKER_FLAGS=${flags}")
run(${CMAKE_COMMAND} --build "${build}")
run("${build}/consumer")

if(PYTHON)
  set(env PYTHONPATH=${prefix}/${PYTHON_DIR} PYTHONDONTWRITEBYTECODE=1)
  if(PYTHON_PRELOAD)
    list(APPEND env LD_PRELOAD=${PYTHON_PRELOAD} ASAN_OPTIONS=detect_leaks=0)
  endif()
  # The installed module, not the build tree's: its path must be under the prefix.
  run(${CMAKE_COMMAND} -E env ${env} ${PYTHON} -c [=[
import sys, numpy as np, gradproof
assert gradproof.__file__.startswith(sys.argv[1]), gradproof.__file__
x = np.linspace(-1, 1, 24).reshape(2, 3, 4) ** 3
dy = np.cos(np.arange(24.0)).reshape(x.shape)
y, c = gradproof.layer_norm_forward(x, 4)
r = gradproof.check("ln", x=x, dy=dy, dx=gradproof.layer_norm_backward(dy, c).dx, normalized_shape=4)
assert r.passed, str(r)
print("installed module", gradproof.__file__, "passes check ln")
]=] ${prefix})
endif()
