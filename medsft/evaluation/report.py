"""The benchmark report: a rich table, benchmark.json, per-item records and a bar chart per source,
with the published HuatuoGPT-o1 figures beside ours where the sources match.

Why: a number means little alone. The table shows each source with its standard error, how many
generations had no answer (and how many of those ran out of tokens inside their reasoning) or were read
from an option's text, the adapter against its base on the same prompts, and the paper's Table 1 rows
for the same benchmarks, labelled as published figures (another model, another scorer: theirs takes the
better of first- and last-match accuracy; benchmark.json has that number too, `best_of_first_last`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError
from medsft.io.outputs import Staging

if TYPE_CHECKING:
    from medsft.evaluation.answers import Item

# Chen et al., "HuatuoGPT-o1, Towards Medical Complex Reasoning with LLMs", arXiv:2412.18925, Table 1
# (accuracy, %). A source matches a benchmark by name (MedQA_USLME_test, medqa_4options, …) and by its
# items' option count (MedQA's 4-option USMLE set, not the 5-option one).
PUBLISHED: dict[str, Any] = {
    "citation": "HuatuoGPT-o1 paper (Chen et al., arXiv:2412.18925), Table 1",
    "benchmarks": {"medqa": ("MedQA (USMLE, 4 options)", 4), "medmcqa": ("MedMCQA (validation)", 4),
                   "pubmedqa": ("PubMedQA (test)", 3)},
    "models": {
        "HuatuoGPT-o1-8B": {"medqa": 72.6, "medmcqa": 60.4, "pubmedqa": 79.2},
        "HuatuoGPT-o1-8B, SFT only": {"medqa": 69.0, "medmcqa": 57.9, "pubmedqa": 77.7},
        "Llama-3.1-8B-Instruct": {"medqa": 58.7, "medmcqa": 56.0, "pubmedqa": 75.2},
    },
}
MARK = "medsft benchmark report"  # benchmark.json carries it: medsft may rewrite a directory that has it
OURS = re.compile(r"^(benchmark\.json|predictions-.+\.jsonl|scores\.jsonl|accuracy-.+\.png)$")
MEDSFT_NAMES = {".medsft.lock", ".medsft-pending.json"}  # the writer's lock and journal (medsft/io)


def published_key(source: str, items: Sequence[Item]) -> str | None:
    """The Table 1 benchmark a source is, or None."""
    name = re.sub(r"[^a-z0-9]", "", source.lower())
    for key in ("pubmedqa", "medmcqa", "medqa"):  # "pubmedqa" contains "medqa": longest first
        if name.startswith(key):
            counts = {len(i.options) for i in items if i.source == source}
            return key if counts == {PUBLISHED["benchmarks"][key][1]} else None
    return None


def published_for(items: Sequence[Item]) -> dict:
    """{source: {model: accuracy (0-1)}} for the sources that match a published benchmark."""
    out = {}
    for source in dict.fromkeys(i.source for i in items):
        key = published_key(source, items)
        if key:
            out[source] = {"benchmark": PUBLISHED["benchmarks"][key][0],
                           "models": {m: v[key] / 100 for m, v in PUBLISHED["models"].items()}}
    return out


def check_output_dir(path: str | Path) -> Path:
    """Where a report goes, checked before any model loads: new, empty, or a report medsft wrote."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise MedsftError(f"--output-dir {str(out)!r} is a file", "choose a directory path")
    left = set(leftovers(out)) if out.is_dir() else set()
    if out.is_dir() and any(p.name not in MEDSFT_NAMES | left for p in out.iterdir()):
        try:
            ours = json.loads((out / "benchmark.json").read_text()).get("written_by") == MARK
        except (OSError, ValueError, AttributeError):
            ours = bool(Staging.pending(out))  # the first report into it, killed while renaming its files
        if not ours:
            raise MedsftError(f"--output-dir {str(out)!r} holds files medsft did not write",
                              "choose a new directory (medsft only replaces what it wrote)")
    from medsft.io.outputs import check_writable_dir

    check_writable_dir(out, "--output-dir")
    return out


