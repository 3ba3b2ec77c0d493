#!/usr/bin/env bash
# Compile cost of chains of N steps (`s0 -> s1 -> ... -> sN-1`), each one `#[job]`: how the
# debug build time grows with the number of steps.
#
#   bash benches/benches/compile_chain.sh            # 100, 300 and 1000 steps
#   bash benches/benches/compile_chain.sh 100 300    # the sizes given
#
# Creates one throwaway binary crate per size in a temp dir (path dependency on this
# workspace's `jobgraph`, without default features), sharing one target dir. The dependencies
# are built once, by a one-step chain; then, for each size, `src/main.rs` is touched and
# `cargo check` and `cargo build` (debug, incremental off) of just that crate are timed.
# `check` is type and borrow checking (and the layout of the run's `async` block); `build`
# adds code generation and linking. The last column is the build time over the smallest
# size's. Prints a markdown table. Set KEEP=1 to keep the temp dir.
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

timed() { # dir, cargo command -> seconds of that command after touching src/main.rs
    touch "$1/src/main.rs"
    local start end
    start=$(date +%s.%N)
    # Warnings (of jobgraph without its default features) go to a log, shown if the build fails.
    if ! cargo "$2" --quiet --manifest-path "$1/Cargo.toml" 2>"$WORK/cargo.log"; then
        cat "$WORK/cargo.log" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }'
}

echo "warming the dependencies..." >&2
warm="$(crate 1)"
timed "$warm" build >/dev/null
timed "$warm" check >/dev/null

echo "debug, incremental off, dependencies built: $(nproc) CPUs, $(rustc --version)"
echo
echo "| steps | cargo check (s) | cargo build (s) | build ÷ ${SIZES[0]} steps' |"
echo "|---:|---:|---:|---:|"
first=
for n in "${SIZES[@]}"; do
    dir="$(crate "$n")"
    check="$(timed "$dir" check)"
    build="$(timed "$dir" build)"
    "$CARGO_TARGET_DIR/debug/chain$n" >/dev/null
    first="${first:-$build}"
    awk -v n="$n" -v c="$check" -v b="$build" -v f="$first" \
        'BEGIN { printf "| %s | %.1f | %.1f | %.1f |\n", n, c, b, b / f }'
done
