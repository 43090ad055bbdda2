#!/usr/bin/env bash
# One command on a GPU machine with no network: install the wheels carried beside the repo into a private
# folder on PYTHONPATH (site-packages may be read-only; torch is never installed: the node's CUDA torch
# runs), then run the GPU proof, the GPU tests or a phase of bench/gpu.py. Every result and log goes to RESULTS.
#   bash bench/gpu_run.sh proof OUT                                    # bench/proof.py: all of it in one call, <= 8 min
#   bash bench/gpu_run.sh proof OUT --smoke                            # the same on the CPU, tiny shapes (CI)
#   bash bench/gpu_run.sh proof OUT --deadline-s 300                   # words after OUT go to bench/proof.py
#   bash bench/gpu_run.sh tests [RESULTS]                              # pytest -m gpu tests/gpu (~9 min)
#   bash bench/gpu_run.sh throughput|memory|maxlen|notebook [RESULTS]  # python bench/gpu.py --phase NAME (<9 min)
#   bash bench/gpu_run.sh all [RESULTS]                                # the four phases in sequence (~25 min)
#   bash bench/gpu_run.sh tests RESULTS -k "attention or memory"       # words after RESULTS go to pytest / gpu.py
#   bash bench/gpu_run.sh --dry-run tests                              # print the commands, run nothing
# WHEELHOUSE: $MEDSFT_WHEELHOUSE, else wheelhouse/ (made by launch/offline_bundle.sh). RESULTS: the second
# argument, else $MEDSFT_BENCH_RESULTS, else bench/results (relative paths: from the repository root). Install
# folder: $MEDSFT_SITE, else /tmp/medsft-site. Random-weight models (not results: 17 GB): $MEDSFT_BENCH_MODELS,
# else /tmp/medsft-bench-models, built once per machine and shared by the tests and every phase.
# proof's OUT receives at most 6 files: proof.json (every step, flushed as it goes), proof.md, proof.log,
# freeze.txt, gpu-tests.xml. Its deadline counts from this script's start, the pip install included.
# RESULTS receives: gpu-tests.xml, gpu-tests.log, gpu-attention-DATE.json, gpu-tests-memory-DATE.json (tests);
# gpu-PHASE-DATE.json, gpu-PHASE.log and gpu-summary.md (a table appended per phase).
set -euo pipefail
cd "$(dirname "$0")/.."
export MEDSFT_PROOF_START=${MEDSFT_PROOF_START:-$(date +%s.%N)}
run=()
if [ "${1:-}" = --dry-run ]; then run=(echo); shift; fi
what=${1:-}
results=${2:-${MEDSFT_BENCH_RESULTS:-bench/results}}
extra=("${@:3}")
wheelhouse=${MEDSFT_WHEELHOUSE:-wheelhouse}
site=${MEDSFT_SITE:-/tmp/medsft-site}
models=${MEDSFT_BENCH_MODELS:-/tmp/medsft-bench-models}
PYTHON=${PYTHON:-python3}
case $what in
  proof) [ -n "${2:-}" ] && [ "${2#-}" = "$2" ] || { echo "error: bench/gpu_run.sh proof OUT: name the results folder" >&2; exit 2; }
         cmd=("$PYTHON" bench/proof.py "$results" ${extra[@]+"${extra[@]}"}) log=$results/proof.log ;;
  tests) cmd=("$PYTHON" -m pytest -m gpu tests/gpu -q -raP -p no:cacheprovider --junitxml="$results/gpu-tests.xml"
               ${extra[@]+"${extra[@]}"}) log=$results/gpu-tests.log ;;
  throughput|memory|maxlen|notebook|all) cmd=("$PYTHON" bench/gpu.py --phase "$what" ${extra[@]+"${extra[@]}"})
                                         log=$results/gpu-$what.log ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac

if [ "$what" = proof ]; then  # a mistake in the words after OUT, or an OUT that is a file: said before the install
  "$PYTHON" bench/proof.py "$results" ${extra[@]+"${extra[@]}"} --check || exit 2
fi
wheels=("$wheelhouse"/*.whl)
[ -f "${wheels[0]}" ] || { echo "error: no wheels in $wheelhouse (launch/offline_bundle.sh makes them)" >&2; exit 2; }
for w in "${wheels[@]}"; do
  case ${w##*/} in torch-*|triton-*|nvidia[-_]*) echo "error: $w: torch's wheels are never installed here" >&2; exit 2 ;; esac
done
"${run[@]}" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}"
# The checkout first (its medsft is the one under test), then the wheels, then whatever was there.
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" MEDSFT_BENCH_RESULTS=$results MEDSFT_BENCH_MODELS=$models \
  MEDSFT_SITE=$site PYTHONUNBUFFERED=1
"${run[@]}" mkdir -p "$results"
if [ ${#run[@]} -gt 0 ]; then
  echo "PYTHONPATH=$PYTHONPATH MEDSFT_BENCH_RESULTS=$results MEDSFT_BENCH_MODELS=$models ${cmd[*]} 2>&1 | tee $log"
  exit 0
fi
"${cmd[@]}" 2>&1 | tee "$log"
