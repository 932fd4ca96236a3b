"""GPU benchmark report of the dalle_kernels ops against their peers, at the paper's dVAE and
transformer-attention shapes and the gpu preset's loss step.

Run from the repository root on a CUDA machine: ``python benchmarks/report.py``. For every case of
``cases.py`` (bfloat16) and every contender, forward and forward + backward, it records the
``triton.testing.do_bench`` median (L2 flushed before each call), the achieved GB/s and TFLOP/s
(the minimum bytes / FLOPs the case states, over that time) and the peak memory allocated beyond
the inputs. The ceiling for memory-bound ops is the measured device copy bandwidth. It then checks
the issue's targets (PASS / MISS), prints a Markdown table and writes
``benchmarks/results/<gpu-name>-<YYYY-MM-DD>.json`` and ``.md``. A contender that fails (say a
torch.compile error) is recorded with its error and the report goes on. Without CUDA it exits
with a message: CPU timings come from ``python -m pytest benchmarks``.
"""
import datetime
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import cases
import torch
import triton
from triton.testing import do_bench

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WARMUP_MS, REP_MS = 25, 100
COPY_BYTES = 1 << 30  # the copy-bandwidth tensor: far larger than any L2 cache
MiB = 1 << 20
MAX_ERROR_CHARS = 300


def median_ms(fn: Callable[[], object]) -> float:
    return do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")


def copy_bandwidth_gbps() -> float:
    """GB/s of a large device-to-device ``copy_``, counting bytes read + bytes written."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * COPY_BYTES / median_ms(lambda: dst.copy_(src)) / 1e6


def peak_extra_bytes(step: Callable[[], object]) -> int:
    """Peak memory allocated while ``step`` runs, beyond what was allocated before (the inputs)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(run: cases.Run) -> dict:
    """Time and peak memory of one run; a failure is recorded as ``error`` instead."""
    record = {"op": run.case.op, "case": run.case.name, "shapes": run.case.describe(), "mode": run.mode,
              "contender": run.contender.name, "bytes": run.bytes, "flops": run.flops}
    try:
        step = cases.make_step(run, cases.make_inputs(run.case, run.backward))  # first call: compile / autotune
        peak = peak_extra_bytes(step)  # before timing, so no gradient of an earlier call is counted as input
        ms = median_ms(step)
        record.update(ms=ms, GBps=run.bytes / ms / 1e6, peak_extra_MiB=peak / MiB,
                      TFLOPs=None if run.flops is None else run.flops / ms / 1e9)
    except Exception as error:  # noqa: BLE001 -- one failing contender must not sink the report
        record["error"] = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
    return record


