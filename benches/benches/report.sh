#!/usr/bin/env bash
# Runs the graph benchmarks and prints two markdown tables: criterion's medians, and the paired
# ratios of `graphs --paired` (see `paired` in graphs.rs), which hold still on a noisy machine.
#
#   bash benches/benches/report.sh              # run `graphs` (~4 min on 2 cores), then
#                                               # `graphs --paired` (~15 s) and `alloc_report`
#   bash benches/benches/report.sh --paired-only # skip criterion; its table shows the last results
#   bash benches/benches/report.sh --no-run     # only read the last criterion results (still runs
#                                               # `alloc_report`, which takes a second)
#   bash benches/benches/report.sh --no-build   # use the newest built bench executables, no cargo
#   bash benches/benches/report.sh -- chain     # extra arguments after `--` go to criterion, e.g.
#                                               # a filter; the table shows whatever results exist
#
# The executables are built first and then run directly, so sources changing meanwhile (the
# scheduler is being worked on) do not trigger a rebuild between the build and the run.
#
# Criterion results are read from $CARGO_TARGET_DIR/criterion (default: <workspace>/target).
# The first run compiles both bench binaries in release: several minutes (100-step futures).
# Each cell of the table is the median time of one run of the whole graph, that time divided
# by the number of steps, and its ratio to `handwritten` in the same row. The last columns are
# jobgraph's allocations per `run()` (current_thread, counted on the running thread, after a
# warm-up run) and the size of its run future divided by the number of steps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TARGET_DIR="$TARGET_DIR"
# The workspace's bench profile keeps debug info; for these 100-step futures that about doubles
# LLVM's time. Override with CARGO_PROFILE_BENCH_DEBUG=true to profile the binaries.
export CARGO_PROFILE_BENCH_DEBUG="${CARGO_PROFILE_BENCH_DEBUG:-false}"

run=1
criterion=1
build=1
criterion_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-run) run=0 ;;
        --paired-only) criterion=0 ;;
        --no-build) build=0 ;;
        --) shift; criterion_args=("$@"); break ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$ROOT"
bench_log="$(mktemp)"
alloc_json="$(mktemp)"
paired_json="$(mktemp)"
trap 'rm -f "$bench_log" "$alloc_json" "$paired_json"' EXIT

# Prints `name path` of the bench executables: freshly built, or the newest ones on disk.
executables() {
    if [[ $build == 1 ]]; then
        local benches=(--bench alloc_report)
        [[ $run == 1 ]] && benches+=(--bench graphs)
        echo "building the benches (release; the first build takes several minutes)..." >&2
        cargo bench -p jobgraph-benches --no-run --message-format=json "${benches[@]}" 2>"$bench_log" |
            python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["target"]["name"], msg["executable"])'
    else
        for name in alloc_report graphs; do
            local found
            found="$(ls -t "$TARGET_DIR"/release/deps/"$name"-* 2>/dev/null | grep -v '\.d$' | head -n 1 || true)"
            if [[ -n $found ]]; then echo "$name $found"; fi
        done
    fi
}
declare -A exe
while read -r name path; do exe[$name]="$path"; done < <(executables)
if [[ -z "${exe[alloc_report]:-}" || ( $run == 1 && -z "${exe[graphs]:-}" ) ]]; then
    echo "bench executables not found (build failed?)" >&2
    tail -n 40 "$bench_log" >&2
    exit 1
fi

bench_secs=""
if [[ $run == 1 && $criterion == 1 ]]; then
    start=$(date +%s)
    echo "running the graphs benchmark..." >&2
    if ! "${exe[graphs]}" --bench "${criterion_args[@]}" >"$bench_log" 2>&1; then
        tail -n 40 "$bench_log" >&2
        exit 1
    fi
    bench_secs=$(( $(date +%s) - start ))
fi
if [[ $run == 1 ]]; then
    echo "running the paired rounds (graphs --paired)..." >&2
    if ! "${exe[graphs]}" --paired >"$paired_json" 2>"$bench_log"; then
        tail -n 40 "$bench_log" >&2
        exit 1
    fi
fi

if ! "${exe[alloc_report]}" --bench >"$alloc_json" 2>"$bench_log"; then
    tail -n 40 "$bench_log" >&2
    exit 1
fi

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
export REPORT_NPROC="$(nproc)" REPORT_CPU="${cpu:-unknown}" REPORT_RUSTC="$(rustc --version)"
export REPORT_BENCH_SECS="$bench_secs" REPORT_CRITERION="$TARGET_DIR/criterion"
export REPORT_ALLOCS="$alloc_json" REPORT_PAIRED="$paired_json"

python3 - <<'EOF'
import json, os, pathlib

SHAPES = ["diamond", "chain100", "fan100", "grid10x10"]
MODES = ["immediate", "yield"]
RUNTIMES = ["current_thread", "multi_thread"]
IMPLS = ["jobgraph", "handwritten", "spawn", "dagrs", "async_dag"]

