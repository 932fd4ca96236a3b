"""The files of an evaluation, in ``<run>/eval/``: ``report.json`` (the numbers), ``report.md``
(the same as a page to read), ``samples.png`` (prompts' real images, then their samples best
first) and, on the shapes data, ``rerank_curve.png`` and ``attribute_accuracy.png``.

``report.json`` schema (``format`` ``dalle_fast.evaluate/2``; /1 had no intervals and no ``groups``).
Every key is always present; a
value that does not apply is ``null``. Shares are in [0, 1]; losses in nats unless named bits.

- ``format``, ``run`` (run directory), ``preset`` (config name), ``dataset`` (``"shapes"`` or the
  data path), ``split`` (``"val"`` or ``"test"``), ``data`` (a line: what the split holds and,
  for user data, the filter counts), ``seconds`` (wall time of the evaluation).
- ``settings``: ``seed``, ``num_prompts`` (prompts used), ``samples_per_prompt``,
  ``temperature``, ``top_k``, ``inception_weights`` (path or null), ``device``, ``reranker`` (the
  CLIP of the scores, reranking and CLIP features: ``"run"``, the run's own, or
  ``"open_clip:MODEL"``).
- ``vae`` (every image of the split through tokens and back): ``psnr`` (dB), ``codes_used``
  (share of the codebook), ``perplexity``, ``attribute_agreement`` (shapes data; else null),
  ``attribute_agreement_heldout`` (the same over the images of held-out pairs; null without any).
- ``transformer`` (the split's first captions and dVAE tokens): ``text_loss``, ``image_loss``,
  ``image_bits_per_token`` (= image_loss / ln 2).
- ``clip_score`` (mean cosine similarity with the prompt under the ``reranker``): ``first`` (each
  prompt's first sample), ``reranked`` (its CLIP-best sample), ``real`` (its real image).
- ``fid``: ``clip`` and ``inception``, each ``{"first", "reranked"}``: Fréchet distance between
  the first / CLIP-best samples and the prompts' real images, on CLIP image embeddings and on
  Inception pool3 features (null without ``--inception-weights``; all null under 2 prompts);
  ``images``: how many images each set holds. With few prompts FID is biased upward: compare
  values only at equal ``images``.
- ``groups`` (data with held-out compositions, shapes and emoji; else null): ``held_in`` and
  ``held_out`` (on emoji: prompts of names seen in training and of held-out names), each null
  without prompts, else ``{"prompts": n, "clip_score": {"first", "reranked", "real"},
  "fid_clip": {"first", "reranked"}, "retrieval": r}``: the group's mean CLIP scores, its FID on
  CLIP features (null under 2 prompts) and, where the data has a gallery of every real image
  (emoji), ``r`` = ``{"first": {"top1", "top5"}, "reranked": {"top1", "top5"}, "intervals":
  {"first": ci, "reranked": ci}}``, the share of prompts whose own real image is the nearest /
  among the 5 nearest of the whole gallery to the sample in 16x16 RGB pixels, ``ci`` their 95%
  Wilson intervals ``[low, high]`` (``r`` null without a gallery).
- ``attributes`` (shapes data; else null): ``held_in`` and ``held_out`` (prompts of (color,
  shape) pairs seen in training and held out of it), each ``{"prompts": n, "first": acc,
  "reranked": acc, "intervals": {"first": ci, "reranked": ci}}`` with ``acc`` = ``{"size",
  "color", "shape", "position", "all"}`` shares judged by the shapes reader and ``ci`` the same
  keys -> ``[low, high]``, their 95% Wilson intervals over the group's prompts (null when the group
  has no prompt).
- ``rerank_curve`` (shapes data; else null): ``samples`` = [1, 2, 4, ..., S]; ``held_in``,
  ``held_out``, ``all``: for each count k, the share of prompts whose CLIP-best of their first k
  samples is right on all four attributes (null for a group without prompts).
- ``prompts``: ``[{"caption", "heldout"}]`` in order (heldout null off the shapes data).
- ``plots``: file names in ``eval/`` of ``samples``, ``rerank_curve``, ``attribute_accuracy``
  (the last two null off the shapes data).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic
from ..grid import save_grid
from .metrics import ALL, ATTRIBUTE_FIELDS
from .pipeline import GROUPS, Samples
from .plot import bar_chart, line_chart

FORMAT = "dalle_fast.evaluate/2"
EVAL_DIR = "eval"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
PLOTS = {"samples": "samples.png", "rerank_curve": "rerank_curve.png", "attribute_accuracy": "attribute_accuracy.png"}
GRID_PROMPTS, GRID_SAMPLES = 8, 8  # prompts and samples shown in samples.png
LABELS = {"held_in": "held-in", "held_out": "held-out", ALL: "all prompts"}

# The keys of report.json, in order, and of its sections (schema-stable: tests pin them).
KEYS = ("format", "run", "preset", "dataset", "split", "data", "settings", "vae", "transformer", "clip_score",
        "fid", "groups", "attributes", "rerank_curve", "prompts", "plots", "seconds")
SECTION_KEYS = {
    "settings": ("seed", "num_prompts", "samples_per_prompt", "temperature", "top_k", "inception_weights", "device",
                 "reranker"),
    "vae": ("psnr", "codes_used", "perplexity", "attribute_agreement", "attribute_agreement_heldout"),
    "transformer": ("text_loss", "image_loss", "image_bits_per_token"),
    "clip_score": ("first", "reranked", "real"),
    "fid": ("clip", "inception", "images"),
    "groups": tuple(GROUPS),
    "attributes": tuple(GROUPS),
    "rerank_curve": ("samples", *GROUPS, ALL),
    "plots": tuple(PLOTS),
}


def write_report(run_dir: Path, report: dict[str, Any], samples: Samples, real: torch.Tensor) -> Path:
    """Write the evaluation files into ``run_dir/eval/`` (atomically each) and return the folder.
    ``report``: what :func:`.pipeline.evaluate` returns (``format`` and ``plots`` are added here)."""
    out = run_dir / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    plots = {name: None for name in PLOTS}
    save_sample_grid(out / PLOTS["samples"], samples, real)
    plots["samples"] = PLOTS["samples"]
    if report["rerank_curve"] is not None:
        save_plots(out, report)
        plots.update({name: PLOTS[name] for name in ("rerank_curve", "attribute_accuracy")})
    full = {key: FORMAT if key == "format" else plots if key == "plots" else report[key] for key in KEYS}
    text = json.dumps(full, indent=2) + "\n"
    write_atomic(out / REPORT_JSON, lambda tmp: Path(tmp).write_text(text))
    page = markdown(full)
    write_atomic(out / REPORT_MD, lambda tmp: Path(tmp).write_text(page))
    return out


def save_sample_grid(path: Path, samples: Samples, real: torch.Tensor) -> None:
    """The first ``GRID_PROMPTS`` prompts, a row each: the real image, then up to
    ``GRID_SAMPLES`` samples in order of CLIP score, best first."""
    order = samples.scores.argsort(dim=1, descending=True)[:, :GRID_SAMPLES]
    rows = [torch.cat([real[p][None], samples.images[p][order[p]]]) for p in range(min(GRID_PROMPTS, len(real)))]
    save_grid(rows, path)


def save_plots(out: Path, report: dict[str, Any]) -> None:
    """The reranking curve and the per-attribute accuracy bars of a shapes ``report``."""
    curve = report["rerank_curve"]
    series = {LABELS[group]: curve[group] for group in (*GROUPS, ALL) if curve[group] is not None}
    line_chart(out / PLOTS["rerank_curve"], "Accuracy on all four attributes vs samples reranked by CLIP",
               "samples per prompt reranked by CLIP", "%", [str(k) for k in curve["samples"]], series)
    bars = {f"{LABELS[group]}, {kind}": [part[kind][key] for key in (*ATTRIBUTE_FIELDS, ALL)]
            for group, part in report["attributes"].items() if part["prompts"] for kind in ("first", "reranked")}
    bar_chart(out / PLOTS["attribute_accuracy"], "Attribute accuracy: first sample vs CLIP-reranked",
              "attribute", "%", [*ATTRIBUTE_FIELDS, "all four"], bars)


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _share_with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None or interval is None:
        return _share(value)
    return f"{100 * value:.1f}% ({100 * interval[0]:.0f}-{100 * interval[1]:.0f})"


def group_table(groups: dict[str, Any]) -> list[str]:
    """The lines of ``report.md``'s table of the ``groups`` part: CLIP scores, CLIP FID and, with a
    gallery, retrieval top-1 / top-5 of the first and the CLIP-best sample, per group."""
    retrieval = any(part is not None and part["retrieval"] is not None for part in groups.values())
    head = "| prompts | CLIP score first / reranked / real | FID, CLIP features, first / reranked |"
    lines = ["## By group of prompts", ""]
    if retrieval:
        lines += ["Retrieval: the share of prompts whose own real image is the nearest (top-1) or among the 5 "
                  "nearest (top-5) of every real image to the sample, in 16x16 RGB pixels; 95% Wilson intervals.", ""]
        head += " top-1 first | top-1 reranked | top-5 first | top-5 reranked |"
    lines += [head, "|---|---|---|" + ("---|" * 4 if retrieval else "")]
    for group, part in groups.items():
        if part is None:
            continue
        clip, fid, r = part["clip_score"], part["fid_clip"], part["retrieval"]
        row = (f"| {LABELS[group]} ({part['prompts']}) | {_number(clip['first'])} / {_number(clip['reranked'])} / "
               f"{_number(clip['real'])} | {_number(fid['first'], 4)} / {_number(fid['reranked'], 4)} |")
        if retrieval:
            row += "".join(f" {_share_with_interval(r[kind][key], r['intervals'][kind][key])} |"
                           for key in ("top1", "top5") for kind in ("first", "reranked"))
        lines.append(row)
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    """``report.md``: the report as a page (tables of the same numbers as report.json)."""
    s, vae, tf, clip, fid = (report[k] for k in ("settings", "vae", "transformer", "clip_score", "fid"))
    lines = [
        f"# Evaluation of `{report['run']}` ({report['preset']} preset)", "",
        (f"Data: {report['data']}. {s['num_prompts']} prompts x {s['samples_per_prompt']} samples (temperature "
         f"{s['temperature']}, top-k {s['top_k']}, seed {s['seed']}, {s['device']}), reranked by "
         f"{'the run' + chr(39) + 's CLIP' if s['reranker'] == 'run' else s['reranker']}; "
         f"{report['seconds']:.1f} s."), "",
        "| model | metric | value |", "|---|---|---|",
        f"| dVAE | PSNR (dB) | {_number(vae['psnr'], 2)} |",
        f"| dVAE | codebook used | {_share(vae['codes_used'])} (perplexity {_number(vae['perplexity'], 1)}) |",
        f"| dVAE | attribute agreement | {_share(vae['attribute_agreement'])} |",
        f"| dVAE | attribute agreement, held-out pairs | {_share(vae['attribute_agreement_heldout'])} |",
        f"| transformer | image loss (bits/token) | {_number(tf['image_bits_per_token'])} |",
        f"| transformer | text loss (nats) | {_number(tf['text_loss'])} |",
        (f"| CLIP score | first sample / reranked / real | {_number(clip['first'])} / {_number(clip['reranked'])} / "
         f"{_number(clip['real'])} |"),
        (f"| FID, CLIP features ({fid['images']} images) | first / reranked | {_number(fid['clip']['first'], 4)} / "
         f"{_number(fid['clip']['reranked'], 4)} |"),
        (f"| FID, Inception ({fid['images']} images) | first / reranked | {_number(fid['inception']['first'], 2)} / "
         f"{_number(fid['inception']['reranked'], 2)} |"), "",
    ]
    if report["groups"] is not None:
        lines += group_table(report["groups"])
    if report["attributes"] is not None:
        lines += ["## Attribute accuracy (shapes reader)", "",
                  "Each share with its 95% Wilson interval over the group's prompts.", "",
                  "| prompts | sample | " + " | ".join(ATTRIBUTE_FIELDS) + " | all four |",
                  "|---|---|" + "---|" * (len(ATTRIBUTE_FIELDS) + 1)]
        for group, part in report["attributes"].items():
            for kind in ("first", "reranked"):
                acc, ci = part[kind] or {}, (part["intervals"] or {}).get(kind) or {}
                lines.append(f"| {LABELS[group]} ({part['prompts']}) | {kind} | "
                             + " | ".join(_share_with_interval(acc.get(k), ci.get(k))
                                          for k in (*ATTRIBUTE_FIELDS, ALL)) + " |")
        curve = report["rerank_curve"]
        lines += ["", "## Reranking curve (all four attributes right)", "",
                  "| samples reranked | " + " | ".join(str(k) for k in curve["samples"]) + " |",
                  "|---|" + "---|" * len(curve["samples"])]
        for group in (*GROUPS, ALL):
            values = curve[group] or [None] * len(curve["samples"])
            lines.append(f"| {LABELS[group]} | " + " | ".join(_share(v) for v in values) + " |")
        lines += ["", f"![reranking curve]({PLOTS['rerank_curve']})",
                  f"![attribute accuracy]({PLOTS['attribute_accuracy']})", ""]
    lines += ["## Samples", "", "Each row: the prompt's real image, then its samples, best CLIP score first.", "",
              f"![samples]({PLOTS['samples']})", ""]
    lines += [f"{k + 1}. {p['caption']}" + (" (held-out pair)" if p["heldout"] else "")
              for k, p in enumerate(report["prompts"][:GRID_PROMPTS])]
    return "\n".join(lines) + "\n"