@dataclass(frozen=True)
class Report:
    """A written benchmark report: benchmark.json's document, each model's results, the published figures beside
    them, where it was written and its per-item files (the commands show it: medsft/views.py)."""
    doc: dict
    results: dict
    published: dict
    out: Path
    files: list


def report(results: dict[str, dict], items: Sequence[Item], output_dir: str | Path, *, per_item: dict[str, list[dict]],
           single: bool = False) -> Report:
    """Write benchmark.json, `<name>.jsonl` per-item records and accuracy-<source>.png, as one unit.
    `results`: {model name: {"overall", "by_source", "settings", …}}; `single` writes the one model's
    object at the top level of benchmark.json (`score`), else one object per model (`eval`)."""
    from medsft.io.outputs import Staging
    from medsft.io.ownership import RunLock, inventory_one

    out = check_output_dir(output_dir)
    charts = chart_names(results)
    writes = [f"{n}.jsonl" for n in per_item] + list(charts.values()) + ["benchmark.json"]
    out.mkdir(parents=True, exist_ok=True)
    published = published_for(items)
    doc = {"written_by": MARK, **(next(iter(results.values())) if single else results)}
    if "adapter" in results and "base" in results:
        doc["delta"] = {"overall": results["adapter"]["overall"]["accuracy"] - results["base"]["overall"]["accuracy"],
                        "by_source": {s: b["accuracy"] - results["base"]["by_source"][s]["accuracy"]
                                      for s, b in results["adapter"]["by_source"].items()}}
    if published:
        doc["published"] = {"citation": PUBLISHED["citation"], "by_source": published}
    with RunLock(out, command="medsft score" if single else "medsft eval", name="--output-dir"), Staging(out) as staging:
        previous = check_report_writes(out, writes, report_inputs(results))
        for name, records in per_item.items():
            staging.path(f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                             for r in records), encoding="utf-8")
        for source, png in charts.items():
            plot_source(staging.path(png), source, {n: r["by_source"][source] for n, r in results.items()},
                        published.get(source))
        doc["files"] = {name: inventory_one(tmp) for name, tmp in staging.staged.items()}  # what a rewrite may replace
        staging.path("benchmark.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        for stale in previous:  # the previous report's files (other sources, other models); never an input
            (out / stale).unlink(missing_ok=True)
        staging.commit(last="benchmark.json")  # a directory whose benchmark.json is new has every file
    return Report(doc, results, published, out, [f"{n}.jsonl" for n in per_item])


def chart_names(results: dict[str, dict]) -> dict[str, str]:
    """{source: the file name of its chart}, one file per source (also on a case-insensitive disk)."""
    sources = list(next(iter(results.values()))["by_source"])
    names = {source: f"accuracy-{slug(source)}.png" for source in sources}
    folded = [n.casefold() for n in names.values()]
    for source, name in names.items():  # "MedQA" and "medqa", or a lossless name equal to another's slug
        if folded.count(name.casefold()) > 1:
            names[source] = f"accuracy-{slug(source, hashed=True)}.png"
    folded = [n.casefold() for n in names.values()]
    if len(set(folded)) < len(folded):  # only names made to collide with hashes are left: number them
        names = {source: f"accuracy-{i}-{slug(source, hashed=True)}.png" for i, source in enumerate(sources)}
    return names


def report_inputs(results: dict[str, dict]) -> set[Path]:
    """The files this report was made from (predictions, benchmark files), as its settings name them."""
    found = set()
    for result in results.values():
        settings = result.get("settings", {})
        for name in [settings.get("predictions"), *settings.get("files", [])]:
            if name:
                found.add(Path(name).expanduser().resolve())
    return found


def previous_report(out: Path) -> list[str]:
    """The files of the report already in `out` that medsft may replace or delete: those its benchmark.json
    lists, still unchanged (by content: medsft/io/ownership.py), those a killed rewrite was renaming into
    place (its journal, medsft/io/outputs.py Staging), temporary files a killed writer left, and benchmark.json.
    A report of an earlier medsft listed none: its files are those with a report's names written before its
    benchmark.json (which is written last), so a file the user added later is never taken for one."""
    from medsft.io.ownership import matches

    pending = {n: e for n, e in Staging.pending(out).items() if "/" not in n and matches(out / n, e)}
    left = leftovers(out)
    try:
        doc = json.loads((out / "benchmark.json").read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("written_by") != MARK:
        return sorted({*pending, *left})
    files = doc.get("files")
    if isinstance(files, dict):
        ours = [n for n, entry in files.items() if "/" not in n and matches(out / n, entry)]
    else:
        done = (out / "benchmark.json").stat().st_mtime_ns
        ours = [p.name for p in out.iterdir() if OURS.match(p.name) and p.is_file() and not p.is_symlink()
                and p.stat().st_mtime_ns <= done]
    return sorted(set(ours) | set(pending) | set(left) | {"benchmark.json"})


def leftovers(out: Path) -> list[str]:
    """Temporary files of a report's names that a killed writer left in `out` (medsft/io/outputs.py)."""
    from medsft.io.outputs import temporary_of

    return [p.name for p in out.iterdir() if OURS.match(temporary_of(p.name) or "") and p.is_file()]


def check_report_writes(out: Path, writes: list[str], inputs: set[Path]) -> list[str]:
    """Before anything is written: every file the report writes is new or the previous report's, and none
    is an input. Returns the previous report's files to delete (inputs kept)."""
    previous = previous_report(out) if out.is_dir() else []
    clash = [n for n in writes if ((out / n).exists() or (out / n).is_symlink()) and n not in previous]
    if clash:
        raise MedsftError(f"--output-dir {str(out)!r} holds {', '.join(clash[:3])}, which medsft did not write "
                          "(the report would overwrite it)", "move it, or choose a new --output-dir")
    read = [n for n in writes if (out / n).exists() and (out / n).resolve() in inputs]
    if read:
        raise MedsftError(f"--output-dir {str(out)!r}: the report would overwrite its own input {read[0]}",
                          "choose another --output-dir")
    return [n for n in previous if n not in writes and (out / n).resolve() not in inputs]


SLUG_CHARS = 80  # a file name stays far below the 255 bytes file systems allow


def slug(source: str, hashed: bool = False) -> str:
    """A file-name form of a source name: the name itself where it is one, else its safe characters,
    at most SLUG_CHARS of them, and a hash of the whole name ("MedQA/test" and "MedQA test" differ)."""
    from medsft.io.hashing import text_digest

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_.") or "source"
    if safe == source and len(safe) <= SLUG_CHARS and not hashed:
        return safe
    return f"{safe[:SLUG_CHARS]}-{text_digest(source.encode())[:10]}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def plot_source(png: Path, source: str, ours: dict[str, dict], published: dict | None) -> None:
    """Accuracy bars for one source: ours with ±1.96 standard errors, published figures hatched."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theirs = (published or {}).get("models", {})
    labels = list(ours) + [f"{m.replace(', ', chr(10))}\n(published)" for m in theirs]
    values = [100 * b["accuracy"] for b in ours.values()] + [100 * v for v in theirs.values()]
    errors = [196 * b["stderr"] for b in ours.values()] + [0] * (len(labels) - len(ours))
    fig, ax = plt.subplots(figsize=(max(4.0, 2.0 * len(labels)), 4.2))
    bars = ax.bar(range(len(labels)), values,
                  color=["tab:blue", "tab:orange", "tab:green"][:len(ours)] + ["lightgrey"] * (len(labels) - len(ours)))
    ax.errorbar(range(len(ours)), values[:len(ours)], yerr=errors[:len(ours)], fmt="none", capsize=4, color="black")
    for bar in bars[len(ours):]:
        bar.set_hatch("//")
    for bar, v, e in zip(bars, values, errors):
        ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v + e + 1), ha="center", va="bottom", fontsize=8)
    chance = 100 * next(iter(ours.values()))["chance"]
    ax.axhline(chance, ls="--", color="grey", lw=1, label=f"chance {chance:.1f}%")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(f"{source} (n={next(iter(ours.values()))['n']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100, format="png")  # `png` is a staged path (report), renamed into place with the rest
    plt.close(fig)
