# Runs the gradproof command once and checks its exit status and output (cmake -P).
#
#   -DCLI=<path of the gradproof binary>
#   -DARGS=<arguments, separated by |>         (| rather than ;, which add_test would split on)
#   -DRC=<expected exit status>
#   -DOUT=<regex stdout must match>            -DNOT_OUT=<regex stdout must not match>
#   -DERR=<regex stderr must match>            -DNOT_ERR=<regex stderr must not match>
#   -DSTDOUT_FILE=<file stdout goes to>        (e.g. /dev/full; OUT/NOT_OUT then unused)
#   -DWORK_DIR=<directory, created empty>      the command runs there
#   -DPARTS=<directory>                         created with one result part holding one passing row
#   -DFILE=<path>  -DFILE_HAS=<regex>           a file the command must have written, and its content
cmake_minimum_required(VERSION 3.25)

foreach(required CLI RC)
  if(NOT DEFINED ${required})
    message(FATAL_ERROR "run.cmake: -D${required}=... is required")
  endif()
endforeach()

string(REPLACE "|" ";" args "${ARGS}")
set(dir "${CMAKE_CURRENT_BINARY_DIR}")
if(DEFINED WORK_DIR)
  file(REMOVE_RECURSE "${WORK_DIR}")
  file(MAKE_DIRECTORY "${WORK_DIR}")
  set(dir "${WORK_DIR}")
endif()
if(DEFINED PARTS)
  file(REMOVE_RECURSE "${PARTS}")
  file(WRITE "${PARTS}/suite.jsonl"
       "R {\"formula\":\"bn.dx\",\"check\":\"cli/collect\",\"passed\":true}\n")
endif()
if(DEFINED FILE)
  file(REMOVE "${FILE}")
endif()

if(DEFINED STDOUT_FILE)
  execute_process(COMMAND "${CLI}" ${args} WORKING_DIRECTORY "${dir}" RESULT_VARIABLE rc
                  OUTPUT_FILE "${STDOUT_FILE}" ERROR_VARIABLE err)
  set(out "")
else()
  execute_process(COMMAND "${CLI}" ${args} WORKING_DIRECTORY "${dir}" RESULT_VARIABLE rc
                  OUTPUT_VARIABLE out ERROR_VARIABLE err)
endif()

set(failures "")
if(NOT rc STREQUAL RC)
  string(APPEND failures "exit status ${rc}, expected ${RC}\n")
endif()
if(DEFINED OUT AND NOT out MATCHES "${OUT}")
  string(APPEND failures "stdout does not match '${OUT}'\n")
endif()
if(DEFINED NOT_OUT AND out MATCHES "${NOT_OUT}")
  string(APPEND failures "stdout matches '${NOT_OUT}', which it must not\n")
endif()
if(DEFINED ERR AND NOT err MATCHES "${ERR}")
  string(APPEND failures "stderr does not match '${ERR}'\n")
endif()
if(DEFINED NOT_ERR AND err MATCHES "${NOT_ERR}")
  string(APPEND failures "stderr matches '${NOT_ERR}', which it must not\n")
endif()
if(DEFINED FILE)
  if(NOT EXISTS "${FILE}")
    string(APPEND failures "${FILE} was not written\n")
  elseif(DEFINED FILE_HAS)
    file(READ "${FILE}" content)
    if(NOT content MATCHES "${FILE_HAS}")
      string(APPEND failures "${FILE} does not match '${FILE_HAS}'\n")
    endif()
  endif()
endif()

if(failures)
  message(FATAL_ERROR "gradproof ${args} (in ${dir}):\n${failures}--- stdout ---\n${out}\n--- stderr ---\n${err}")
endif()
message(STATUS "gradproof ${args}: exit status ${rc} as expected")