def evaluate_targets(records: list[dict], copy_gbps: float) -> list[dict]:
    """The issue's targets: each with the achieved value, the goal and PASS / MISS."""
    done = {(r["op"], r["case"], r["mode"], r["contender"]): r for r in records if "error" not in r}

    def ratio(key: str, op: str, case: str, mode: str, top: str, bottom: str) -> float | None:
        a, b = done.get((op, case, mode, top)), done.get((op, case, mode, bottom))
        return a[key] / b[key] if a and b and b[key] else None

    ours_gs = done.get(("gumbel_softmax", "rows", "fwd+bwd", cases.OURS))
    checks = [  # (what, achieved, sense, goal)
        ("gumbel_softmax rows fwd+bwd: GB/s / copy GB/s", ours_gs and ours_gs["GBps"] / copy_gbps, ">=", 0.8),
        ("gumbel_softmax rows fwd+bwd: speedup vs F.gumbel_softmax",
         ratio("ms", "gumbel_softmax", "rows", "fwd+bwd", "F.gumbel_softmax", cases.OURS), ">=", 3.0),
        ("gumbel_softmax rows fwd+bwd: speedup vs torch.compile",
         ratio("ms", "gumbel_softmax", "rows", "fwd+bwd", "torch.compile", cases.OURS), ">=", 1.3),
    ]
    for case in cases.gumbel_softmax_codebook_cases():
        args = ("gumbel_softmax_codebook", case.name, "fwd+bwd")
        checks += [
            (f"gumbel_softmax_codebook {case.name} fwd+bwd: speedup vs gumbel_softmax+matmul",
             ratio("ms", *args, "gumbel_softmax+matmul", cases.OURS), ">=", 2.0),
            (f"gumbel_softmax_codebook {case.name} fwd+bwd: peak memory / gumbel_softmax+matmul's",
             ratio("peak_extra_MiB", *args, cases.OURS, "gumbel_softmax+matmul"), "<=", 0.5),
        ]
    for case in cases.nearest_codebook_cases():
        (n, d), (k, _) = case.floats["x"], case.floats["codebook"]
        # O(N + K*D): outputs (int64 index + fp32 distance per row) and the codebook, with slack 2x;
        # the N x K fp32 distance matrix (n * k * 4 bytes) would be far above it.
        allowance = 2 * (n * (cases.INT64_BYTES + cases.FP32_BYTES) + k * d * cases.DTYPE.itemsize)
        ours = done.get(("nearest_codebook", case.name, "fwd", cases.OURS))
        checks += [
            (f"nearest_codebook {case.name} K={k} D={d} fwd: speedup vs cdist+argmin",
             ratio("ms", "nearest_codebook", case.name, "fwd", "cdist+argmin", cases.OURS), ">=", 2.0),
            (f"nearest_codebook {case.name} fwd: peak memory / 2*(outputs + codebook) = {allowance / MiB:.1f} MiB",
             ours and ours["peak_extra_MiB"] * MiB / allowance, "<=", 1.0),
        ]
    for case in cases.sparse_attention_cases():
        if case.name == "full":
            continue  # no target: full is dense causal attention
        args = ("sparse_attention", case.name, "fwd+bwd")
        checks.append((f"sparse_attention {case.name} fwd+bwd: speedup vs compiled FlexAttention",
                       ratio("ms", *args, "FlexAttention compiled", cases.OURS), ">=", 1.2))
        if case.name in ("row", "column"):
            checks.append((f"sparse_attention {case.name} fwd+bwd: speedup vs SDPA causal flash (dense)",
                           ratio("ms", *args, "SDPA causal flash", cases.OURS), ">=", 2.5))
    for case in cases.sparse_attention_decode_cases():
        checks.append((f"sparse_attention_decode {case.name}, {case.floats['q'][2]} steps: speedup per step vs "
                       "SDPA over the full cache",
                       ratio("ms", "sparse_attention_decode", case.name, "fwd", "SDPA over the full cache", cases.OURS),
                       ">=", 5.0))
    for case in cases.fused_linear_cross_entropy_cases():
        args = ("fused_linear_cross_entropy", case.name, "fwd+bwd", cases.OURS, cases.PLAIN_CE)
        checks += [
            (f"fused_linear_cross_entropy loss step {case.name} fwd+bwd: peak memory / {cases.PLAIN_CE}'s",
             ratio("peak_extra_MiB", *args), "<=", 0.25),
            (f"fused_linear_cross_entropy loss step {case.name} fwd+bwd: time / {cases.PLAIN_CE}'s",
             ratio("ms", *args), "<=", 1.1),
        ]
    return [{"target": what, "achieved": value, "goal": f"{sense} {goal}",
             "verdict": "PASS" if value is not None and (value >= goal if sense == ">=" else value <= goal) else "MISS"}
            for what, value, sense, goal in checks]


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"# dalle_kernels on {report['device']} ({report['date']})", "",
             f"torch {report['torch']}, triton {report['triton']}, CUDA {report['cuda']}; inputs {report['dtype']}; "
             f"do_bench median (warmup {WARMUP_MS} ms, rep {REP_MS} ms, L2 flushed). "
             f"Copy bandwidth (read + write): {report['copy_GBps']:.0f} GB/s.", "",
             "| op | shapes | mode | contender | ms | GB/s | TFLOP/s | extra peak MiB | dalle_kernels speedup |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    ours = {(r["op"], r["case"], r["mode"]): r.get("ms")
            for r in report["measurements"] if r["contender"] == cases.OURS}
    for r in report["measurements"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shapes']} | {r['mode']} | {r['contender']} | error: "
                         f"{r['error'].splitlines()[0][:80]} | | | | |")
            continue
        base = ours.get((r["op"], r["case"], r["mode"]))
        lines.append(f"| {r['op']} | {r['shapes']} | {r['mode']} | {r['contender']} | {r['ms']:.3f} | "
                     f"{r['GBps']:.0f} | {fmt(r['TFLOPs'], '.1f')} | {r['peak_extra_MiB']:.1f} | "
                     f"{fmt(base and r['ms'] / base, '.2f')} |")
    lines += ["", "| target | achieved | goal | verdict |", "|---|---:|---|---|"]
    lines += [f"| {t['target']} | {fmt(t['achieved']) or 'not measured'} | {t['goal']} | {t['verdict']} |"
              for t in report["targets"]]
    return "\n".join(lines) + "\n"


def save(report: dict, stem: Path) -> None:
    """Evaluate the targets on what is measured so far and write ``stem``.json and .md."""
    report["targets"] = evaluate_targets(report["measurements"], report["copy_GBps"])
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))


def main() -> int:
    if not torch.cuda.is_available():
        print("benchmarks/report.py needs a CUDA GPU (torch.cuda.is_available() is False). "
              "On a CPU, time the reference against its peers with: python -m pytest benchmarks", file=sys.stderr)
        return 1
    device = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    stem = RESULTS_DIR / f"{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}-{date}"
    RESULTS_DIR.mkdir(exist_ok=True)
    report = {"device": device, "date": date, "torch": torch.__version__, "triton": triton.__version__,
              "cuda": torch.version.cuda, "dtype": str(cases.DTYPE).removeprefix("torch."),
              "do_bench": {"warmup_ms": WARMUP_MS, "rep_ms": REP_MS, "statistic": "median"},
              "copy_GBps": copy_bandwidth_gbps(), "measurements": [], "targets": []}
    print(f"{device}: copy bandwidth {report['copy_GBps']:.0f} GB/s", flush=True)
    for run in cases.runs(cases.all_cases()):
        record = measure(run)
        report["measurements"].append(record)
        print(f"{run.case.op} {run}: " + (record.get("error") or f"{record['ms']:.3f} ms"), flush=True)
        save(report, stem)  # a report cut short by a timeout still leaves what it measured
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