# Criterion: <criterion>/<group dir>/<function>/new/{benchmark,estimates}.json; the group id
# is `{shape}/{mode}/{runtime}`, read from benchmark.json rather than from the directory name.
medians = {}
root = pathlib.Path(os.environ["REPORT_CRITERION"])
for bench in root.glob("*/*/new/benchmark.json"):
    meta = json.loads(bench.read_text())
    estimates = json.loads((bench.parent / "estimates.json").read_text())
    key = tuple(meta["group_id"].split("/")) + (meta["function_id"],)
    medians[key] = estimates["median"]["point_estimate"]  # ns per iteration, i.e. per graph

allocs = {}
steps = {}
for line in pathlib.Path(os.environ["REPORT_ALLOCS"]).read_text().splitlines():
    if line.startswith("{"):
        row = json.loads(line)
        allocs[(row["shape"], row["mode"], row["impl"])] = row
        steps[row["shape"]] = row["steps"]

def ns(value):
    if value >= 100_000:
        return f"{value / 1000:,.0f} µs"
    if value >= 10_000:
        return f"{value / 1000:,.1f} µs"
    return f"{value:,.0f} ns"

print("# jobgraph benchmarks\n")
print(f"- machine: {os.environ['REPORT_NPROC']} CPUs, {os.environ['REPORT_CPU']}")
print(f"- {os.environ['REPORT_RUSTC']}")
secs = os.environ["REPORT_BENCH_SECS"]
print(f"- `graphs` bench run time (built beforehand): {secs} s" if secs else "- existing criterion results (`--no-run`)")
print("- cell: median per graph run · per step · ×handwritten (lower is better); "
      "— = not measured (async_dag: `!Send`, and at most 12 inputs per task)")
print("- jobgraph allocs/run and run-future bytes/step: one `run()` on current_thread after a warm-up\n")

header = ["shape", "mode", "runtime", "steps"] + IMPLS + ["jobgraph allocs/run", "jobgraph future B/step"]
print("| " + " | ".join(header) + " |")
print("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
for shape in SHAPES:
    n = steps.get(shape)
    for mode in MODES:
        for runtime in RUNTIMES:
            base = medians.get((shape, mode, runtime, "handwritten"))
            cells = []
            for impl in IMPLS:
                value = medians.get((shape, mode, runtime, impl))
                if value is None:
                    cells.append("—")
                    continue
                cell = ns(value)
                if n:
                    cell += f" · {value / n:,.0f} ns/step"
                if base:
                    cell += f" · ×{value / base:.2f}"
                cells.append(cell)
            if not any(c != "—" for c in cells):
                continue
            job = allocs.get((shape, mode, "jobgraph"))
            if job and runtime == "current_thread":
                extra = [str(job["allocs"]), f"{job['future_bytes'] / job['steps']:.0f}"]
            else:
                extra = ["", ""]
            print("| " + " | ".join([shape, mode, runtime, str(n or "?")] + cells + extra) + " |")

paired = {}
for line in pathlib.Path(os.environ["REPORT_PAIRED"]).read_text().splitlines():
    if line.startswith("{"):
        row = json.loads(line)
        paired[(row["shape"], row["mode"], row["runtime"], row["impl"])] = row
if paired:
    rounds = next(iter(paired.values()))["rounds"]
    print(f"\n## Paired ratios (`graphs --paired`: median of {rounds} rounds of alternating batches)\n")
    print("- ×handwritten: jobgraph's time over hand-written's in the same round, median [quartiles]")
    print("- over hand-written: jobgraph's median time minus hand-written's, per step")
    print("- dagrs, async_dag: their time over jobgraph's in the same round (how many times faster "
          "jobgraph is), median [quartiles]\n")
    header = ["shape", "mode", "runtime", "jobgraph", "×handwritten", "over hand-written",
              "spawn ×handwritten", "dagrs ÷ jobgraph", "async_dag ÷ jobgraph"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
    def spread(q):
        return f"{q[1]:.2f} [{q[0]:.2f}–{q[2]:.2f}]"
    for shape in SHAPES:
        for mode in MODES:
            for runtime in RUNTIMES:
                row = {impl: paired.get((shape, mode, runtime, impl)) for impl in IMPLS}
                job, hand = row["jobgraph"], row["handwritten"]
                if not job or not hand:
                    continue
                n = job["steps"]
                cells = [
                    f"{ns(job['ns'])} · {job['ns'] / n:,.0f} ns/step",
                    spread(job["x_hand"]),
                    f"{(job['ns'] - hand['ns']) / n:+,.0f} ns/step",
                    spread(row["spawn"]["x_hand"]) if row["spawn"] else "—",
                    spread(row["dagrs"]["over_jobgraph"]) if row["dagrs"] else "—",
                    spread(row["async_dag"]["over_jobgraph"]) if row["async_dag"] else "—",
                ]
                print("| " + " | ".join([shape, mode, runtime] + cells) + " |")

EOF
