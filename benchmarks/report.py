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

``--part headline`` measures only each op's main case against its strongest peer (``cases.HEADLINE``);
``--part rest`` then adds everything else to the same results file. ``--rehearse`` runs every case
and contender at tiny shapes on the CPU (dalle_kernels through Triton's interpreter, the peers
eagerly, torch.compile'd ones uncompiled) through this same code: measuring (placeholder times, no
timing kept), the targets, the tables and the files, written to a temporary folder; it exits 1
when a contender fails, a target finds no measurement, or the files do not read back.
"""
import argparse
import datetime
import json
import os
import re
import sys
import tempfile
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


class CudaBench:
    """How the report measures on a CUDA GPU."""

    rehearsal = False

    @staticmethod
    def median_ms(fn: Callable[[], object]) -> float:
        return do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")

    def copy_bandwidth_gbps(self) -> float:
        """GB/s of a large device-to-device ``copy_``, counting bytes read + bytes written."""
        src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        return 2 * COPY_BYTES / self.median_ms(lambda: dst.copy_(src)) / 1e6

    @staticmethod
    def peak_extra_bytes(step: Callable[[], object]) -> int:
        """Peak memory allocated while ``step`` runs, beyond what was allocated before (the inputs)."""
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before


class RehearsalBench:
    """The CPU stand-in of :class:`CudaBench` for ``--rehearse``: every step runs (once more), nothing is
    timed; times, bandwidth and peak memory are placeholders (1 ms, 1 GB/s, 1 MiB)."""

    rehearsal = True

    @staticmethod
    def median_ms(fn: Callable[[], object]) -> float:
        fn()
        return 1.0

    def copy_bandwidth_gbps(self) -> float:
        return 1.0

    @staticmethod
    def peak_extra_bytes(step: Callable[[], object]) -> int:
        step()
        return MiB


def measure(run: cases.Run, bench=None, device=cases.DEVICE, dtype=cases.DTYPE) -> dict:
    """Time and peak memory of one run; a failure is recorded as ``error`` instead."""
    bench = bench or CudaBench()
    record = {"op": run.case.op, "case": run.case.name, "shapes": run.case.describe(), "mode": run.mode,
              "contender": run.contender.name, "bytes": run.bytes, "flops": run.flops}
    try:
        # first call: compile / autotune
        step = cases.make_step(run, cases.make_inputs(run.case, run.backward, device, dtype))
        peak = bench.peak_extra_bytes(step)  # before timing, so no gradient of an earlier call is counted as input
        ms = bench.median_ms(step)
        record.update(ms=ms, GBps=run.bytes / ms / 1e6, peak_extra_MiB=peak / MiB,
                      TFLOPs=None if run.flops is None else run.flops / ms / 1e9)
    except Exception as error:  # noqa: BLE001 -- one failing contender must not sink the report
        record["error"] = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
    return record


def evaluate_targets(records: list[dict], copy_gbps: float, case_list: list[cases.Case] | None = None) -> list[dict]:
    """The issue's targets over the cases of ``case_list`` (default: this machine's ``cases.all_cases()``):
    each with the achieved value, the goal and PASS / MISS."""
    done = {(r["op"], r["case"], r["mode"], r["contender"]): r for r in records if "error" not in r}
    case_list = cases.all_cases() if case_list is None else case_list

    def of(op: str) -> list[cases.Case]:
        return [case for case in case_list if case.op == op]

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
    for case in of("gumbel_softmax_codebook"):
        args = ("gumbel_softmax_codebook", case.name, "fwd+bwd")
        checks += [
            (f"gumbel_softmax_codebook {case.name} fwd+bwd: speedup vs gumbel_softmax+matmul",
             ratio("ms", *args, "gumbel_softmax+matmul", cases.OURS), ">=", 2.0),
            (f"gumbel_softmax_codebook {case.name} fwd+bwd: peak memory / gumbel_softmax+matmul's",
             ratio("peak_extra_MiB", *args, cases.OURS, "gumbel_softmax+matmul"), "<=", 0.5),
        ]
    for case in of("nearest_codebook"):
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
    for case in of("sparse_attention"):
        if case.name == "full":
            continue  # no target: full is dense causal attention
        args = ("sparse_attention", case.name, "fwd+bwd")
        checks.append((f"sparse_attention {case.name} fwd+bwd: speedup vs compiled FlexAttention",
                       ratio("ms", *args, "FlexAttention compiled", cases.OURS), ">=", 1.2))
        if case.name in ("row", "column"):
            checks.append((f"sparse_attention {case.name} fwd+bwd: speedup vs SDPA causal flash (dense)",
                           ratio("ms", *args, "SDPA causal flash", cases.OURS), ">=", 2.5))
    for case in of("sparse_attention_decode"):
        checks.append((f"sparse_attention_decode {case.name}, {case.floats['q'][2]} steps: speedup per step vs "
                       "SDPA over the full cache",
                       ratio("ms", "sparse_attention_decode", case.name, "fwd", "SDPA over the full cache", cases.OURS),
                       ">=", 5.0))
    for case in of("fused_linear_cross_entropy"):
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


def save(report: dict, stem: Path, case_list: list[cases.Case] | None = None) -> None:
    """Evaluate the targets on what is measured so far and write ``stem``.json and .md."""
    report["targets"] = evaluate_targets(report["measurements"], report["copy_GBps"], case_list)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))


def key(record: dict) -> tuple:
    return record["op"], record["case"], record["mode"], record["contender"]


def ordered_runs(case_list: list[cases.Case], part: str, on_gpu: bool) -> list[cases.Run]:
    """The runs of ``part``: ``headline`` (each op's main case vs its strongest peer), ``rest`` (the
    others) or ``all`` (headline first)."""
    every = cases.runs(case_list, on_gpu=on_gpu)
    headline = [run for run in every if cases.is_headline(run, case_list)]
    rest = [run for run in every if not cases.is_headline(run, case_list)]
    return {"headline": headline, "rest": rest, "all": headline + rest}[part]


def run_report(report: dict, runs: list[cases.Run], stem: Path, bench, device, dtype,
               case_list: list[cases.Case] | None = None) -> dict:
    """Measure ``runs`` not yet in ``report``, saving ``stem``.json / .md after each; print the table."""
    done = {key(r) for r in report["measurements"] if "error" not in r}
    report["measurements"] = [r for r in report["measurements"] if "error" not in r]
    for run in runs:
        if (run.case.op, run.case.name, run.mode, run.contender.name) in done:
            continue
        record = measure(run, bench, device, dtype)
        report["measurements"].append(record)
        print(f"{run.case.op} {run}: " + (record.get("error") or f"{record['ms']:.3f} ms"), flush=True)
        save(report, stem, case_list)  # a report cut short by a timeout still leaves what it measured
    save(report, stem, case_list)
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return report


# What cannot run on a CPU, by (contender, mode): the error it raises there. The rehearsal reports
# it and excuses the targets that need it (their text holds TARGET_OF_LIMIT's words).
CPU_LIMITS = {("FlexAttention compiled", "fwd+bwd"): "FlexAttention does not support backward on CPU"}
TARGET_OF_LIMIT = {("FlexAttention compiled", "fwd+bwd"): "compiled FlexAttention"}


def rehearsal_problems(stem: Path, runs: list[cases.Run]) -> list[str]:
    """What the rehearsal found wrong: failed contenders, runs missing from the file, targets without a
    measurement, files that do not read back."""
    try:
        report = json.loads(stem.with_suffix(".json").read_text())
        table = stem.with_suffix(".md").read_text()
    except (OSError, ValueError) as error:
        return [f"results files: {error}"]
    excused = {(r["contender"], r["mode"]) for r in report["measurements"]
               if "error" in r and CPU_LIMITS.get((r["contender"], r["mode"]), "\0") in r["error"]}
    found = [f"{r['op']} {r['case']} {r['mode']} {r['contender']}: {r['error']}"
             for r in report["measurements"] if "error" in r and (r["contender"], r["mode"]) not in excused]
    measured = {key(r) for r in report["measurements"]}
    found += [f"{run.case.op} {run}: not in the results file" for run in runs
              if (run.case.op, run.case.name, run.mode, run.contender.name) not in measured]
    excused_targets = {TARGET_OF_LIMIT[limit] for limit in excused}
    found += [f"target {t['target']!r}: no measurement to check it against"
              for t in report["targets"] if t["achieved"] is None
              and not any(text in t["target"] and "fwd+bwd" in t["target"] for text in excused_targets)]
    if not report["targets"]:
        found.append("no targets evaluated")
    found += [f"{r['op']} {r['contender']}: missing from the Markdown table"
              for r in report["measurements"] if f"| {r['op']} |" not in table or r["contender"] not in table]
    return found


def rehearse(argv: list[str], out: Path | None) -> int:
    """``--rehearse``: the whole report at tiny shapes on the CPU (see the module docstring)."""
    from dalle_kernels.backend import interpreting
    if not interpreting():  # Triton reads TRITON_INTERPRET when it is imported: start again with it set
        env = os.environ | {"TRITON_INTERPRET": "1", "DALLE_KERNELS_BACKEND": "triton"}
        os.execve(sys.executable, [sys.executable, __file__, *argv], env)
    cases.compiled = lambda fn: fn  # torch.compile's C++ build takes minutes on a CPU: the eager function
    case_list = cases.all_cases(cases.TINY_SIZES, cases.TINY_ATTENTION, cases.TINY_HEAD)
    runs = ordered_runs(case_list, "all", on_gpu=True)
    folder = out or Path(tempfile.mkdtemp(prefix="report-rehearsal-"))
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / "rehearsal-cpu"
    report = new_report("rehearsal on CPU (tiny shapes; times are placeholders, not measurements)",
                        RehearsalBench(), torch.float32)
    run_report(report, runs, stem, RehearsalBench(), torch.device("cpu"), torch.float32, case_list)
    problems = rehearsal_problems(stem, runs)
    for problem in problems:
        print(f"REHEARSAL FAIL {problem}", file=sys.stderr)
    print(f"rehearsal: {len(runs)} runs of {len(case_list)} cases, {len(problems)} problem(s): "
          f"{'PASS' if not problems else 'FAIL'} ({folder})")
    return 1 if problems else 0


def new_report(device: str, bench, dtype: torch.dtype) -> dict:
    return {"device": device, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "dtype": str(dtype).removeprefix("torch."),
            "do_bench": {"warmup_ms": WARMUP_MS, "rep_ms": REP_MS, "statistic": "median"},
            "copy_GBps": bench.copy_bandwidth_gbps(), "measurements": [], "targets": []}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="The GPU benchmark report (see the module docstring).")
    parser.add_argument("--part", choices=("all", "headline", "rest"), default="all",
                        help="headline: each op's main case vs its strongest peer; rest: the others, added to "
                             "today's results file")
    parser.add_argument("--rehearse", action="store_true", help="tiny shapes on the CPU, no timings, to a temp folder")
    parser.add_argument("--out", type=Path, help="folder of the results files (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.rehearse:
        return rehearse(argv, args.out)
    if not torch.cuda.is_available():
        print("benchmarks/report.py needs a CUDA GPU (torch.cuda.is_available() is False). "
              "On a CPU, time the reference against its peers with: python -m pytest benchmarks; "
              "rehearse the report with: python benchmarks/report.py --rehearse", file=sys.stderr)
        return 1
    device = torch.cuda.get_device_name()
    folder = args.out or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}-{datetime.date.today().isoformat()}"
    bench = CudaBench()
    report = new_report(device, bench, cases.DTYPE)
    if args.part == "rest" and stem.with_suffix(".json").exists():  # add to what --part headline measured
        report["measurements"] = json.loads(stem.with_suffix(".json").read_text())["measurements"]
    print(f"{device}: copy bandwidth {report['copy_GBps']:.0f} GB/s", flush=True)
    run_report(report, ordered_runs(cases.all_cases(), args.part, on_gpu=True), stem, bench, cases.DEVICE,
               cases.DTYPE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
