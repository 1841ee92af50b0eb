import base64
import json
import math
import re
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from autodeeplab import report as report_module
from autodeeplab.draw import _new_figure
from autodeeplab.report import (
    ASSET_DIR,
    Report,
    draw_search_curves,
    draw_training_curves,
    load_jsonl,
    moving_average,
    search_warning,
)

DATA_URI = "data:image/png;base64,"

# ----------------------------------------------------------------------------- helpers


def _by_gid(ax, gid):
    return [line for line in ax.lines if line.get_gid() == gid]


def _line(ax, gid):
    (line,) = _by_gid(ax, gid)
    return list(line.get_xdata()), list(line.get_ydata())


def _axes(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def _no_data(ax):
    return [t for t in ax.texts if t.get_gid() == "no-data"]


def _search_records(epochs=4, steps=6, warmup=2, log_every=2):
    """Records shaped like the search engine's: ``steps`` weight steps per epoch, architecture
    steps from epoch ``warmup + 1``, a step record every ``log_every`` steps, mIoU every second
    epoch (null otherwise), plus keys and record types a reader must ignore."""
    rng = np.random.default_rng(0)
    records = [{"type": "config", "note": "not a metric"}]
    for epoch in range(1, epochs + 1):
        arch = epoch > warmup
        losses, arch_losses = [], []
        for step in range(1, steps + 1):
            global_step = (epoch - 1) * steps + step
            loss = float(rng.uniform(0.5, 2.0))
            losses.append(loss)
            record = {
                "type": "step",
                "epoch": epoch,
                "step": step,
                "global_step": global_step,
                "lr": 0.025,
                "loss": loss,
                "grad_norm": 1.0,  # unknown key
            }
            if arch:
                arch_losses.append(float(rng.uniform(0.5, 2.0)))
                record["arch_loss"] = arch_losses[-1]
            if global_step % log_every == 0:
                records.append(record)
        records.append(
            {
                "type": "epoch",
                "epoch": epoch,
                "global_step": epoch * steps,
                "loss": sum(losses) / len(losses),
                "arch_loss": sum(arch_losses) / len(arch_losses) if arch else None,
                "mIoU": 0.1 * epoch if epoch % 2 == 0 else None,
                "alpha_entropy": 2.0 - 0.1 * epoch,
                "beta_entropy": 1.0 - 0.05 * epoch,
                "alpha_entropy_fraction": 1.0 - 0.02 * epoch,
                "beta_entropy_fraction": 1.0 - 0.01 * epoch,
                "path_log_prob": -3.0 + 0.25 * epoch,
                "parameter_free_share": 0.25 * (epoch % 3),
                "arch_steps": max(0, epoch - warmup) * steps,
                "alpha_grad_z": 0.8 + 0.3 * (epoch - warmup) if arch else None,
                "beta_grad_z": 0.7 + 0.1 * (epoch - warmup) if arch else None,
                "arch_search": arch,
                "genotype": "cell=... path=...",
                "time_s": 1.5,
            }
        )
    return records


def _training_records(iterations=40, log_every=2, eval_every=10):
    rng = np.random.default_rng(1)
    records = []
    for it in range(1, iterations + 1):
        if it % log_every == 0:
            records.append(
                {
                    "type": "step",
                    "iteration": it,
                    "epoch": (it - 1) // 10,
                    "loss": float(rng.uniform(0.2, 1.5)),
                    "lr": 0.05 * (1 - it / iterations) ** 0.9,
                    "drop_path": 0.1,
                }
            )
        if it % eval_every == 0:
            miou = float(rng.uniform(0.2, 0.6))
            records.append(
                {
                    "type": "eval",
                    "iteration": it,
                    "mIoU": miou,
                    "pixel_accuracy": 0.9,
                    "mean_accuracy": 0.7,
                    "best_mIoU": miou,
                }
            )
    records.append({"type": "summary", "iteration": iterations, "total_time_s": 3.0})
    return records


# ----------------------------------------------------------------------------- load_jsonl


def test_load_jsonl_reads_records_and_skips_blank_lines(tmp_path):
    records = [{"type": "step", "loss": 1.5}, {"type": "epoch", "mIoU": None}, {"a": [1, 2]}]
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(records[0]), "", "   ", json.dumps(records[1]), json.dumps(records[2])]
    path.write_text("\n".join(lines) + "\n\n")
    assert load_jsonl(path) == records
    assert load_jsonl(str(path)) == records


