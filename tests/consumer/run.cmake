# Installs this build into a scratch prefix, then configures, builds and runs a separate project
# that finds it with find_package(gradproof). Called by ctest with SOURCE_DIR, BINARY_DIR,
# GENERATOR and SANITIZE defined. A sanitized static library needs a sanitized consumer.
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
