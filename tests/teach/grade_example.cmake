# The site's worked example of `gradproof grade` (docs/teaching.md): grades the page's student
# solution and compares the output with the page's copy byte for byte (cmake -P).
#   -DCLI=<gradproof> -DWORK=<workspace> -DSOLUTION=<the student's terms.py> -DEXPECTED=<the .out>
# To refresh the page after a deliberate change of the output, copy the "got" file this prints.
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${CLI}" exercise bn "${WORK}" --lang python RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "exercise failed with ${rc}")
endif()
configure_file("${SOLUTION}" "${WORK}/terms.py" COPYONLY)
execute_process(COMMAND "${CLI}" grade "${WORK}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
file(WRITE "${WORK}/got.out" "${out}")
file(READ "${EXPECTED}" expected)
if(NOT rc EQUAL 1)
  message(FATAL_ERROR "exit status ${rc}, expected 1\n${out}\n${err}")
endif()
if(NOT out STREQUAL expected)
  message(FATAL_ERROR "the output differs from ${EXPECTED} (the site page's copy); got ${WORK}/got.out:\n${out}")
endif()
message(STATUS "the example's output is the page's, byte for byte")
