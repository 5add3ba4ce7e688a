#!/usr/bin/env bash
# One GPU check of genomes/nanochat_gpu.py, for a single H100/H200 with no network: installs nothing,
# runs in about 6 minutes (under 8 with its timeouts' slack at default settings).
#
#   1. environment: nvidia-smi, python, torch, GPU name, a bf16 matmul's TFLOP/s for reference
#   2. prepare --data pysource with --tokenizer bpe:8192 (every .py on sys.path; BPE trained on train)
#   3. evo eval genomes/nanochat_gpu.py --budget 180 --data pysource --tokenizer bpe:8192
#      (falls back to gpt.runner.run_slot when this evo has no --tokenizer flag yet, or SANDBOX is set)
#   4. report: tokens/s, MFU against the dense bf16 peak (H100 SXM / H200: 989 TFLOP/s), peak
#      memory, val_bpb, probes, and the slot's overhead (slot wall time - budget) split into
#      startup, training overrun, export, scoring and the rest
#
# The report goes to stdout and to $OUT/gpu_report.txt when OUT is set (else to the work dir).
# Settings (environment): PYTHON (python3), BUDGET (180), DATA (pysource), TOKENIZER (bpe:8192),
# DEVICE (cuda), GENOME, SANDBOX (unset: evo eval's auto), WORK (a new /tmp dir), EVO_DATA_DIR ($WORK/data),
# PREP_TIMEOUT (200 s), EVAL_TIMEOUT (BUDGET + 170 s).
# Exit status: 0 when every step worked and the slot scored ok, 1 otherwise (the report says what failed).
set -u
set -o pipefail

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-180}
DATA=${DATA:-pysource}
TOKENIZER=${TOKENIZER:-bpe:8192}
DEVICE=${DEVICE:-cuda}
SANDBOX=${SANDBOX:-}
WORK=${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
PREP_TIMEOUT=${PREP_TIMEOUT:-200}
EVAL_TIMEOUT=${EVAL_TIMEOUT:-$((${BUDGET%.*} + 170))}
GENOME=${GENOME:-genomes/nanochat_gpu.py}
EVAL_DIR=$WORK/eval
REPORT_DIR=${OUT:-$WORK}
REPORT=$REPORT_DIR/gpu_report.txt
mkdir -p "$WORK" "$REPORT_DIR" || exit 1
: >"$REPORT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export EVO_DATA_DIR=${EVO_DATA_DIR:-$WORK/data}
export PYTHONUNBUFFERED=1
export BUDGET DATA TOKENIZER DEVICE SANDBOX GENOME EVAL_DIR
FAILED=()

log() { printf '%s\n' "$*" | tee -a "$REPORT"; }
section() { log ""; log "== $*"; }
fail() { FAILED+=("$1"); log "FAILED: $1"; }
elapsed() { echo $(( $(date +%s) - START )); }
START=$(date +%s)

section "environment ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), work dir $WORK)"
if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1 \
        | tee -a "$REPORT" || fail "nvidia-smi"
else
    fail "nvidia-smi is not on PATH"
fi
timeout 120 "$PY" - <<'EOF' 2>&1 | tee -a "$REPORT" || fail "torch / CUDA check (see above)"
import os, platform, sys, time
print(f"python {sys.version.split()[0]} at {sys.executable}; {os.cpu_count()} CPUs; {platform.platform()}")
import torch
print(f"torch {torch.__version__}; CUDA {torch.version.cuda}; available: {torch.cuda.is_available()}")
from importlib import metadata
for name in ("numpy", "pyarrow", "libcst"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name}: not installed")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(10):
    a @ b
torch.cuda.synchronize()
print(f"bf16 8192^3 matmul: {10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s (dense peak 989)")
EOF
for tool in bwrap unshare; do
    command -v "$tool" >/dev/null && log "sandbox tool: $tool found" || log "sandbox tool: $tool missing"
done

section "prepare --data $DATA --tokenizer $TOKENIZER (timeout ${PREP_TIMEOUT}s, EVO_DATA_DIR=$EVO_DATA_DIR)"
T0=$(date +%s)
timeout "$PREP_TIMEOUT" "$PY" - <<'EOF' 2>&1 | tee -a "$REPORT"
import os, time
from gpt.data import prepare
t = time.monotonic()
ds = prepare(os.environ["DATA"], tokenizer=os.environ["TOKENIZER"])
seconds = time.monotonic() - t
m = ds.manifest
total = sum(m["bytes"].values())
print(f"dataset: {ds.path}")
print(f"tokenizer: {m['tokenizer']['name']}, vocab {m['tokenizer']['vocab_size']}")
for s in ("train", "val", "heldout", "test"):
    print(f"{s}: {m['documents'][s]} documents, {m['bytes'][s] / 1e6:.1f} MB, {m['tokens'][s]} tokens, "
          f"{m['bytes'][s] / max(m['tokens'][s], 1):.2f} bytes/token")
print(f"prepare_seconds: {seconds:.1f} ({total / 1e6 / seconds:.1f} MB/s overall)")
EOF
PREP_RC=$?
[ "$PREP_RC" -eq 0 ] || fail "prepare (exit $PREP_RC$([ "$PREP_RC" -eq 124 ] && echo ': timed out'))"
log "prepare wall: $(( $(date +%s) - T0 ))s"

section "eval $GENOME --budget $BUDGET --data $DATA --tokenizer $TOKENIZER --device $DEVICE (timeout ${EVAL_TIMEOUT}s)"
rm -rf "$EVAL_DIR"
T0=$(date +%s)
if [ -z "$SANDBOX" ]; then
    timeout "$EVAL_TIMEOUT" "$PY" -m evo.cli eval "$GENOME" --budget "$BUDGET" --data "$DATA" \
        --tokenizer "$TOKENIZER" --device "$DEVICE" --out "$EVAL_DIR" >"$WORK/eval_cli.txt" 2>&1
    EVAL_RC=$?
    tee -a "$REPORT" <"$WORK/eval_cli.txt" | tail -40
    if [ ! -f "$EVAL_DIR/result.json" ]; then
        log "evo eval wrote no result.json (exit $EVAL_RC); falling back to gpt.runner.run_slot"
    fi
fi
if [ ! -f "$EVAL_DIR/result.json" ]; then
    LEFT=$(( EVAL_TIMEOUT - ($(date +%s) - T0) ))
    [ "$LEFT" -lt $(( ${BUDGET%.*} + 60 )) ] && LEFT=$(( ${BUDGET%.*} + 60 ))
    timeout "$LEFT" "$PY" - <<'EOF' 2>&1 | tee -a "$REPORT"
import os
from gpt.data import prepare
from gpt.runner import SlotJob, run_slot
ds = prepare(os.environ["DATA"], tokenizer=os.environ["TOKENIZER"])
r = run_slot(SlotJob(genome=os.environ["GENOME"], dataset=str(ds.path), out_dir=os.environ["EVAL_DIR"],
                     budget_s=float(os.environ["BUDGET"]), device=os.environ["DEVICE"],
                     sandbox=os.environ.get("SANDBOX") or "auto"))
print(f"status: {r.status} reason: {r.reason} val_bpb: {r.val_bpb}")
EOF
    EVAL_RC=$?
fi
log "eval wall: $(( $(date +%s) - T0 ))s (exit $EVAL_RC$([ "$EVAL_RC" -eq 124 ] && echo ': timed out'))"

section "report"
if [ -f "$EVAL_DIR/result.json" ]; then
    "$PY" - "$EVAL_DIR" <<'EOF' 2>&1 | tee -a "$REPORT"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
r = json.loads((out / "result.json").read_text())
stdout = (out / "stdout.txt").read_text(errors="replace") if (out / "stdout.txt").exists() else ""
g = {}
for line in stdout.splitlines():
    key, sep, value = line.partition(": ")
    if sep and " " not in key:
        g[key] = value.strip()

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def fmt(x, spec=".2f", unit=""):
    return "n/a" if x is None else f"{x:{spec}}{unit}"

budget = r.get("budget_s") or 0.0
print(f"status: {r.get('status')}" + (f" ({r.get('reason')}: {str(r.get('detail'))[:300]})" if r.get("reason") else ""))
print(f"device: {g.get('device', r.get('device'))}   sandbox: {r.get('sandbox')}")
print(f"val_bpb: {fmt(r.get('val_bpb'), '.4f')}   heldout_bpb: {fmt(r.get('heldout_bpb'), '.4f')}")
print(f"probes: causality {r.get('causality')}, canary {r.get('canary')}, stateless {r.get('stateless')}")
tps, fpt, mfu = num(g.get("tokens_per_second")), num(g.get("flops_per_token")), num(g.get("mfu"))
print(f"steps: {g.get('steps', r.get('steps'))}   tokens: {g.get('tokens')}   params: {g.get('params')}   "
      f"train_loss: {g.get('train_loss')}")
print(f"tokens_per_second: {fmt(tps, ',.0f')}")
print(f"mfu (genome's estimate, vs its card's peak): {fmt(None if mfu is None else 100 * mfu, '.1f', '%')}")
if tps and fpt:
    print(f"mfu vs 989 TFLOP/s dense bf16: {100 * tps * fpt / 989e12:.1f}%  ({tps * fpt / 1e12:.0f} TFLOP/s achieved, "
          f"{fpt / 1e6:.0f} MFLOP/token)")
print(f"peak_memory_mb (CUDA allocator): {g.get('peak_memory_mb')}   host peak (watchdog): {r.get('peak_memory_mb')}")
slot, train = r.get("slot_seconds"), r.get("train_seconds")
startup, export, ev = r.get("startup_seconds"), r.get("export_seconds"), r.get("eval_seconds")
overhead = None if slot is None else slot - budget
print(f"slot_seconds: {fmt(slot, '.1f')} = budget {budget:g} + overhead {fmt(overhead, '.1f')}")
if None not in (slot, train, startup, export, ev):
    overrun = train - startup - export - budget  # the genome's clock ran past the budget (its last step)
    rest = slot - train - ev
    print(f"  startup (process start to connect, exit after export): {startup:.1f}s")
    print(f"  training past the budget (last step):                   {overrun:.1f}s")
    print(f"  export (torch.export + save):                           {export:.1f}s")
    print(f"  scoring (scorer process, after submit):                 {ev:.1f}s")
    print(f"  rest of the harness (checks, sandbox, scorer wait):     {rest:.1f}s")
else:
    print(f"  startup {startup} export {export} eval {ev} train {train} (some missing: the slot did not finish)")
if r.get("status") != "ok":
    print("--- genome stderr (tail)")
    err = out / "stderr.txt"
    print(r.get("stderr_tail") or (err.read_text(errors="replace")[-3000:] if err.exists() else ""))
    sys.exit(1)
EOF
    [ $? -eq 0 ] || fail "the slot did not score ok (see the report)"
    grep -E '^step [0-9]+ ' "$EVAL_DIR/stdout.txt" 2>/dev/null | tail -5 | tee -a "$REPORT"
else
    fail "no result.json in $EVAL_DIR"
    [ -f "$WORK/eval_cli.txt" ] && tail -30 "$WORK/eval_cli.txt" | tee -a "$REPORT"
fi

section "summary after $(elapsed)s"
if [ "${#FAILED[@]}" -eq 0 ]; then
    log "all steps ok"
    exit 0
fi
for f in "${FAILED[@]}"; do
    log "failed: $f"
done
exit 1
