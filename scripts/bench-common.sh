# Shared by the benchmark scripts. `best CMD...` prints the best wall time (s) and that run's
# peak RSS (KiB) over $RUNS runs of a command, measured by GNU time.
best() {
  local best_t="" best_m="" t m out
  out=$(mktemp)
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -o "$out" -f "%e %M" "$@" >/dev/null 2>&1
    read -r t m < "$out"
    if [ -z "$best_t" ] || awk "BEGIN{exit !($t < $best_t)}"; then best_t=$t; best_m=$m; fi
  done
  rm -f "$out"
  echo "$best_t $best_m"
}
