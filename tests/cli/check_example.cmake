# Runs the site's worked example of `gradproof check` and compares its output with the page's copy
# byte for byte (cmake -P): -DCLI=<gradproof> -DDIR=<the arrays> -DEXPECTED=<docs/examples/*.out>.
# To refresh the page after a deliberate change of the output, copy the "got" file this prints.
execute_process(COMMAND "${CLI}" check bn --x x.npy --dy dy.npy --gamma gamma.npy --beta beta.npy
                        --dx dx.npy --dgamma dgamma.npy --dbeta dbeta.npy
                WORKING_DIRECTORY "${DIR}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
file(READ "${EXPECTED}" expected)
file(WRITE "${DIR}/got.out" "${out}")
if(NOT rc EQUAL 1)
  message(FATAL_ERROR "exit status ${rc}, expected 1\n${out}\n${err}")
endif()
if(NOT out STREQUAL expected)
  message(FATAL_ERROR "the output differs from ${EXPECTED} (the site page's copy); got ${DIR}/got.out:\n${out}")
endif()
message(STATUS "the example's output is the page's, byte for byte")
