"""Release reports: report.json/md/html, the terminal summary, and comparing two releases (`eval compare`)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from text2sql.errors import DataError
from text2sql.files import write_atomic


def write_report(report: dict, out: Path) -> None:
    """Write report.json, report.md and report.html into `out` (each atomically)."""
    out = Path(out)
    body = {k: v for k, v in report.items() if k != "path"}
    write_atomic(out / "report.json", json.dumps(body, indent=2, default=_to_json) + "\n")
    write_atomic(out / "report.md", render_markdown(body))
    write_atomic(out / "report.html", render_html(body))


def _to_json(value):
    """JSON for what `json` cannot write itself: an `Example` (or `Report`) as its report.json object, else text."""
    return value.to_json() if hasattr(value, "to_json") else str(value)


def format_summary(report: dict) -> str:
    """A few lines for the terminal: EX, slices, verdicts, where the report is."""
    m = report["metrics"]
    lines = [
        f"release {report['release']}  dataset {report['dataset']}/{report.get('split')}  mode {report['mode']}",
        f"EX {m['ex']:.1%} ({m['correct']}/{m['n']})   valid SQL {m['valid_sql_rate']:.1%}   "
        f"exact match {m['exact_match']:.1%}   "
        + "  ".join(f"{k} {v:.1%}" for k, v in m["ex_by_mode"].items() if k != report["mode"]),
    ]
    if report.get("subset"):
        lines.insert(1, subset_line(report))
    if report.get("selection"):
        lines.append(f"candidate selection: {_selection_row(report['selection'])}")
    if m["gold_errors"] or m["empty_gold"]:
        lines.append(f"excluded (gold failed) {m['gold_errors']}   empty gold {m['empty_gold']} "
                     f"(EX without them {m['ex_nonempty_gold']:.1%})")
    for name, s in m["ex_by_difficulty"].items():
        lines.append(f"  {name:<12} EX {s['ex']:>6.1%}  n={s['n']}")
    lines.append("  " + "  ".join(f"{v} {c}" for v, c in m["verdicts"].items()))
    if report.get("path"):
        lines.append(f"report: {report['path']}/report.html")
    return "\n".join(lines)


def subset_line(report: dict) -> str:
    """The warning that a report scored only a subset of its split (`eval.max_questions`); "" when it scored all."""
    sub = report.get("subset")
    if not sub:
        return ""
    return (f"SUBSET: {sub['questions']} of the {sub['of']} {report['dataset']}/{report.get('split')} questions "
            f"(eval.max_questions={sub['max_questions']}, {sub['how']}); EX is over these {sub['questions']} only")


def _summary_rows(report: dict) -> list[tuple[str, str]]:
    """The headline metrics as (label, value) rows, for the markdown and the HTML report alike."""
    m = report["metrics"]
    return [
        (f"EX ({report['mode']})", f"{m['ex']:.1%} ({m['correct']}/{m['n']})"),
        *((f"EX {k}", f"{v:.1%}") for k, v in m["ex_by_mode"].items() if k != report["mode"]),
        ("valid SQL", f"{m['valid_sql_rate']:.1%}"),
        ("exact match", f"{m['exact_match']:.1%}"),
        *((("candidate selection", _selection_row(report["selection"])),) if report.get("selection") else ()),
        ("gold failed (excluded)", str(m["gold_errors"])),
        ("empty gold (flagged)", f"{m['empty_gold']} (EX without them {m['ex_nonempty_gold']:.1%})"),
    ]


def _selection_row(sel: dict) -> str:
    speed = f", {sel['predictions_per_s']:.2f} predictions/s" if sel.get("predictions_per_s") else ""
    if sel.get("greedy_predictions_per_s"):
        speed += f" (greedy alone {sel['greedy_predictions_per_s']:.2f})"
    return (f"{sel['num_candidates']} candidates: EX {sel['ex_selected']:.1%} vs greedy {sel['ex_greedy']:.1%} "
            f"({sel['gain']:+.1%}){speed}")


def render_markdown(report: dict) -> str:
    m = report["metrics"]
    out = [
        f"# Evaluation report: {report['release']}",
        "",
        f"Dataset **{report['dataset']}** split **{report.get('split')}**, model **{report.get('model') or '-'}**, "
        f"comparison mode **{report['mode']}**, created {report.get('created', '')}.",
        "",
        *((f"**{subset_line(report)}.**", "") if report.get("subset") else ()),
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in _summary_rows(report)),
        "",
    ]
    for title, key in (("difficulty", "ex_by_difficulty"), ("tag", "ex_by_tag"), ("table", "ex_by_table")):
        out += [f"## EX by {title}", "", f"| {title} | EX | n |", "|---|---|---|"]
        out += [f"| {k} | {s['ex']:.1%} | {s['n']} |" for k, s in m[key].items()]
        out.append("")
    out += ["## Verdicts", "", "| verdict | count |", "|---|---|"]
    out += [f"| {v} | {c} |" for v, c in m["verdicts"].items()]
    failing = [e for e in report["examples"] if e["verdict"] != "correct"]
    if failing:
        out += ["", f"## Failing examples ({len(failing)})", ""]
        for e in failing[:100]:
            out.append(f"- `{e['id']}` **{e['verdict']}**: {_md(e['reason'])} — {_md(e['question'])}")
        if len(failing) > 100:
            out.append(f"- ... {len(failing) - 100} more in report.json")
    if report.get("excluded"):
        out += ["", f"## Excluded: gold failed ({len(report['excluded'])})", ""]
        out += [f"- `{e['id']}`: {_md(e['reason'])}" for e in report["excluded"][:50]]
    inputs = report.get("inputs", {})
    out += ["", "## Inputs", "", "```json", json.dumps(inputs, indent=2, default=str), "```", ""]
    return "\n".join(out)


def _md(text: str | None) -> str:
    return (text or "").replace("\n", " ").replace("|", "\\|")[:300]


_HTML_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f4f4f4}code,pre{font-size:.85em}pre{white-space:pre-wrap;margin:0}
.charts{display:flex;flex-wrap:wrap;gap:2rem}svg text{font-size:12px;font-family:system-ui,sans-serif}
"""


