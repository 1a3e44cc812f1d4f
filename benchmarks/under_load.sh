#!/usr/bin/env bash
# The distributed tests (`pytest -m processes`: torchrun, DDP, elastic restarts, two agents, two towers)
# and `alexnet bench towers`, ROUNDS times in a row while LOAD busy loops keep every core busy. Timeouts,
# races and tolerances that hold only on a quiet machine fail here. One line per round; exit status 1 if
# any round failed, and then the logs stay for reading.
#
#   benchmarks/under_load.sh [ROUNDS] [LOAD]      # defaults: 10 rounds, one busy loop per usable core
#
# Needs the environment `make test` creates (.venv) and about 5 GB free where pytest writes (TMPDIR).
# A round takes about 10 minutes on 2 cores.
set -u
cd "$(dirname "$0")/.."
rounds=${1:-10}
load=${2:-$(nproc)}
py=.venv/bin/python
if [ ! -x "$py" ]; then
    echo "under_load.sh: no .venv here: run make test once first (it creates it)" >&2
    exit 2
fi
logs=$(mktemp -d "${TMPDIR:-/tmp}/alexnet-under-load.XXXXXX")
busy=()
for _ in $(seq 1 "$load"); do
    "$py" -c "while True: pass" &
    busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
echo "$rounds rounds beside $load busy loops"
failed=0
for i in $(seq 1 "$rounds"); do
    start=$SECONDS
    "$py" -m pytest -m processes tests >"$logs/tests-$i.log" 2>&1
    tests=$?
    "$py" -m alexnet bench towers >"$logs/towers-$i.log" 2>&1
    towers=$?
    printf 'round %d/%d: tests %s (%s), bench towers %s, %d s, load average %s\n' "$i" "$rounds" \
        "$([ $tests -eq 0 ] && echo passed || echo "FAILED, exit $tests")" "$(tail -n 1 "$logs/tests-$i.log")" \
        "$([ $towers -eq 0 ] && echo finished || echo "FAILED, exit $towers")" $((SECONDS - start)) \
        "$(cut -d ' ' -f 1 /proc/loadavg 2>/dev/null || echo '?')"
    if [ $tests -ne 0 ] || [ $towers -ne 0 ]; then failed=1; fi
done
tail -n 1 "$logs/towers-$rounds.log"   # the CPU it ran on, as bench names it
if [ $failed -eq 0 ]; then rm -rf "$logs"; else echo "logs of the failed rounds: $logs"; fi
exit $failed
