#!/usr/bin/env bash
# Mutation testing of one module (not part of CI): how many deliberately broken versions
# of the module the tests catch.
#
#   bash scripts/mutation.sh MODULE [COMMIT] [DIR]
#
# MODULE is one of attacks, training, runner, sweep, losses. The script clones COMMIT
# (default HEAD) of this repository into DIR (default /tmp/cnnrun-mutation-MODULE), writes
# mutmut's setup.cfg there (the module to mutate and the test files that exercise it) and
# runs `mutmut run` with two test processes of one thread each; for sweep, only its
# summary code (result_rows, summary_rows, accuracy_at_epoch, curve_groups, write_results),
# against tests/test_sweep_results.py, which trains a sweep's runs without a cluster
# (tests/test_sweep.py starts Dask clusters: about 20 s a mutant).
# TESTS="..." replaces the module's test files (for an older COMMIT that lacks some of them);
# NAMES="..." (mutmut's name patterns, space-separated) runs only the mutants they match.
# EVERY=K (default 1) runs every K-th mutant only, in mutmut's order: a systematic
# sample, for modules whose tests make a full run take hours (runner: 891 mutants).
# Needs mutmut 3.8 (`pip install mutmut==3.8.1`) and real MNIST in CNNRUN_DATA_DIR.
# Prints the count of each outcome; `mutmut results --all true` in DIR lists every mutant,
# `mutmut show NAME` shows one.
set -euo pipefail
module=$1; commit=${2:-HEAD}; dir=${3:-/tmp/cnnrun-mutation-$module}
repo=$(cd "$(dirname "$0")/.." && pwd)
names=()
case $module in
  attacks)  path=cnnrun/robustness/attacks.py
            tests="tests/test_attacks.py tests/test_autoattack.py tests/test_attack_reference.py tests/test_trades.py tests/test_cli_options.py" ;;
  training) path=cnnrun/training.py
            tests="tests/test_training.py tests/test_runner.py tests/test_trades.py tests/test_attacks.py tests/test_resume.py tests/test_network.py" ;;
  runner)   path=cnnrun/runner.py
            tests="tests/test_runner.py tests/test_resume.py tests/test_integrity.py tests/test_cli.py tests/test_cli_options.py tests/test_hostile_input.py" ;;
  sweep)    path=cnnrun/sweep.py; tests="tests/test_sweep_results.py"
            for f in result_rows summary_rows accuracy_at_epoch curve_groups write_results; do names+=("cnnrun.sweep.x_$f*"); done ;;
  losses)   path=cnnrun/nn/losses.py
            tests="tests/test_layer_gradients.py tests/test_network.py tests/test_trades.py tests/test_torch_twin.py tests/test_reference.py tests/test_attacks.py tests/test_autoattack.py tests/test_attack_reference.py" ;;
  *) echo "unknown module $module: one of attacks, training, runner, sweep, losses" >&2; exit 2 ;;
esac
tests=${TESTS:-$tests}  # TESTS="tests/a.py tests/b.py": another selection (an older commit's files, say)
[ -n "${NAMES:-}" ] && read -r -a names <<< "$NAMES"  # NAMES="cnnrun.robustness.attacks.x_trades_adversary*": those only
# mutmut's CPU-time limit is 2 x multiplier x (its estimate + this constant). The sweep
# results tests train 12 runs in a module fixture (about 7 s) that the estimate leaves out.
constant=${TIMEOUT_CONSTANT:-$([ "$module" = sweep ] && echo 30 || echo 1)}
rm -rf "$dir" && git clone -q "$repo" "$dir" && cd "$dir" && git checkout -q "$commit"
# The slowest tests (20-60 s each on one thread) leave the selection; CI still runs them.
slow="autoattack_is_no_weaker_than_pgd or fab_t_is_as_strong or square_is_as_strong or ctrl_c_or_sigterm or killed_at_random"
{
  echo "[mutmut]"
  echo "source_paths=cnnrun/"
echo "timeout_multiplier=1"  # (timeouts are retried at RETRY_MULTIPLIER below)
echo "timeout_constant=$constant"  # seconds added to the estimate before the multiplier
echo "process_isolation=forkserver"
  echo "only_mutate=$path"
  printf 'pytest_add_cli_args=\n    -m\n    not slow\n    -p\n    no:cacheprovider\n    -k\n    not (%s)\n' "$slow"
  echo "pytest_add_cli_args_test_selection="
  for t in $tests; do [ -e "$t" ] && echo "    $t"; done
  echo "also_copy="
  for p in configs/ docs/ README.md CHANGELOG.md mkdocs.yml benchmarks/ results/; do [ -e "$p" ] && echo "    $p"; done
} > setup.cfg
export CNNRUN_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg CI=true
every=${EVERY:-1}
if [ "$every" -gt 1 ]; then
  # A name no mutant has: mutmut makes the mutants and its test statistics, runs none.
  mutmut run --max-children 2 "cnnrun.no_such_mutant" > mutmut-prepare.log 2>&1 || true
  prefixes=$(printf '%s\n' "${names[@]:-cnnrun.*}" | sed 's/\*$//')
  mapfile -t names < <(mutmut results --all true | awk -F': ' '{gsub(/^ +/, "", $1); print $1}' \
                       | grep -F "$prefixes" | awk -v k="$every" 'NR % k == 1 || k == 1')
  echo "every ${every}th mutant: ${#names[@]} of them"
fi
mutmut run --max-children 2 "${names[@]}" > mutmut.log 2>&1
# mutmut's time estimate counts each test's last phase only, not the fixtures that train
# a run first, so many mutants of runner.py run into the first limit without hanging.
# Those are run again with RETRY_MULTIPLIER (default 10) times the estimate.
mapfile -t slow_ones < <(mutmut results --all true | awk -F': ' '$2 == "timeout" {gsub(/^ +/, "", $1); print $1}')
if [ "${#slow_ones[@]}" -gt 0 ] && [ "${RETRY_MULTIPLIER:-10}" -gt 1 ]; then
  sed -i "s/^timeout_multiplier=.*/timeout_multiplier=${RETRY_MULTIPLIER:-10}/" setup.cfg
  echo "again with timeout_multiplier=${RETRY_MULTIPLIER:-10}: ${#slow_ones[@]} mutants"
  mutmut run --max-children 2 "${slow_ones[@]}" > mutmut-retry.log 2>&1
fi
mutmut results --all true | grep -v ": not checked" > results.txt
echo "$module at $(git rev-parse --short HEAD): $(wc -l < results.txt) mutants"
awk -F': ' '{print $2}' results.txt | sort | uniq -c
