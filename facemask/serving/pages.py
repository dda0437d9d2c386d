"""The pages the endpoint and the watch serve (facemask/serving/web/), with the class map filled in."""

from __future__ import annotations


def web_page(name: str) -> str:
    """A page of facemask/serving/web with the class map (names, colours) and the shared label code filled in."""
    import json
    from importlib import resources

    from facemask.core.classes import CLASS_NAMES
    from facemask.data.drawing import CLASS_COLORS

    web = resources.files("facemask.serving").joinpath("web")
    classes = [{"name": n, "color": "#%02x%02x%02x" % c} for n, c in zip(CLASS_NAMES, CLASS_COLORS)]
    html = web.joinpath(name).read_text().replace("/*LABELS*/", web.joinpath("labels.js").read_text())
    return html.replace("/*CLASSES*/[]", json.dumps(classes))
