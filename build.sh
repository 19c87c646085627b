#!/usr/bin/env bash
# gradproof's driver: installs the Debian packages a task needs, then runs the CMake presets.
#
#   ./build.sh test     build and run every test (presets dev and asan) and the install test
#   ./build.sh site     build, test, benchmark and render the site; prints the path of index.html
#   ./build.sh serve    serve the built site on http://127.0.0.1:8000/ (PORT=... to change)
#   ./build.sh bench [ARGS]   run the benchmarks (preset bench), write build/bench/bench/results.json
#                       (ARGS go to gradproof_bench, e.g. --threads 2 --reps 40; see --help)
#   ./build.sh deps GROUP...   install the packages of groups in packages.txt (build, site, bench)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
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
build_preset() {  # configure and build one preset
  local preset=$1
  log "configure + build ($preset)"
  cmake --preset "$preset" >/dev/null
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

cmd_site() {
  die "site: not built yet (see issue 3)"
}

cmd_serve() {
  die "serve: not built yet (see issue 3)"
}

cmd_bench() {  # the comparisons need libtorch and oneDNN: the bench group of packages.txt
  deps build bench
  build_preset bench
  log "benchmarks (load average $(cut -d' ' -f1-3 /proc/loadavg); other work on the machine skews them)"
  build/bench/bench/gradproof_bench --out "$here/build/bench/bench/results.json" "$@"
}

# Called by cmd_site: runs the benchmarks for the Performance page (GRADPROOF_SKIP_BENCH=1 skips
# them; the page then shows the results file of an earlier run, or says that there is none) and
# exports GRADPROOF_BENCH, the results file that docs/conf.py hands to the {gradproof-bench} directive.
site_bench() {
  if [ "${GRADPROOF_SKIP_BENCH:-0}" = 1 ]; then
    log "benchmarks skipped (GRADPROOF_SKIP_BENCH=1)"
  else
    cmd_bench
  fi
  export GRADPROOF_BENCH="$here/build/bench/bench/results.json"
}

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  test) cmd_test ;;
  site) cmd_site ;;
  serve) cmd_serve ;;
  bench) shift; cmd_bench "$@" ;;
  deps) shift; [ $# -gt 0 ] || die "deps: name at least one group of packages.txt"; deps "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