def render_html(report: dict) -> str:
    """A self-contained page: summary, inline SVG bar charts, failing examples. No scripts, no external files."""
    e = html.escape
    m = report["metrics"]
    slices = lambda key: [(k, s["ex"], f"{s['ex']:.0%} of {s['n']}") for k, s in m[key].items()]  # noqa: E731
    total = max(sum(m["verdicts"].values()), 1)
    verdicts = [(v, c / total, str(c)) for v, c in m["verdicts"].items()]
    charts = "".join([
        _bar_chart("EX by difficulty", slices("ex_by_difficulty"), "#3b7dd8"),
        _bar_chart("EX by tag", slices("ex_by_tag"), "#3b7dd8"),
        _bar_chart("Verdicts (share of examples)", verdicts, "#d8823b"),
    ])
    summary = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary_rows(report))
    failing = [x for x in report["examples"] if x["verdict"] != "correct"]
    rows = "".join(
        f"<tr><td><code>{e(x['id'])}</code></td><td>{e(x['verdict'])}</td><td>{e(x['question'] or '')}</td>"
        f"<td><pre>{e(x['gold'])}</pre></td><td><pre>{e(x['predicted'] or '')}</pre></td>"
        f"<td>{e(x['reason'] or '')}{_html_diff(x.get('diff'))}</td></tr>"
        for x in failing[:300]
    )
    title = f"Evaluation report: {report['release']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{_HTML_STYLE}</style></head>
