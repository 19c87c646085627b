#!/usr/bin/env bash
# gradproof's driver: installs the Debian packages a task needs, then runs the CMake presets.
#
#   ./build.sh test     build and run every test (presets dev and asan) and the install test
#   ./build.sh site     build, test, benchmark (quick profile) and render the site; prints the path
#                       of index.html (non-zero exit if any check failed; the site still shows it).
#                       Stages whose inputs did not change since their last run are not rerun
#                       (their last results and status are reused); GRADPROOF_RERUN=1 reruns all.
#   ./build.sh serve    serve the built site on http://127.0.0.1:8000/ (PORT=... to change)
#   ./build.sh bench [ARGS]   run the benchmarks, full profile (preset bench), write
#                       build/bench/bench/results.json (ARGS go to gradproof_bench, e.g.
#                       --profile quick, --threads 2 --reps 40; see --help)
#   ./build.sh fuzz [SECONDS]  build the libFuzzer harnesses (preset fuzz) and run each for SECONDS
#                       (default 60) from its seed corpus; non-zero exit if any finds a crash
#   ./build.sh deps GROUP...   install the packages of groups in packages.txt (build, site, bench, fuzz)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

log() { printf '\033[1m== [%3ds] %s\033[0m\n' "$SECONDS" "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# ---- Packages ----------------------------------------------------------------------------------
packages_of() {  # the packages of the given groups, from packages.txt
  local group
  for group in "$@"; do
    awk -v g="$group" '$1 == g { print $2 }' "$here/packages.txt"
  done
}

deps() {  # install what is missing of the given groups; does nothing when all are installed
  local missing=() pkg
  for pkg in $(packages_of "$@"); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ---- CMake presets -----------------------------------------------------------------------------
build_preset() {  # configure (when not yet, or the presets changed) and build one preset
  local preset=$1 dir="$here/build/$1"
  log "configure + build ($preset)"
  # Once configured, ninja reruns CMake itself when a CMakeLists.txt changes; the presets it does
  # not watch.
  if [ ! -f "$dir/build.ninja" ] || [ "$here/CMakePresets.json" -nt "$dir/CMakeCache.txt" ]; then
    cmake --preset "$preset" >/dev/null
  fi
  cmake --build --preset "$preset"
}

test_preset() {  # build one preset and run all its tests through ctest
  local preset=$1
  build_preset "$preset"
  log "ctest ($preset)"
  ctest --preset "$preset"
}

# ---- Commands ----------------------------------------------------------------------------------
cmd_test() {
  deps build
  test_preset dev
  test_preset asan
  log "all tests passed (dev, asan); results: build/dev/verification/results.json"
}

# ---- The site (issue 3) ------------------------------------------------------------------------
SITE_PRESET=release            # the build whose test results the site shows
SITE_DIR="$here/build/site"    # doxygen/, doctrees/, html/, generated/, artifacts/
PY=/usr/bin/python3            # Debian's: Sphinx, MyST, Breathe, matplotlib, Selenium

# ---- Stages that are not rerun when their inputs did not change -----------------------------------
# A stage's key is a hash of the contents of the files it depends on; its stamp keeps the key and
# the exit status of its last run, so that a failure stays a failure until the inputs change.
STAMPS="$SITE_DIR/stamps"
key_of() {  # key_of PATH...: hash of the contents of every file under the paths (and the paths' names)
  # The browser test and its fixtures are no input of the tests, the benchmarks or Doxygen.
  (cd "$here" && find "$@" -type f ! -name '*.pyc' ! -path 'tests/site/fixtures/*' \
     ! -path tests/site/browser_test.py -print0 2>/dev/null | sort -z | xargs -0 sha1sum | sha1sum | cut -d' ' -f1)
}
unchanged() {  # unchanged NAME KEY: true when stage NAME last ran with KEY; sets $last_status
  local f="$STAMPS/$1"
  [ "${GRADPROOF_RERUN:-0}" != 1 ] && [ -f "$f" ] && [ "$(cut -d' ' -f1 "$f")" = "$2" ] || return 1
  last_status=$(cut -d' ' -f2 "$f")
}
stamp() { mkdir -p "$STAMPS"; echo "$2 $3" >"$STAMPS/$1"; }  # stamp NAME KEY STATUS

sync_tree() {  # sync_tree SRC DST: copy changed files only, so unchanged ones keep their mtime
  local src=$1 dst=$2 f
  mkdir -p "$dst"
  while IFS= read -r -d '' f; do
    cmp -s "$src/$f" "$dst/$f" || { mkdir -p "$(dirname "$dst/$f")"; cp "$src/$f" "$dst/$f"; }
  done < <(cd "$src" && find . -type f -print0)
  while IFS= read -r -d '' f; do
    [ -e "$src/$f" ] || rm -f "$dst/$f"
  done < <(cd "$dst" && find . -type f -print0)
}

# The benchmarks for the Performance page (GRADPROOF_SKIP_BENCH=1 skips them: the page then shows
# the results file of an earlier run, or says that there is none). Exports GRADPROOF_BENCH, the
# results file that docs/conf.py hands to the {gradproof-bench} directive.
# The site runs the quick profile; its results are kept apart from those of ./build.sh bench (the
# full profile), and when the benchmarked code did not change since the last quick run, that run's
# results are shown again.
SITE_BENCH_PROFILE=quick
site_bench() {
  local out="$here/build/bench/bench/results-$SITE_BENCH_PROFILE.json"
  local key
  key=$(key_of src bench cmake CMakeLists.txt CMakePresets.json)-$SITE_BENCH_PROFILE
  if [ "${GRADPROOF_SKIP_BENCH:-0}" = 1 ]; then
    out="$here/build/bench/bench/results.json"
    log "benchmarks skipped (GRADPROOF_SKIP_BENCH=1): the page shows ${out#$here/} if there is one"
  elif [ -f "$out" ] && unchanged bench "$key"; then
    log "benchmarks not rerun: the benchmarked code is unchanged since ${out#$here/} was written"
  else
    cmd_bench --profile "$SITE_BENCH_PROFILE" --out "$out"
    stamp bench "$key" 0
  fi
  export GRADPROOF_BENCH="$out"
}

# The training run of the training page (derivations/training.md): build/<preset>/gradproof_train
# trains the digits MLP (Adam, SGD and the batch-norm ablation, about 10 s) and writes
# training.json, which docs/conf.py hands to the {gradproof-training} directives
# (GRADPROOF_TRAINING). Not rerun when the code it runs did not change since the file was written.
site_training() {
  local build=$1 out="$1/training/training.json" key
  key=$(key_of src CMakeLists.txt CMakePresets.json cmake)-$SITE_PRESET
  export GRADPROOF_TRAINING="$out"
  if [ -f "$out" ] && unchanged training "$key"; then
    log "training not rerun: the code is unchanged since ${out#$here/} was written (status $last_status)"
    return "$last_status"
  fi
  log "training (digits MLP: Adam, SGD, the batch-norm ablation)"
  mkdir -p "$(dirname "$out")"
  local st=0
  "$build/gradproof_train" --out "$out.new" || st=1
  if [ "$st" = 0 ]; then mv "$out.new" "$out"; else rm -f "$out.new" "$out"; fi
  stamp training "$key" "$st"
  return "$st"
}

# Doxygen's XML and the unit tests of the Sphinx extension: independent of the C++ build, so
# cmd_site runs them in the background while it compiles. Each is skipped when its inputs did not
# change. Messages go to $SITE_DIR/prep.log, shown when cmd_site waits for them.
site_prep() {
  local key
  key=$(key_of src docs/Doxyfile)
  if [ -d "$SITE_DIR/doxygen/xml" ] && unchanged doxygen "$key"; then
    log "doxygen not rerun: the headers are unchanged"
  else
    log "doxygen (XML for the API reference)"
    rm -rf "$SITE_DIR/doxygen-new" && mkdir -p "$SITE_DIR/doxygen-new"
    GRADPROOF_DOXYGEN_OUT="$SITE_DIR/doxygen-new" doxygen docs/Doxyfile
    sync_tree "$SITE_DIR/doxygen-new" "$SITE_DIR/doxygen"  # unchanged XML: API pages not re-read
    stamp doxygen "$key" 0
  fi

  key=$(key_of docs/_ext tests/site/sphinx_ext_test.py)
  if unchanged sphinx-ext-test "$key"; then
    log "the Sphinx extension's unit tests not rerun (extension unchanged)"
  else
    log "the Sphinx extension's unit tests"
    "$PY" tests/site/sphinx_ext_test.py >"$SITE_DIR/sphinx_ext_test.log" 2>&1 \
      || { cat "$SITE_DIR/sphinx_ext_test.log"; return 1; }
    stamp sphinx-ext-test "$key" 0
  fi
}

cmd_site() {
  deps build site
  local status=0 build="$here/build/$SITE_PRESET"
  local results="$build/verification/results.json" tests="$build/tests/gradproof_tests"
  mkdir -p "$SITE_DIR"
  site_prep >"$SITE_DIR/prep.log" 2>&1 &
  local prep_pid=$!

  build_preset "$SITE_PRESET"
  # The site shows this run's results, failures included; a failure makes the command fail at
  # the end, after the site that shows it has been built. The tests are a function of the code
  # and the tests (and the site's Python that trace.check and site.model run): unchanged, the
  # last run's results and status stand. (The derivations are checked again by the traceability
  # stage below.)
  local key
  key=$(key_of src tests cmake docs/_ext CMakeLists.txt CMakePresets.json)-$SITE_PRESET
  if [ -f "$results" ] && unchanged ctest "$key"; then
    log "ctest ($SITE_PRESET) not rerun: code and tests unchanged since its last run (status $last_status)"
    [ "$last_status" = 0 ] || status=1
  else
    log "ctest ($SITE_PRESET): the test run the site reports"
    local ctest_status=0
    ctest --preset "$SITE_PRESET" || ctest_status=1
    [ -f "$results" ] || die "site: the test run wrote no $results"
    stamp ctest "$key" "$ctest_status"
    [ "$ctest_status" = 0 ] || status=1
  fi

  site_bench
  site_training "$build" || status=1

  # Doxygen and the extension's unit tests need no build: they ran in the background meanwhile.
  wait "$prep_pid" || { cat "$SITE_DIR/prep.log"; die "site: doxygen or the extension's unit tests failed"; }
  cat "$SITE_DIR/prep.log"
  log "sphinx (only the pages whose sources or data changed)"
  # Sphinx rebuilds only the pages whose sources or data changed; its progress lines (reading,
  # writing: which page, how far) are shown, the rest of its chatter is not.
  GRADPROOF_RESULTS="$results" GRADPROOF_DOXYGEN_XML="$SITE_DIR/doxygen/xml" \
    GRADPROOF_SITE_DIR="$SITE_DIR" GRADPROOF_GENERATED="$SITE_DIR/generated" \
    /usr/bin/sphinx-build -W --keep-going -b html -d "$SITE_DIR/doctrees" docs "$SITE_DIR/html" \
    | { grep --line-buffered -E '^(reading sources|writing output)\.\.\. \[|^updating environment' || true; } \
    || die "site: sphinx-build reported warnings or errors"

  log "traceability (derivations, code markers, test labels, result rows)"
  "$PY" docs/_ext/traceability.py --results "$results" --test-binary "$tests" || status=1

  log "browser test (headless Chromium, every page, served and from file://)"
  # Pages unchanged since a clean check are not visited again (GRADPROOF_RERUN=1: all of them).
  local no_cache=()
  [ "${GRADPROOF_RERUN:-0}" = 1 ] && no_cache=(--no-cache)
  "$PY" tests/site/browser_test.py "$SITE_DIR/html" --artifacts "$SITE_DIR/artifacts" "${no_cache[@]}" || status=1

  [ "$status" -eq 0 ] || log "the site is built, and shows what failed; see the messages above"
  echo "$SITE_DIR/html/index.html"
  return "$status"
}

cmd_serve() {
  local port=${PORT:-8000}
  [ -f "$SITE_DIR/html/index.html" ] || die "serve: no site yet; run ./build.sh site first"
  log "serving $SITE_DIR/html on http://127.0.0.1:$port/ (Ctrl-C stops)"
  exec "$PY" -m http.server "$port" --bind 127.0.0.1 --directory "$SITE_DIR/html"
}

cmd_bench() {  # the comparisons need libtorch and oneDNN: the bench group of packages.txt
  deps build bench
  build_preset bench
  local profile=full a
  for a in "$@"; do [ "${prev:-}" = --profile ] && profile=$a; local prev=$a; done
  log "benchmarks, $profile profile (load average $(cut -d' ' -f1-3 /proc/loadavg); other work on the machine skews them)"
  build/bench/bench/gradproof_bench --out "$here/build/bench/bench/results.json" "$@"
}

# ---- Fuzzing (issue 10) ------------------------------------------------------------------------
# Each harness runs from a working corpus in build/fuzz/corpus/<h> that starts as the seed corpus
# fuzz/corpus/<h> and keeps what libFuzzer adds (so a later run goes on from there). Crashing
# inputs land in build/fuzz/artifacts/<h>/; the log of each run in build/fuzz/logs/<h>.log.
cmd_fuzz() {
  local seconds=${1:-60} status=0 h out
  [[ "$seconds" =~ ^[0-9]+$ ]] || die "fuzz: SECONDS must be a whole number; got '$seconds'"
  deps build fuzz
  build_preset fuzz
  out="$here/build/fuzz"
  for h in bn ln gn in rms; do
    mkdir -p "$out/corpus/$h" "$out/artifacts/$h" "$out/logs"
    log "fuzz $h for ${seconds}s"
    if ! "$out/fuzz/gradproof_fuzz_$h" -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$h/" "$out/corpus/$h" "$here/fuzz/corpus/$h" >"$out/logs/$h.log" 2>&1; then
      status=1
      log "fuzz $h: CRASH (see $out/logs/$h.log; inputs in $out/artifacts/$h/)"
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec):' "$out/logs/$h.log" | tr '\n' ' ' >&2 || true
    echo >&2
  done
  [ "$status" -eq 0 ] || die "fuzz: a harness found a crash"
  log "fuzz: no crash"
}

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  test) cmd_test ;;
  site) cmd_site ;;
  serve) cmd_serve ;;
  bench) shift; cmd_bench "$@" ;;
  fuzz) shift; cmd_fuzz "$@" ;;
  deps) shift; [ $# -gt 0 ] || die "deps: name at least one group of packages.txt"; deps "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
