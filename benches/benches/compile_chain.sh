#!/usr/bin/env bash
# Compile cost of chains of N steps (`s0 -> s1 -> ... -> sN-1`), each one `#[job]`: how the
# debug build time grows with the number of steps.
#
#   bash benches/benches/compile_chain.sh            # 100, 300 and 1000 steps, 3 rounds
#   bash benches/benches/compile_chain.sh 100 300    # the sizes given
#   ROUNDS=5 bash benches/benches/compile_chain.sh 100 1000
#
# Creates one throwaway binary crate per size in a temp dir (path dependency on this
# workspace's `jobgraph`, without default features), sharing one target dir. The dependencies
# are built once, by a one-step chain; then, in each of ROUNDS rounds, for each size in turn,
# `src/main.rs` is touched and `cargo check` and `cargo build` (debug, incremental off) of just
# that crate are timed, wall clock and CPU (user + system, of cargo and rustc). `check` is type
# and borrow checking (and the layout of the run's `async` block); `build` adds code generation
# and linking. A cell is the median of the rounds. The ratios are each round's build time over
# the first size's in the same round, median of the rounds [lowest–highest]: on a shared
# machine a build's time moves by 2x between minutes, and the rounds pair sizes built moments
# apart. Prints a markdown table. Set KEEP=1 to keep the temp dir.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SIZES=("$@")
[[ ${#SIZES[@]} -eq 0 ]] && SIZES=(100 300 1000)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/jobgraph-compile-chain.XXXXXX")"
if [[ "${KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$WORK"' EXIT
fi
export CARGO_TARGET_DIR="$WORK/target" CARGO_INCREMENTAL=0

crate() {
    local n=$1 dir="$WORK/chain$1"
    mkdir -p "$dir/src"
    cat >"$dir/Cargo.toml" <<TOML
[package]
name = "chain$n"
version = "0.1.0"
edition = "2024"

[dependencies]
jobgraph = { path = "$ROOT/jobgraph", default-features = false }
tokio = { version = "1", features = ["rt", "macros"] }

[workspace]
TOML
    # Same dependency versions as the workspace (cargo drops what the crate does not use).
    cp "$ROOT/Cargo.lock" "$dir/Cargo.lock"
    {
        echo 'use jobgraph::job;'
        echo 'struct Chain;'
        echo '#[job]'
        echo 'impl Chain {'
        echo '    #[step] async fn s0(&self) -> u64 { 1 }'
        for ((i = 1; i < n; i++)); do
            echo "    #[step] async fn s$i(&self, s$((i - 1)): &u64) -> u64 { s$((i - 1)) + 1 }"
        done
        echo '}'
        echo '#[tokio::main(flavor = "current_thread")]'
        echo "async fn main() { println!(\"{}\", Chain.run().await.unwrap().s$((n - 1))); }"
    } >"$dir/src/main.rs"
    echo "$dir"
}

timed() { # dir, cargo command -> "wall cpu" seconds of that command after touching src/main.rs
    touch "$1/src/main.rs"
    # Warnings (of jobgraph without its default features) go to a log, shown if the build fails.
    if ! /usr/bin/time -f "%e %U %S" -o "$WORK/time.txt" \
        cargo "$2" --quiet --manifest-path "$1/Cargo.toml" 2>"$WORK/cargo.log"; then
        cat "$WORK/cargo.log" >&2
        exit 1
    fi
    awk '{ printf "%.2f %.2f", $1, $2 + $3 }' "$WORK/time.txt"
}

if [[ ! -x /usr/bin/time ]]; then
    echo "compile_chain.sh needs /usr/bin/time (apt-get install -y time)" >&2
    exit 1
fi
ROUNDS="${ROUNDS:-3}"

echo "warming the dependencies..." >&2
warm="$(crate 1)"
timed "$warm" build >/dev/null
timed "$warm" check >/dev/null

declare -A dirs
for n in "${SIZES[@]}"; do
    dirs[$n]="$(crate "$n")"
done
# One line per (round, size): round n check_wall build_wall build_cpu.
results="$WORK/results.txt"
: >"$results"
for ((round = 1; round <= ROUNDS; round++)); do
    for n in "${SIZES[@]}"; do
        echo "round $round/$ROUNDS: $n steps..." >&2
        checked="$(timed "${dirs[$n]}" check)"
        built="$(timed "${dirs[$n]}" build)"
        read -r check _ <<<"$checked"
        read -r wall cpu <<<"$built"
        "$CARGO_TARGET_DIR/debug/chain$n" >/dev/null
        echo "$round $n $check $wall $cpu" >>"$results"
    done
done

echo "debug, incremental off, dependencies built: $(nproc) CPUs, $(rustc --version), $ROUNDS rounds"
echo
echo "| steps | cargo check (s) | cargo build (s) | build CPU (s) | build ÷ ${SIZES[0]} steps' | build CPU ÷ ${SIZES[0]} steps' |"
echo "|---:|---:|---:|---:|---:|---:|"
python3 - "$results" "${SIZES[0]}" <<'PY'
import statistics, sys

rows = [line.split() for line in open(sys.argv[1])]
first = sys.argv[2]
by = {}
for r, n, check, wall, cpu in rows:
    by.setdefault(n, []).append((r, float(check), float(wall), float(cpu)))
base = {r: (wall, cpu) for r, _, wall, cpu in by[first]}

def spread(values):
    return f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]"

for n, runs in by.items():
    checks = [c for _, c, _, _ in runs]
    walls = [w for _, _, w, _ in runs]
    cpus = [c for _, _, _, c in runs]
    wall_ratio = [w / base[r][0] for r, _, w, _ in runs]
    cpu_ratio = [c / base[r][1] for r, _, _, c in runs]
    print(f"| {int(n):,} | {statistics.median(checks):.1f} | {statistics.median(walls):.1f} "
          f"| {statistics.median(cpus):.1f} | {spread(wall_ratio)} | {spread(cpu_ratio)} |")
PY