@pytest.mark.parametrize("bad", ['{"type": "step", "loss": ', "[1, 2]", "3.5", "not json"])
def test_load_jsonl_names_file_and_line_of_a_bad_line(tmp_path, bad):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "step"}\n\n' + bad + '\n{"type": "epoch"}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 3"):
        load_jsonl(path)


def test_load_jsonl_missing_file_names_it(tmp_path):
    path = tmp_path / "nothing.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_jsonl(path)


# ----------------------------------------------------------------------------- search curves


def test_search_curves_plot_the_records():
    steps_per_epoch, warmup = 6, 2
    records = _search_records(epochs=4, steps=steps_per_epoch, warmup=warmup)
    axes = _axes(draw_search_curves(records))
    assert set(axes) == {
        "loss",
        "miou",
        "entropy",
        "movement",
        "free",
        "path",
        "arch_steps",
        "signal",
    }
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]

    ax = axes["loss"]
    assert _line(ax, "step-loss") == ([r["global_step"] for r in steps], [r["loss"] for r in steps])
    arch_steps = [r for r in steps if "arch_loss" in r]
    assert _line(ax, "step-arch-loss") == (
        [r["global_step"] for r in arch_steps],
        [r["arch_loss"] for r in arch_steps],
    )
    # Epoch means sit in the middle of their epoch: epoch e covers steps (e-1)*S+1 .. e*S.
    middle = [(r["epoch"] - 0.5) * steps_per_epoch for r in epochs]
    xs, ys = _line(ax, "epoch-loss")
    assert xs == pytest.approx(middle)
    assert ys == [r["loss"] for r in epochs]
    xs, ys = _line(ax, "epoch-arch-loss")
    assert xs == pytest.approx(middle[warmup:])
    assert ys == [r["arch_loss"] for r in epochs[warmup:]]
    (start,) = _by_gid(ax, "arch-start")
    assert list(start.get_xdata()) == [warmup * steps_per_epoch] * 2
    assert len(ax.lines) == 5

    xs, ys = _line(axes["miou"], "mIoU")
    assert xs == [2, 4]
    assert ys == pytest.approx([20.0, 40.0])  # percent
    xs, ys = _line(axes["entropy"], "alpha-entropy")
    assert (xs, ys) == ([1, 2, 3, 4], [r["alpha_entropy"] for r in epochs])
    assert _line(axes["entropy"], "beta-entropy")[1] == [r["beta_entropy"] for r in epochs]
    for name in ("miou", "entropy", "movement", "free", "path", "arch_steps"):
        (start,) = _by_gid(axes[name], "arch-start")
        assert list(start.get_xdata()) == [warmup + 0.5] * 2

    # movement: entropies as a share of their maximum (%), with the 99 % line
    ax = axes["movement"]
    xs, ys = _line(ax, "alpha-entropy-fraction")
    assert xs == [1, 2, 3, 4]
    assert ys == pytest.approx([100 * r["alpha_entropy_fraction"] for r in epochs])
    ys = _line(ax, "beta-entropy-fraction")[1]
    assert ys == pytest.approx([100 * r["beta_entropy_fraction"] for r in epochs])
    (threshold,) = _by_gid(ax, "stagnation-threshold")
    assert list(threshold.get_ydata()) == [99.0, 99.0]
    ys = _line(axes["free"], "free")[1]
    assert ys == pytest.approx([100 * r["parameter_free_share"] for r in epochs])
    assert _line(axes["path"], "path")[1] == [r["path_log_prob"] for r in epochs]
    assert _line(axes["arch_steps"], "arch-steps") == ([1, 2, 3, 4], [0, 0, 6, 12])
    # the gradient signal from the first epoch with architecture steps, and the noise level
    xs, ys = _line(axes["signal"], "alpha-grad-z")
    assert xs == [3, 4] and ys == pytest.approx([1.1, 1.4])
    xs, ys = _line(axes["signal"], "beta-grad-z")
    assert xs == [3, 4] and ys == pytest.approx([0.8, 0.9])
    (noise,) = _by_gid(axes["signal"], "noise-level")
    assert list(noise.get_ydata()) == pytest.approx([math.sqrt(2 / math.pi)] * 2)


