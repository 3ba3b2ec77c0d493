#!/usr/bin/env bash
# Compile cost of chains of N steps (`s0 -> s1 -> ... -> sN-1`), each one `#[job]`: how the
# debug build time grows with the number of steps.
#
#   bash benches/benches/compile_chain.sh            # 100, 300 and 1000 steps
#   bash benches/benches/compile_chain.sh 100 300    # the sizes given
#
# Creates one throwaway binary crate per size in a temp dir (path dependency on this
# workspace's `jobgraph`, without default features), sharing one target dir so the
# dependencies build once. Each crate is built once to warm the dependencies; then its
# `src/main.rs` is touched and `cargo build` (debug, incremental off) of just that crate is
# timed. Prints a markdown table. Set KEEP=1 to keep the temp dir.
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

echo "| steps | debug build (s) |"
echo "|---:|---:|"
for n in "${SIZES[@]}"; do
    dir="$(crate "$n")"
    (cd "$dir" && cargo build -q 2>/dev/null || true)
    touch "$dir/src/main.rs"
    start=$(date +%s.%N)
    (cd "$dir" && cargo build -q)
    end=$(date +%s.%N)
    awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "| %s | %.1f |\n", n, e - s }'
done
