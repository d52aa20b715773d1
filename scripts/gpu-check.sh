#!/usr/bin/env bash
# One command for the GPU machine (docs/benchmarks.md, "On the GPU machine"): install the carried
# wheels (wheels/, made by scripts/prepare-gpu-wheels.sh) offline, run tests/gpu, then
# `python -m bench gpu --quick`, all inside a time budget (480 s), and leave under $OUT:
#   gpu-check.log      everything printed, ending with a summary
#   records.tar.gz     the bench's JSON records and plots, and pytest's junit XML
#                      (tar -xzf records.tar.gz -C bench/results)
# The bench ends with j1: `batch-inpaint run` itself (local executor, local files, the real model
# stage) with SD2's architecture, LaMa, and LaMa with the text detector, random weights; it prints
# each run's command first. Tests that fail do not stop the bench: the measurements are the
# point. Exit status: 0 all well, 1 GPU tests failed, 3 the bench failed or ran out of time, 4 the
# wheels did not install.
#
#   scripts/gpu-check.sh [--dry-run] [--budget SECONDS]
#
# --dry-run (automatic without CUDA): what a CPU machine can do, for CI. It checks the wheels
# folder and installs it into a throwaway folder for Python 3.12 on x86-64 Linux, hides ray, s3fs
# and moto as the GPU machine lacks them, runs tests/gpu (they skip) and `bench gpu --quick` on
# the CPU with the tiny checkpoint, at toy sizes. Env: PYTHON (default .venv/bin/python, else
# python3), OUT (default a new temporary folder), GPU_CHECK_BUDGET_S, GPU_CHECK_WHEELS (wheels).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