def test_search_curves_of_a_log_without_the_movement_figures():
    """Logs written before the movement diagnostics existed still draw; the new panels say that
    they have no data."""
    keys = ("alpha_entropy_fraction", "beta_entropy_fraction", "path_log_prob")
    keys += ("parameter_free_share", "arch_steps", "alpha_grad_z", "beta_grad_z")
    records = [{k: v for k, v in r.items() if k not in keys} for r in _search_records()]
    axes = _axes(draw_search_curves(records))
    assert _by_gid(axes["entropy"], "alpha-entropy")
    for name in ("movement", "free", "path", "arch_steps", "signal"):
        assert not axes[name].lines and _no_data(axes[name]), name
    assert search_warning(records) is None


def test_search_warning_reads_the_last_epoch_record():
    records = _search_records(epochs=3, warmup=1)
    assert search_warning(records) is None  # 94 % of max alpha entropy: it moved
    records[-1]["alpha_entropy_fraction"] = 0.999
    assert "alpha entropy 99.90 %" in search_warning(records)
    records.append({"type": "epoch", "epoch": 2, "alpha_entropy_fraction": 0.5})  # not the last
    assert "99.90 %" in search_warning(records)
    assert search_warning([r for r in records if r["type"] == "step"]) is None


def test_search_curves_without_architecture_phase_or_evaluation():
    records = _search_records(epochs=2, warmup=5)  # warm-up only: no arch_loss anywhere
    for r in records:
        if r["type"] == "epoch":
            r["mIoU"] = None
    axes = _axes(draw_search_curves(records))
    gids = {line.get_gid() for line in axes["loss"].lines}
    assert gids == {"step-loss", "epoch-loss"}
    assert not axes["miou"].lines and _no_data(axes["miou"])
    assert not _by_gid(axes["entropy"], "arch-start")


def test_search_curves_from_epoch_records_only_and_from_step_records_only():
    records = _search_records(epochs=3, warmup=0)
    epochs_only = [r for r in records if r["type"] == "epoch"]
    axes = _axes(draw_search_curves(epochs_only))
    assert {line.get_gid() for line in axes["loss"].lines} == {"epoch-loss", "epoch-arch-loss"}
    steps_only = [r for r in records if r["type"] == "step"]
    axes = _axes(draw_search_curves(steps_only))
    assert {line.get_gid() for line in axes["loss"].lines} == {"step-loss", "step-arch-loss"}
    assert _no_data(axes["miou"]) and _no_data(axes["entropy"])


def test_search_curves_later_record_replaces_a_repeated_step():
    records = _search_records(epochs=2, steps=4, warmup=2, log_every=1)
    # A resumed run repeats global steps 3 and 4 with new values.
    records += [
        {"type": "step", "epoch": 1, "step": s, "global_step": s, "loss": 9.0} for s in (3, 4)
    ]
    xs, ys = _line(_axes(draw_search_curves(records))["loss"], "step-loss")
    assert xs == list(range(1, 9))
    assert ys[2:4] == [9.0, 9.0]


