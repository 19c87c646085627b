#!/usr/bin/env bash
# Runs a whole guard sweep and counts the configurations that fault, restarting after each fault
# at the next configuration (a fault ends the process):
#   tests/guard/count_faults.sh BINARY SUITE [PLACEMENT]
# Prints each faulting configuration and, at the end, "SUITE: F faulting of N configurations".
set -uo pipefail
bin=$1 suite=$2 placement=${3:-tail}
total=$("$bin" "$suite" --placement "$placement" --list | wc -l)
from=0 faults=0
while [ "$from" -lt "$total" ]; do
  out=$("$bin" "$suite" --placement "$placement" --from "$from" 2>&1)
  line=$(grep -m1 'guard: fault while running' <<<"$out")
  if [ -z "$line" ]; then
    grep -q 'no fault' <<<"$out" || { echo "$out" >&2; echo "count_faults: the sweep failed without a fault" >&2; exit 2; }
    break
  fi
  echo "$line"
  faults=$((faults + 1))
  k=$(sed -E 's/.*config #([0-9]+).*/\1/' <<<"$line")
  from=$((k + 1))
done
echo "$suite: $faults faulting of $total configurations ($placement)"