DRY=0
BUDGET=${GPU_CHECK_BUDGET_S:-480}
WHEELS=${GPU_CHECK_WHEELS:-wheels}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (--dry-run, --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-$(mktemp -d /tmp/gpu-check-out.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
START=$SECONDS

left() { echo $((BUDGET - (SECONDS - START))); }
# Seconds for the next step: at most $1, and never past the budget less $2 kept for what follows.
slot() {
  local s
  s=$(($(left) - $2))
  [ "$s" -gt "$1" ] && s=$1
  [ "$s" -lt 10 ] && s=10
  echo "$s"
}
step() { echo; echo "== gpu-check [$((SECONDS - START)) s]: $*"; }

main() {
  local device gpu=1 tests_rc=0 bench_rc=0 wheels_rc=0 t
  step "device"
  echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
  command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  device=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>/dev/null | tail -1)
  if [ -z "$device" ]; then
    [ "$DRY" = 1 ] || echo "no CUDA GPU here (torch.cuda.is_available() is False): dry run"
    DRY=1 gpu=0
    device="no GPU (dry run on $(uname -m))"
  fi
  echo "device: $device"
  echo "budget: ${BUDGET} s; out: $OUT"

  step "wheels"
  local site="$WORK/site" whl pure=1
  local pipargs=(-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site")
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "$WHEELS/ holds no wheel: run scripts/prepare-gpu-wheels.sh here and carry [\"wheels\"]"
    [ "$DRY" = 1 ] || wheels_rc=4
  else
    ls -l "${wheels[@]}"
    du -ch "${wheels[@]}" | tail -1
    for whl in "${wheels[@]}"; do
      case "$whl" in *-none-any.whl) ;; *) pure=0 ;; esac
    done
    if [ "$DRY" = 1 ]; then # as for the GPU machine's Python, whatever this one is
      pipargs+=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64)
    fi
    echo "+ $PY ${pipargs[*]} $WHEELS/*.whl"
    if timeout -k 5 "$(slot 90 300)" "$PY" "${pipargs[@]}" "${wheels[@]}"; then
      # pure-Python wheels work on this Python too, so the dry run uses them as the GPU run does
      if [ "$DRY" = 0 ] || [ "$pure" = 1 ]; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
      fi
    else
      echo "the wheels did not install"
      wheels_rc=4
    fi
  fi
  if [ "$DRY" = 1 ]; then # the GPU machine has none of these: nothing here may need them
    for mod in ray s3fs moto; do
      mkdir -p "$WORK/hide/$mod"
      echo "raise ImportError('$mod is not on the GPU machine (gpu-check --dry-run)')" \
        >"$WORK/hide/$mod/__init__.py"
    done
    export PYTHONPATH="$WORK/hide${PYTHONPATH:+:$PYTHONPATH}"
    echo "hidden as on the GPU machine: ray s3fs moto"
  fi
  local mods=() mod
  for whl in "${wheels[@]}"; do mods+=("$(basename "$whl" | cut -d- -f1)"); done
  for mod in "${mods[@]}"; do # each carried package imports, with what it needs from the machine
    if "$PY" -c "import $mod as m; print('import $mod:', getattr(m, '__version__', '?'), m.__file__)"; then
      :
    elif [ "$DRY" = 1 ]; then
      echo "(dry run: $mod does not import on this machine; a bench workload that needs it is skipped)"
    else
      wheels_rc=4
    fi
  done

  step "tests/gpu"
  t=$(slot 150 240)
  echo "+ timeout $t $PY -m pytest -q tests/gpu"
  timeout -k 10 "$t" "$PY" -m pytest -q -p no:cacheprovider tests/gpu \
    --junitxml="$WORK/results/pytest-gpu.xml" -o junit_family=xunit2
  tests_rc=$?
  [ "$tests_rc" = 124 ] && echo "tests/gpu ran out of its ${t} s"

  step "bench gpu --quick"
  local bench=(-m bench gpu --quick --results-dir "$WORK/results")
  if [ "$DRY" = 1 ]; then # the tiny checkpoint at toy sizes: the harness, not the numbers
    bench+=(--device cpu --tiny --steps 2 --warmup 0 --repeats 1 --size 64 --sizes 64
      --width 96 --height 64 --images 2 --rows 8 --batch 2 --threads 2)
  fi
  t=$(slot 100000 15)
  echo "+ timeout $t $PY ${bench[*]}"
  timeout -k 10 "$t" "$PY" "${bench[@]}"
  bench_rc=$?
  [ "$bench_rc" = 124 ] && echo "the bench ran out of its ${t} s; the records of the workloads that finished are kept"

  step "records"
  local files=()
  mapfile -t files < <(ls -A "$WORK/results")
  if [ ${#files[@]} -gt 0 ]; then
    tar -czf "$OUT/records.tar.gz" -C "$WORK/results" "${files[@]}"
    printf '  %s\n' "${files[@]}"
    echo "-> $OUT/records.tar.gz (tar -xzf records.tar.gz -C bench/results)"
  else
    echo "no records were written"
  fi

  step "summary"
  echo "device:     $device"
  echo "wheels:     $([ "$wheels_rc" = 0 ] && echo ok || echo 'NOT INSTALLED')"
  echo "tests/gpu:  $([ "$tests_rc" = 0 ] && echo passed || echo "FAILED (pytest exit $tests_rc)")"
  echo "bench:      $([ "$bench_rc" = 0 ] && echo ok || echo "FAILED (exit $bench_rc)"), ${#files[@]} files"
  echo "seconds:    $((SECONDS - START)) of $BUDGET"
  [ "$gpu" = 0 ] && echo "no GPU was present"
  [ "$DRY" = 1 ] && echo "dry run: the CPU and the tiny checkpoint; its numbers mean nothing"
  if [ "$tests_rc" != 0 ]; then return 1; fi
  if [ "$bench_rc" != 0 ]; then return 3; fi
  if [ "$wheels_rc" != 0 ]; then return 4; fi
  return 0
}

# No network there: nothing may wait on the Hub (every model here is a local folder).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
mkdir -p "$WORK/results"
main 2>&1 | tee "$OUT/gpu-check.log"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