<body><h1>{e(title)}</h1>
<p>Dataset <b>{e(str(report['dataset']))}</b> split <b>{e(str(report.get('split')))}</b>,
model <b>{e(str(report.get('model') or '-'))}</b>, comparison mode <b>{e(report['mode'])}</b>,
created {e(str(report.get('created', '')))}.</p>
{f"<p><b>{e(subset_line(report))}.</b></p>{chr(10)}" if report.get("subset") else ""}<table>{summary}</table>
<div class="charts">{charts}</div>
<h2>Failing examples ({len(failing)})</h2>
<table><tr><th>id</th><th>verdict</th><th>question</th><th>gold</th><th>predicted</th><th>reason</th></tr>{rows}</table>
<h2>Inputs</h2><pre>{e(json.dumps(report.get('inputs', {}), indent=2, default=str))}</pre>
</body></html>
"""


def _html_diff(diff: dict | None) -> str:
    if not diff:
        return ""
    parts = [f"gold {diff['gold_shape'][0]}x{diff['gold_shape'][1]}, predicted {diff['pred_shape'][0]}x"
             f"{diff['pred_shape'][1]}"]
    for key, label in (("only_in_gold", "only in gold"), ("only_in_pred", "only in prediction")):
        if diff.get(key):
            parts.append(f"{label}: " + "; ".join(json.dumps(r, default=str) for r in diff[key]))
    return "<br><small>" + "<br>".join(html.escape(p) for p in parts) + "</small>"


def _bar_chart(title: str, items: list[tuple[str, float, str]], color: str) -> str:
    """A horizontal bar chart as inline SVG: one bar per (label, fraction 0-1, text)."""
    label_w, bar_w, row_h, top = 150, 300, 22, 28
    height = top + row_h * max(len(items), 1) + 6
    width = label_w + bar_w + 90
    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{e(title)}"><text x="0" y="16" font-weight="bold">{e(title)}</text>']
    if not items:
        parts.append(f'<text x="0" y="{top + 14}">no data</text>')
    for i, (label, value, text) in enumerate(items):
        y = top + i * row_h
        w = bar_w * min(max(value, 0.0), 1.0)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{e(label[:22])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar_w}" height="16" fill="#eee"/>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="16" fill="{color}"/>'
            f'<text x="{label_w + bar_w + 6}" y="{y + 13}">{e(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- comparing two reports


def find_report(reports_dir: Path, name: str | Path) -> Path:
    """The report directory for a path (a dir or its report.json) or a release name under `reports_dir`."""
    for candidate in (Path(name), Path(reports_dir) / str(name)):
        if candidate.is_file() and candidate.name == "report.json":
            candidate = candidate.parent
        if (candidate / "report.json").is_file():
            return candidate
    raise DataError(f"no report.json for {str(name)!r} (looked in {name} and {Path(reports_dir) / str(name)})")


def compare_reports(a_dir: str | Path, b_dir: str | Path, threshold: float = 0.0) -> dict:
    """Compare release B with release A example by example, and EX per slice.

    Returns:
        {"a", "b", "ex_a", "ex_b", "delta", "threshold", "failed" (EX dropped by more than threshold),
        "regressions" and "fixes" (examples correct in one release only), "slices" {difficulty, tag: {name:
        {"a", "b", "delta"}}}, "warnings" (different mode, dataset or schema)}.
    """
    a, b = _load_report(Path(a_dir)), _load_report(Path(b_dir))
    warnings = []
    if a["mode"] != b["mode"]:
        warnings.append(f"modes differ: {a['mode']} vs {b['mode']}")
    for key in ("dataset_hash", "schema_fingerprint"):
        if a.get("inputs", {}).get(key) != b.get("inputs", {}).get(key):
            warnings.append(f"{key} differs: the releases were not scored on the same {key.split('_')[0]}")
    a_ex, b_ex = ({x["id"]: x for x in r["examples"]} for r in (a, b))
    common = [i for i in a_ex if i in b_ex]
    if len(common) != len(a_ex) or len(common) != len(b_ex):
        warnings.append(f"example ids differ: {len(common)} in common, {len(a_ex)} in A, {len(b_ex)} in B")

    def change(i):
        return {"id": i, "question": b_ex[i].get("question"), "a": a_ex[i]["verdict"], "b": b_ex[i]["verdict"],
                "reason": b_ex[i].get("reason", "")}

    regressions = [change(i) for i in common if a_ex[i]["verdict"] == "correct" != b_ex[i]["verdict"]]
    fixes = [change(i) for i in common if a_ex[i]["verdict"] != "correct" == b_ex[i]["verdict"]]
    slices = {}
    for name, key in (("difficulty", "ex_by_difficulty"), ("tag", "ex_by_tag")):
        sa, sb = a["metrics"].get(key, {}), b["metrics"].get(key, {})
        slices[name] = {
            k: {"a": sa.get(k, {}).get("ex"), "b": sb.get(k, {}).get("ex"),
                "delta": round(sb[k]["ex"] - sa[k]["ex"], 4) if k in sa and k in sb else None}
            for k in sorted(set(sa) | set(sb))
        }
    delta = round(b["metrics"]["ex"] - a["metrics"]["ex"], 4)
    return {
        "a": a["release"], "b": b["release"], "ex_a": a["metrics"]["ex"], "ex_b": b["metrics"]["ex"],
        "delta": delta, "threshold": threshold, "failed": -delta > threshold + 1e-12,
        "regressions": regressions, "fixes": fixes, "slices": slices, "warnings": warnings,
        "interval_a": wilson_interval(a["metrics"]["ex"], a["metrics"].get("n", len(a_ex))),
        "interval_b": wilson_interval(b["metrics"]["ex"], b["metrics"].get("n", len(b_ex))),
        "p_value": mcnemar_p(len(regressions), len(fixes)),
    }


def mcnemar_p(regressions: int, fixes: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split of the changed examples at least this uneven if A and
    B were equally good (each changed example a fair coin). Small dev splits make most recipe differences chance.

    >>> mcnemar_p(0, 6), mcnemar_p(3, 5)
    (0.0312, 0.7266)
    """
    changed = regressions + fixes
    tail = sum(math.comb(changed, k) for k in range(min(regressions, fixes) + 1)) / 2 ** changed
    return round(min(1.0, 2 * tail), 4)


