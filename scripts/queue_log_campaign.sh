#!/bin/sh
# The statistics accuracy campaign (README "How it is checked"): every bundled queue_log
# through scripts/queue_log_reference.py and `teledge report`, in each mode below; prints
# each run's summary and the totals. Exit 1 when any figure differs.
# Usage: scripts/queue_log_campaign.sh [path/to/teledge]   (default target/debug/teledge)
set -u
BIN=${1:-target/debug/teledge}
D=tests/data
HARD="$D/queue_log/hard-cases-1.queue_log $D/queue_log/hard-cases-2.queue_log"
status=0
total=0
agree=0
run() {
    out=$(python3 scripts/queue_log_reference.py --teledge "$BIN" "$@") || status=1
    summary=$(printf '%s\n' "$out" | tail -n 1)
    printf '%s\n' "$out" | grep '^DIFF' || true
    echo "[$*] ${summary##*; }"
    n=$(printf '%s\n' "$summary" | sed -n 's/.* \([0-9]*\) figures compared, \([0-9]*\) agree.*/\1 \2/p')
    total=$((total + ${n% *}))
    agree=$((agree + ${n#* }))
}
for files in "$D/queue_log/asterisk-book-3rd-ed-sample.queue_log" \
    "$D/queue_log/xivo-doc-queue_log.rst" \
    "$D/callcenter/queue_log-bundled-captures" "$HARD"; do
    for mode in "" "--per-queue" "--attribution arrival" \
        "--interval 30 --time-zone Europe/Berlin" \
        "--interval 60 --time-zone Asia/Kathmandu --per-queue" \
        "--interval 60 --time-zone America/St_Johns --attribution arrival"; do
        # shellcheck disable=SC2086
        run $files $mode
    done
done
# The hard cases moved onto DST changes: Berlin's fall-back (02:00-03:00 twice) and Lord
# Howe's 30-minute shift (an interval cut at the change).
# shellcheck disable=SC2086
run $HARD --shift-to 2026-10-25T00:40:00 --time-zone Europe/Berlin
# shellcheck disable=SC2086
run $HARD --shift-to 2026-04-04T14:30:00 --time-zone Australia/Lord_Howe --interval 60 --per-queue
# shellcheck disable=SC2086
run $HARD --shift-to 2026-04-04T14:30:00 --time-zone Australia/Lord_Howe --interval 30 --attribution arrival
# A member for 10 days with one call a day (written here: no public queue_log spans days).
DAILY=$(mktemp --suffix=.queue_log)
python3 - "$DAILY" <<'PY'
import sys
t0 = 1767225600
lines = [f"{t0}|MANAGER|sales|PJSIP/201|ADDMEMBER|"]
for d in range(1, 11):
    t = t0 + d * 86400
    lines += [f"{t}|{t}.{d}|sales|NONE|ENTERQUEUE||555|1", f"{t + 5}|{t}.{d}|sales|NONE|ABANDON|1|1|5"]
lines.append(f"{t0 + 10 * 86400 + 60}|MANAGER|sales|PJSIP/201|REMOVEMEMBER|")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
run "$DAILY" --interval 60
rm -f "$DAILY"
echo "queue_log campaign: $total figures compared, $agree agree, $((total - agree)) differ"
exit $status
