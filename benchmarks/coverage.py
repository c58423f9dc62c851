"""Architecture coverage: how much of each wide-zoo model prunec can prune, and why the rest
stays.

For every architecture of ``tests/zoo/hf_wide.py`` (Hugging Face ``transformers`` models built
offline from tiny configs, plus torch's ``nn.TransformerEncoder``) it runs the checks of
``tests/zoo/wide_checks.py`` -- capture; ratio 0 is the identity; ``MagnitudePruning(0.3)``
and ``RandomPruning(0.5)`` keep output shapes, stay finite and cut MACs; zeroing equivalence
over the groups not normalised over; the caller's model untouched -- and records:

- the share of MACs in ops that touch a prunable channel group;
- whether attention heads were found and are prunable;
- MACs before and after ``MagnitudePruning(0.3)`` (global, ``round_to=8``);
- for the MACs no prunable group reaches, the reason the analysis gives (op and cause).

Run: ``python benchmarks/coverage.py [name ...]`` -> benchmarks/results/coverage.{md,json}
(``--markdown-only`` re-writes the Markdown from the JSON).
"""
from __future__ import annotations

import json
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.zoo.hf_wide import FAMILIES, WIDE  # noqa: E402
from tests.zoo.wide_checks import MIN_SHARE, check_architecture  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run_one(name: str) -> dict:
    """Every check on one architecture; a failed check is recorded, not raised."""
    start = time.perf_counter()
    row: dict = {"name": name, "family": FAMILIES.get(name, "")}
    try:
        res = check_architecture(WIDE[name]())
    except Exception as err:  # noqa: BLE001 -- a failed check is a result to report
        row.update(status="check failed", detail=f"{type(err).__name__}: {err}"[:400],
                   where="".join(traceback.format_exception(err)[-3:])[-600:])
        row["seconds"] = round(time.perf_counter() - start, 1)
        return row
    row["params"] = res.params
    row["phase_seconds"] = {k: round(v, 1) for k, v in res.seconds.items()}
    if res.error is not None:
        row.update(status="PrunecError", detail=res.error[:400])
    else:
        cov = res.coverage
        row.update(
            status="ok" if cov.share >= MIN_SHARE else "below 30%",
            macs=res.macs, prunable_macs=cov.prunable_macs, share=round(cov.share, 4),
            head_groups=cov.attention_groups, prunable_head_groups=cov.prunable_heads,
            macs_magnitude_0_3=res.macs_magnitude, macs_random_0_5=res.macs_random,
            zeroing_max_diff=res.zeroing_diff, zeroing_groups=res.zeroing_groups,
            blocked=[{"reason": r, "macs": m, "share": round(m / res.macs, 4)}
                     for r, m in cov.blocked.items()])
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _heads(r: dict) -> str:
    if not r.get("head_groups"):
        return "no head groups"
    return f"{r['prunable_head_groups']}/{r['head_groups']} layers"


def _blocked(r: dict) -> str:
    items = [f"{b['share']:.0%}: {b['reason']}" for b in r.get("blocked", [])[:3] if b["share"] >= 0.005]
    return "<br>".join(items).replace("|", "\\|") or "-"