def test_search_curves_reject_wrong_value_types():
    records = _search_records(epochs=1)
    records[-1]["mIoU"] = "high"
    with pytest.raises(ValueError, match="'epoch' record at epoch 1: 'mIoU' must be a number"):
        draw_search_curves(records)
    with pytest.raises(ValueError, match="'global_step' must be an integer"):
        draw_search_curves([{"type": "step", "global_step": 1.5, "loss": 1.0}])


def test_a_lone_point_gets_a_marker():
    axes = _axes(draw_training_curves([{"type": "step", "iteration": 7, "loss": 1.0, "lr": 0.1}]))
    (line,) = _by_gid(axes["loss"], "loss")
    assert line.get_marker() == "o" and list(line.get_xdata()) == [7]


# ----------------------------------------------------------------------------- training curves


def test_training_curves_plot_the_records():
    records = _training_records()
    axes = _axes(draw_training_curves(records, smooth=3))
    assert set(axes) == {"loss", "lr", "miou"}
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    iterations = [r["iteration"] for r in steps]
    losses = [r["loss"] for r in steps]

    assert _line(axes["loss"], "loss") == (iterations, losses)
    xs, ys = _line(axes["loss"], "loss-average")
    expected = [np.mean(losses[max(0, i - 2) : i + 1]) for i in range(len(losses))]
    assert xs == iterations
    assert ys == pytest.approx(expected)
    assert _line(axes["lr"], "lr") == (iterations, [r["lr"] for r in steps])

    xs, ys = _line(axes["miou"], "mIoU")
    assert xs == [r["iteration"] for r in evals]
    assert ys == pytest.approx([100 * r["mIoU"] for r in evals])
    best = max(evals, key=lambda r: r["mIoU"])
    bx, by = _line(axes["miou"], "best-mIoU")
    assert bx == [best["iteration"]]
    assert by == pytest.approx([100 * best["mIoU"]])


def test_training_curves_default_smoothing_and_missing_parts():
    records = [r for r in _training_records(iterations=10) if r["type"] == "step"]
    axes = _axes(draw_training_curves(records))  # 5 records: window 1, no average line
    assert not _by_gid(axes["loss"], "loss-average")
    assert not axes["miou"].lines and _no_data(axes["miou"])

    evals = [{"type": "eval", "iteration": 10, "mIoU": math.nan}, {"type": "eval", "iteration": 20}]
    evals.append({"type": "eval", "iteration": 30, "mIoU": 0.25, "extra": [1]})
    axes = _axes(draw_training_curves(evals))
    assert _no_data(axes["loss"]) and _no_data(axes["lr"])
    xs, ys = _line(axes["miou"], "mIoU")
    assert xs == [10, 30] and math.isnan(ys[0]) and ys[1] == 25.0  # NaN is a gap, null no point
    assert _line(axes["miou"], "best-mIoU") == ([30], [25.0])


@pytest.mark.parametrize("draw", [draw_search_curves, draw_training_curves])
@pytest.mark.parametrize(
    "records",
    [
        [],
        [{"type": "config", "lr": 0.1}, {"note": "no type"}],
        [{"type": "step", "global_step": 1, "iteration": 1, "epoch": 1, "loss": None}],
    ],
    ids=["empty", "unknown-types", "null-values"],
)
def test_curves_without_anything_to_plot_raise(draw, records):
    with pytest.raises(ValueError, match="nothing to plot"):
        draw(records)


def test_moving_average_matches_a_loop():
    values = [1.0, 2.0, math.nan, 4.0, 8.0, math.nan, math.nan, 3.0]
    for window in (1, 2, 3, 10):
        expected = []
        for i in range(len(values)):
            kept = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
            expected.append(sum(kept) / len(kept) if kept else math.nan)
        np.testing.assert_allclose(moving_average(values, window), expected)
    with pytest.raises(ValueError, match="window"):
        moving_average(values, 0)


# ----------------------------------------------------------------------------- report


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []  # (tag, attrs)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html_text):
    parser = _Tags()
    parser.feed(html_text)
    return parser.tags