def wilson_interval(ex: float, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval of an EX measured on n examples (None for n = 0).

    >>> wilson_interval(0.5, 44)
    [0.3583, 0.6417]
    """
    if not n:
        return None
    centre, spread = ex + z * z / (2 * n), z * math.sqrt(ex * (1 - ex) / n + z * z / (4 * n * n))
    return [round((centre - spread) / (1 + z * z / n), 4), round((centre + spread) / (1 + z * z / n), 4)]


def _load_report(path: Path) -> dict:
    file = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"{file} not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    missing = [k for k in ("release", "mode", "metrics", "examples") if k not in report]
    if missing:
        raise DataError(f"{file}: not a text2sql report (missing {', '.join(missing)})")
    return report


def format_comparison(cmp: dict) -> str:
    lines = [f"EX {cmp['a']} {cmp['ex_a']:.1%} -> {cmp['b']} {cmp['ex_b']:.1%} ({cmp['delta']:+.1%})"]
    if cmp.get("p_value") is not None:
        ia, ib = cmp["interval_a"], cmp["interval_b"]
        ranges = f"; 95 % intervals {ia[0]:.1%}-{ia[1]:.1%} and {ib[0]:.1%}-{ib[1]:.1%}" if ia and ib else ""
        verdict = "unlikely to be chance" if cmp["p_value"] < 0.05 else "within chance at this size"
        lines.append(f"paired: {len(cmp['fixes'])} fixes, {len(cmp['regressions'])} regressions, exact McNemar "
                     f"p = {cmp['p_value']:.3g} ({verdict}){ranges}")
    lines += [f"warning: {w}" for w in cmp["warnings"]]
    for title in ("regressions", "fixes"):
        lines.append(f"{title}: {len(cmp[title])}")
        for c in cmp[title][:50]:
            lines.append(f"  {c['id']}  {c['a']} -> {c['b']}  {(c['question'] or '')[:70]}")
    for name, rows in cmp["slices"].items():
        changed = {k: s for k, s in rows.items() if s["delta"] != 0}
        if changed:
            lines.append(f"EX by {name}:")
            for k, s in changed.items():
                fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
                delta = "" if s["delta"] is None else f" ({s['delta']:+.1%})"
                lines.append(f"  {k:<20} {fmt(s['a'])} -> {fmt(s['b'])}{delta}")
    if cmp["failed"]:
        lines.append(f"FAIL: EX dropped by {-cmp['delta']:.1%}, more than the threshold {cmp['threshold']:.1%}")
    return "\n".join(lines)