def write(rows: list[dict], env: dict) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "PrunecError"]
    short = [r for r in rows if r["status"] == "below 30%"]
    failed = [r for r in rows if r["status"] == "check failed"]
    heads = [r for r in rows if r.get("head_groups")]
    lines = [
        "# Architecture coverage",
        "",
        f"{len(rows)} architectures (Hugging Face `transformers` {env['transformers']} models built "
        "offline from tiny configs, and torch's `nn.TransformerEncoder`), random weights.",
        "",
        f"- **{len(ok)} of {len(rows)}** run with at least {MIN_SHARE:.0%} of their MACs in prunable "
        f"channel groups and pass every check;",
        f"- {len(short)} run correctly but with less than {MIN_SHARE:.0%} of their MACs prunable;",
        f"- {len(errors)} raise a `PrunecError` at capture;",
        f"- {len(failed)} fail a check;",
        f"- attention heads are prunable in {sum(r['prunable_head_groups'] > 0 for r in heads)} of the "
        f"{len(heads)} architectures where head groups were found.",
        "",
        "Checks per architecture (tests/zoo/wide_checks.py): ratio 0 gives the model's outputs; "
        "`MagnitudePruning(0.3)` and `RandomPruning(0.5)` (global, `round_to=8`) keep the output "
        "structure and shapes, stay finite and cut MACs; the pruned program equals the model with "
        "the removed channels zeroed (over the groups no op normalises over; max abs difference "
        "below 1e-4); the caller's state dict and training flag are unchanged.",
        "",
        "*Prunable MACs*: MACs of the ops (convolutions, linear layers, matrix products, attention) "
        "that touch at least one prunable channel group. *Blocked*: for the other ops, the reason "
        "the channel analysis records (largest shares first, node names removed). MACs are counted "
        "at the example input (batch 2), 1 MAC per multiply-accumulate. *Heads prunable*: layers "
        "whose `scaled_dot_product_attention` head groups are prunable; *no head groups*: the model "
        "has no such op (convolutional models, and attention written as matmul + softmax, e.g. "
        "SwinV2, LeViT, GPT-J and Gemma2 in eager mode, whose head-axis channels fall into plain "
        "groups). SwinV2, YOLOS and BLOOM go through capture's retry ladder (window padding, "
        "interpolated position embeddings and ALiBi slopes cannot take symbolic image or sequence "
        "sizes: batch axis dynamic, other axes static); Swin captures fully dynamic but exports "
        "about 40x slower that way, so it runs with `dynamic=False`; Mixtral and Qwen2-MoE run their experts as `batched_mm` (the "
        "default `grouped_mm` is an opaque custom op with no coupling rule).",
        "",
        f"Machine: {env['platform']}, python {env['python']}, torch {env['torch']}, "
        f"{env['threads']} thread(s); run took {env['seconds']:.0f} s"
        + (f" (re-run later: {', '.join(env['rerun'])})" if env.get("rerun") else "") + ".",
        "",
        "| architecture | family | MACs | prunable | heads prunable | MACs after magnitude 0.3 | "
        "zeroing diff | status | blocked (share of MACs: reason) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "macs" in r:
            cut = 1 - r["macs_magnitude_0_3"] / r["macs"]
            z = "-" if r["zeroing_max_diff"] is None else f"{r['zeroing_max_diff']:.1e}"
            lines.append(f"| {r['name']} | {r['family']} | {r['macs']:,} | {r['share']:.0%} | {_heads(r)} | "
                         f"{r['macs_magnitude_0_3']:,} (-{cut:.0%}) | {z} | {r['status']} | {_blocked(r)} |")
        else:
            detail = r["detail"].replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r['name']} | {r['family']} | - | - | - | - | - | {r['status']} | {detail} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coverage.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "coverage.json").write_text(json.dumps({"environment": env, "architectures": rows},
                                                      indent=2, default=str))


def main(names: list[str]) -> None:
    import transformers

    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for name in names or list(WIDE):
        rows.append(run_one(name))
        r = rows[-1]
        print(f"{name}: {r['status']} share={r.get('share')} heads={r.get('prunable_head_groups')}/"
              f"{r.get('head_groups')} {r.get('detail', '')[:200]} ({r['seconds']} s)", flush=True)
    env = {"platform": platform.platform(), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "seconds": time.perf_counter() - start}
    path = RESULTS / "coverage.json"
    if names and path.exists():  # re-run of some architectures: replace their rows only
        data = json.loads(path.read_text())
        fresh = {r["name"]: r for r in rows}
        rows = [fresh.pop(r["name"], r) for r in data["architectures"]] + list(fresh.values())
        env = {**data["environment"],
               "rerun": sorted(set(data["environment"].get("rerun", [])) | set(names))}
    write(rows, env)


def rewrite_markdown() -> None:
    """Re-write coverage.md from coverage.json (no model is run)."""
    data = json.loads((RESULTS / "coverage.json").read_text())
    write(data["architectures"], data["environment"])


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown-only"]:
        rewrite_markdown()
    else:
        main(sys.argv[1:])