def _png(path, colour=(200, 30, 30), size=(5, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _tiny_figure():
    fig = _new_figure((1.0, 0.8))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def _md_images(md_path):
    return re.findall(r"!\[[^\]]*\]\(([^)]*)\)", md_path.read_text())


def _md_table(md_text):
    rows = [line for line in md_text.splitlines() if line.startswith("|")]
    # Split on pipes that are not escaped; drop the empty ends outside the outer pipes.
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_html_is_self_contained_and_embeds_the_exact_png(tmp_path):
    source = _png(tmp_path / "elsewhere" / "plot.png")
    report = Report("Demo")
    report.image(source, "an image from elsewhere", width=320)
    report.figure(_tiny_figure(), "curves", "a figure", dpi=30)
    html_path, md_path = report.write(tmp_path / "out")
    assert (html_path, md_path) == (
        tmp_path / "out" / "report.html",
        tmp_path / "out" / "report.md",
    )

    tags = _tags(html_path.read_text())
    srcs = [attrs["src"] for _, attrs in tags if "src" in attrs]
    assert len(srcs) == 2 and all(s.startswith(DATA_URI) for s in srcs)
    assert not [attrs for _, attrs in tags if "href" in attrs]
    assert not {"script", "link", "iframe", "object", "embed"} & {tag for tag, _ in tags}
    embedded = [base64.b64decode(s[len(DATA_URI) :], validate=True) for s in srcs]
    assert embedded[0] == source.read_bytes()
    assert embedded[1] == (tmp_path / "out" / ASSET_DIR / "curves.png").read_bytes()
    assert embedded[1].startswith(b"\x89PNG\r\n\x1a\n")
    (img,) = [attrs for tag, attrs in tags if tag == "img" and attrs.get("width")]
    assert img["width"] == "320"


def test_text_is_escaped(tmp_path):
    report = Report("<b>title</b>")
    report.heading("Heading <i>")
    report.paragraph("<script>alert('x')</script> & `a<b` | *not bold*")
    report.table(["<th>"], [["<td>"]])
    report.image(_png(tmp_path / "x.png"), 'caption "quoted" <em>')
    report.code("if a < b:\n    print('<pre>')")
    html_path, md_path = report.write(tmp_path / "out")
    text = html_path.read_text()
    for raw in ("<script", "<b>title", "<i>", "<th>", "<td>", "<em>", "<pre>'"):
        assert raw not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; <code>a&lt;b</code>" in text
    assert "<pre><code>if a &lt; b:\n    print(&#x27;&lt;pre&gt;&#x27;)</code></pre>" in text
    assert {tag for tag, _ in _tags(text)} <= {
        "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "code",
        "div", "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption", "pre",
    }  # fmt: skip
    md = md_path.read_text()
    assert "\\<script\\>" in md and "`a<b`" in md and "\\*not bold\\*" in md
    assert "print('<pre>')" in md  # code blocks stay verbatim


def test_markdown_table_shape_alignment_and_pipes(tmp_path):
    report = Report("Tables")
    headers = ["name", "mIoU (%)", "params", "note"]
    rows = [["a|b", 63.21, "1.2 M", "`op|x`"], ["c", None, "3", "plain"], ["d", 7, "4", "x"]]
    report.table(headers, rows)
    report.table(["x", "y"], [[1, 2]], align=["center", "left"])
    _, md_path = report.write(tmp_path)
    md = md_path.read_text()
    first, second = md.split("\n\n")[1:3]
    table = _md_table(first)
    assert len(table) == 2 + len(rows) and all(len(row) == len(headers) for row in table)
    assert table[0] == headers
    assert table[1] == [":---", "---:", "---:", ":---"]  # numbers (and numeric text) right
    assert table[2] == ["a\\|b", "63.21", "1.2 M", "`op\\|x`"]
    assert table[3][1] == "—"
    assert _md_table(second)[1] == [":---:", ":---"]
    html_text = (tmp_path / "report.html").read_text()
    assert '<td class="l">a|b</td><td class="r">63.21</td>' in html_text


def test_table_rejects_ragged_rows_and_unknown_alignment():
    report = Report("t")
    with pytest.raises(ValueError, match="row 1 has 1 cells, expected 2"):
        report.table(["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="align"):
        report.table(["a", "b"], [[1, 2]], align=["left", "middle"])


def test_markdown_image_links_resolve(tmp_path):
    out = tmp_path / "run folder"
    inside = _png(out / "plots" / "my plot.png", colour=(0, 0, 255))
    outside_a = _png(tmp_path / "a" / "pred.png", colour=(0, 255, 0))
    outside_b = _png(tmp_path / "b" / "pred.png", colour=(255, 0, 0))
    report = Report("Links")
    report.image(inside, "already in the output folder")
    report.image(outside_a, "copied")
    report.image(outside_b, "same file name, other folder")
    report.image(outside_a, "the same file again")
    report.figure(_tiny_figure(), "curves", "rendered", dpi=30)
    _, md_path = report.write(out)
    links = _md_images(md_path)
    assert [unquote(link) for link in links] == [
        "plots/my plot.png",
        f"{ASSET_DIR}/pred.png",
        f"{ASSET_DIR}/pred-2.png",
        f"{ASSET_DIR}/pred.png",
        f"{ASSET_DIR}/curves.png",
    ]
    sources = [inside, outside_a, outside_b, outside_a]
    for link, source in zip(links, sources, strict=False):
        target = md_path.parent / unquote(link)
        assert target.is_file() and target.read_bytes() == source.read_bytes()
    assert (md_path.parent / unquote(links[-1])).is_file()
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["my plot.png"]  # not copied


def test_missing_or_non_png_image(tmp_path):
    report = Report("t")
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        report.image(missing, "gone")
    (tmp_path / "fake.png").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="not a PNG"):
        report.image(tmp_path / "fake.png", "not png")


def test_figure_names_must_be_file_stems_and_unique():
    report = Report("t")
    report.figure(_tiny_figure(), "curves", "one", dpi=20)
    with pytest.raises(ValueError, match="already has a figure named 'curves'"):
        report.figure(_tiny_figure(), "curves", "two", dpi=20)
    for bad in ("../up", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="file stem"):
            report.figure(_tiny_figure(), bad, "bad", dpi=20)


def test_code_fence_is_longer_than_backticks_inside(tmp_path):
    report = Report("t")
    report.code("x = ```y```\n")
    _, md_path = report.write(tmp_path)
    assert "````\nx = ```y```\n````" in md_path.read_text()


def test_failed_write_leaves_earlier_report_and_no_temp_files(tmp_path, monkeypatch):
    first = Report("first")
    first.paragraph("version one")
    first.figure(_tiny_figure(), "curves", "figure", dpi=20)
    html_path, md_path = first.write(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    second = Report("second")
    second.paragraph("version two")
    second.image(_png(tmp_path.parent / f"{tmp_path.name}-src" / "new.png"), "new image")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        second.write(tmp_path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # same files, same contents: no temp file, nothing half-written
    assert "version one" in html_path.read_text() and "version one" in md_path.read_text()


def test_rewrite_replaces_the_report(tmp_path):
    for version in ("one", "two"):
        report = Report("t")
        report.paragraph(f"version {version}")
        html_path, md_path = report.write(tmp_path)
    assert "version two" in html_path.read_text() and "version two" in md_path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]


def test_write_takes_a_file_stem(tmp_path):
    report = Report("Study")
    report.paragraph("text")
    html_path, md_path = report.write(tmp_path, name="study")
    assert (html_path.name, md_path.name) == ("study.html", "study.md")
    assert not (tmp_path / "report.md").exists()
    assert md_path.read_text().startswith("# Study")
    with pytest.raises(ValueError, match="file stem"):
        report.write(tmp_path, name="../up")
