"""The pictures the project makes: a prepared dataset's class balance and synthetic samples, and a study's
objective per trial and against each parameter. Boxes are drawn by `facemask.data.drawing`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from facemask.core.classes import CLASS_NAMES
from facemask.data.drawing import CLASS_COLORS, draw_boxes


def class_distribution(counts: dict, path: Path) -> Path:
    """Bar chart of objects per class and split, original against synthetic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(counts)
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.6), sharey=False)
    for ax, split in zip(axes, splits):
        objects = counts[split]["objects"]
        original = [objects[c]["original"] for c in CLASS_NAMES]
        synthetic = [objects[c]["synthetic"] for c in CLASS_NAMES]
        xs = range(len(CLASS_NAMES))
        ax.bar(xs, original, color=[tuple(v / 255 for v in c) for c in CLASS_COLORS], label="original")
        ax.bar(xs, synthetic, bottom=original, color="none", edgecolor="black", hatch="//", label="synthetic")
        ax.set_xticks(list(xs), [c.replace("_", "\n") for c in CLASS_NAMES], fontsize=8)
        ax.set_title(
            f"{split}: {counts[split]['images']['original']} + {counts[split]['images']['synthetic']} synthetic images",
            fontsize=9,
        )
        for x, (o, s) in enumerate(zip(original, synthetic)):
            ax.text(x, o + s, f"{o}" + (f"+{s}" if s else ""), ha="center", va="bottom", fontsize=7)
    axes[0].set_ylabel("objects")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def read_yolo_boxes(label: Path, width: int, height: int) -> list[tuple[int, float, float, float, float]]:
    boxes = []
    for line in label.read_text().splitlines():
        cls, cx, cy, w, h = line.split()
        cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
        boxes.append((int(cls), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return boxes


def synthetic_samples(out: Path, images: list[str], path: Path, count: int = 9, tile: int = 256) -> Path | None:
    """A 3x3 grid of synthetic train images with their YOLO boxes drawn."""
    if not images:
        return None
    step = max(1, len(images) // count)
    chosen = images[::step][:count]
    cols = 3
    rows = (len(chosen) + cols - 1) // cols
    grid = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    for i, rel in enumerate(chosen):
        with Image.open(out / rel) as img:
            label = (out / rel.replace("images/", "labels/", 1)).with_suffix(".txt")
            drawn = draw_boxes(img, read_yolo_boxes(label, *img.size))
        drawn.thumbnail((tile, tile))
        grid.paste(drawn, ((i % cols) * tile, (i // cols) * tile))
    grid.save(path, quality=90)
    return path


def study_plots(rows: list[dict], metric: str, out: Path) -> list[Path]:
    """The search as pictures: objective per trial, and objective against each parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"finished": "#2e86de", "stopped_early": "#f39c12", "failed": "#c0392b"}
    done = [r for r in rows if r["objective"] == r["objective"]]  # NaN: never reported
    paths = []
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(rows) + 2), 3.5))
    ax.bar(range(len(done)), [r["objective"] for r in done], color=[colors[r["status"]] for r in done])
    ax.set_xticks(range(len(done)), [str(r["trial_id"])[-5:] for r in done], rotation=60, fontsize=7)
    ax.set_ylabel(f"best {metric}")
    ax.set_title("objective per trial (blue finished, orange stopped early, red failed)", fontsize=9)
    fig.tight_layout()
    paths.append(out / "objective_per_trial.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    params = sorted({k for r in done for k in r["config"]})
    if params:
        cols = 4
        nrows = (len(params) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
        for ax, name in zip(axes.flat, params):
            xs = [r["config"].get(name) for r in done]
            numeric = all(isinstance(x, (int, float)) for x in xs)
            positions = xs if numeric else [sorted(set(map(str, xs))).index(str(x)) for x in xs]
            ax.scatter(positions, [r["objective"] for r in done], c=[colors[r["status"]] for r in done], s=18)
            if not numeric:
                labels = sorted(set(map(str, xs)))
                ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(params) :]:
            ax.axis("off")
        fig.suptitle(f"{metric} against each parameter", fontsize=9)
        fig.tight_layout()
        paths.append(out / "objective_vs_params.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def importance_plot(importance, metric: str, out: Path) -> list[Path]:
    """Which settings mattered, as bars (facemask.training.importance); none when it is not shown."""
    if not importance.shown:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importance.shares)[::-1]  # largest on top
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(names) + 1.2))
    ax.barh(names, [importance.shares[n] for n in names], color="#2e86de")
    ax.set_xlabel(f"share of the variance of {metric}")
    ax.set_title(f"which settings mattered ({importance.evaluator}, {importance.trials} trials)", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    path = out / "importance.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def pareto_plot(rows: list[dict], front: list[dict], metric: str, target: str, out: Path) -> list[Path]:
    """Score against cost: every scored trial, the Pareto front marked and joined; none without costs."""
    scored = [r for r in rows if r["objective"] == r["objective"] and r.get("latency_ms") is not None]
    if not scored:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter([r["latency_ms"] for r in scored], [r["objective"] for r in scored], s=22, c="#95a5a6", label="trial")
    xs, ys = [r["latency_ms"] for r in front], [r["objective"] for r in front]
    ax.step(xs, ys, where="post", color="#c0392b", linewidth=1)
    ax.scatter(xs, ys, s=40, c="#c0392b", label="on the front", zorder=3)
    for row in front:
        ax.annotate(str(row.get("version") or row["trial_id"])[-5:], (row["latency_ms"], row["objective"]), fontsize=7)
    ax.set_xlabel(f"latency on {target}, ms a frame (batch 1)")
    ax.set_ylabel(f"best {metric} (val)")
    ax.set_title("score against cost: the Pareto front", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
