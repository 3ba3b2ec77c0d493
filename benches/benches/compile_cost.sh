#!/usr/bin/env bash
# Compile cost of a 100-step job: a 10x10 grid written as one `#[job]` against the same graph
# hand-written with `tokio::join!` and `Shared` futures (as in the `graphs` benchmark).
#
#   bash benches/benches/compile_cost.sh [RUNS]     # RUNS timed builds per crate (default 3)
#   PROFILE=release bash benches/benches/compile_cost.sh 1   # time release builds instead
#
# Creates two throwaway binary crates in a temp dir, sharing one target dir there so the
# dependencies build once: `jobgraph_grid` (path dependency on this workspace's `jobgraph`) and
# `handwritten_grid` (tokio and futures only). Both run their graph in `main` so the graph's
# code is generated. Each is built once to warm the dependencies; then, RUNS times, its
# `src/main.rs` is touched and `cargo build` (debug) of just that crate is timed, with
# incremental compilation off (touching changes nothing, so incremental would reuse everything;
# this is the cost of compiling the crate). Prints a markdown table with the median and every
# run. Set KEEP=1 to keep the temp dir.
#
# Then, unless CHAINS=0, how the debug build grows with the number of steps: `compile_chain.sh`
# with chains of 100, 300 and 1,000 steps (CHAINS="100 300" for other sizes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUNS="${1:-3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/jobgraph-compile-cost.XXXXXX")"
if [[ "${KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$WORK"' EXIT
fi
export CARGO_TARGET_DIR="$WORK/target" CARGO_INCREMENTAL=0
PROFILE="${PROFILE:-debug}"
case "$PROFILE" in
    debug) profile_args=() ;;
    release) profile_args=(--release) ;;
    *) echo "PROFILE must be debug or release" >&2; exit 2 ;;
esac

# Generates both crates' sources; the grid: `g{r}_{c}` reads `g{r}_{c-1}` and `g{r-1}_{c}`.
python3 - "$WORK" "$ROOT" <<'EOF'
import pathlib, sys

work, root = pathlib.Path(sys.argv[1]), sys.argv[2]
cells = [(r, c) for r in range(10) for c in range(10)]

def name(r, c):
    return f"g{r}_{c}"

def parents(r, c):
    return ([name(r, c - 1)] if c > 0 else []) + ([name(r - 1, c)] if r > 0 else [])

def children(r, c):
    return ([name(r, c + 1)] if c < 9 else []) + ([name(r + 1, c)] if r < 9 else [])

def crate(dir_name, deps, main):
    d = work / dir_name
    (d / "src").mkdir(parents=True)
    (d / "Cargo.toml").write_text(
        f'[package]\nname = "{dir_name}"\nversion = "0.0.0"\nedition = "2024"\npublish = false\n\n'
        f'[dependencies]\n{deps}\n[workspace]\n'
    )
    (d / "src" / "main.rs").write_text(main)

tokio = 'tokio = { version = "1.40", default-features = false, features = ["rt", "macros"] }\n'
futures = 'futures = { version = "0.3", default-features = false, features = ["std"] }\n'
run_main = '''
fn main() {{
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    println!("{{}}", rt.block_on({expr}));
}}
'''

# The job: a step per cell; a step's parameters are its parents.
steps = []
for r, c in cells:
    ps = parents(r, c)
    params = "".join(f", {p}: &u64" for p in ps)
    total = " + ".join(f"*{p}" for p in ps) or "0"
    steps.append(f"    #[step]\n    async fn {name(r, c)}(&self{params}) -> u64 {{\n        {total} + 1\n    }}\n")
job = "use jobgraph::job;\n\nstruct Grid;\n\n#[job]\nimpl Grid {\n" + "\n".join(steps) + "}\n"
job += run_main.format(expr="async { Grid.run().await.unwrap().g9_9 }")
crate("jobgraph_grid", f'jobgraph = {{ path = "{root}/jobgraph" }}\n' + tokio + futures, job)

# Hand-written: a future per cell joining its parents' futures, `Shared` where two children
# await it; each child takes a clone, the last one the original.
lines, uses = [], {name(r, c): len(children(r, c)) for r, c in cells}
for r, c in cells:
    ps, captures = parents(r, c), ""
    for p in ps:
        uses[p] -= 1
        captures += f"let {p} = {p}{'.clone()' if uses[p] else ''}; "
    if not ps:
        body = "1"
    elif len(ps) == 1:
        body = f"{ps[0]}.await + 1"
    else:
        body = f"let ({', '.join(ps)}) = tokio::join!({', '.join(ps)}); {' + '.join(ps)} + 1"
    shared = ".shared()" if len(children(r, c)) > 1 else ""
    lines.append(f"    let {name(r, c)} = {{ {captures}async move {{ {body} }}{shared} }};")
hand = "use futures::FutureExt as _;\n\nasync fn grid() -> u64 {\n" + "\n".join(lines) + "\n    g9_9.await\n}\n"
hand += run_main.format(expr="grid()")
crate("handwritten_grid", tokio + futures, hand)
EOF

# Same dependency versions as the workspace (cargo drops what a crate does not use).
cp "$ROOT/Cargo.lock" "$WORK/jobgraph_grid/Cargo.lock"
cp "$ROOT/Cargo.lock" "$WORK/handwritten_grid/Cargo.lock"

time_build() { # crate dir -> seconds of one `cargo build` after touching src/main.rs
    touch "$1/src/main.rs"
    local start end
    start=$(date +%s.%N)
    cargo build --quiet "${profile_args[@]}" --manifest-path "$1/Cargo.toml"
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.2f}')"
}

declare -A results
for crate in jobgraph_grid handwritten_grid; do
    echo "warming $crate..." >&2
    cargo build --quiet "${profile_args[@]}" --manifest-path "$WORK/$crate/Cargo.toml"
    "$CARGO_TARGET_DIR/$PROFILE/$crate" >/dev/null
    times=()
    for _ in $(seq "$RUNS"); do
        times+=("$(time_build "$WORK/$crate")")
    done
    results[$crate]="${times[*]}"
done

echo
echo "\`cargo build\` ($PROFILE, incremental off) of one crate after \`touch src/main.rs\`, dependencies built: $(nproc) CPUs, $(rustc --version)"
echo
echo "| crate | graph | lines | median (s) | runs (s) |"
echo "|---|---|---:|---:|---|"
for crate in jobgraph_grid handwritten_grid; do
    lines=$(wc -l <"$WORK/$crate/src/main.rs")
    median=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" ${results[$crate]})
    case $crate in
        jobgraph_grid) what="10x10 grid, one \`#[job]\` (100 steps)" ;;
        *) what="10x10 grid, \`tokio::join!\` + \`Shared\`" ;;
    esac
    echo "| $crate | $what | $lines | $median | ${results[$crate]// /, } |"
done

if [[ "${CHAINS:-}" != 0 ]]; then
    echo
    # Word splitting of CHAINS is intended: one argument per size.
    # shellcheck disable=SC2086
    bash "$ROOT/benches/benches/compile_chain.sh" ${CHAINS:-100 300 1000}
fi
