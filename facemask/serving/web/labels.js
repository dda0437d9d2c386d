// Box labels that stay readable in a crowd, shared by the detector page and the camera grid.
// Each label goes to the nearest free place: just above its box, just below it, then one
// label height further out each step (left-aligned, right-aligned or centred on the box),
// on the canvas and over no label already placed; if none is free, where it overlaps least.
// A label that had to move away from its box gets a thin line to it. Faces are labelled in
// order of confidence, so a weak detection yields the near places to a strong one; short
// class names keep labels narrow.
const SHORT_LABELS = { with_mask: "mask", without_mask: "no mask", mask_weared_incorrect: "incorrect" };

function labelText(d) {
  const who = d.track_id !== undefined && d.track_id !== null ? `#${d.track_id} ` : "";
  return `${who}${SHORT_LABELS[d.label] || d.label} ${d.confidence.toFixed(2)}`;
}

function overlapArea(a, b) {
  const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
  const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
  return w > 0 && h > 0 ? w * h : 0;
}

// detections: [{box: {x1, y1, x2, y2}, confidence, ...}]; widthOf(d): the label's width;
// h: its height; W, H: the canvas. Returns one rectangle {x, y, w, h} per detection, in order.
function placeLabels(detections, widthOf, h, W, H) {
  const order = detections.map((d, i) => i).sort((a, b) => detections[b].confidence - detections[a].confidence);
  const placed = new Array(detections.length), taken = [];
  const clampX = (x, w) => Math.min(Math.max(0, x), Math.max(0, W - w));
  const clampY = (y) => Math.min(Math.max(0, y), Math.max(0, H - h));
  for (const i of order) {
    const b = detections[i].box, w = widthOf(detections[i]);
    const lefts = [b.x1, b.x2 - w, (b.x1 + b.x2 - w) / 2];
    let best = null, bestCost = Infinity;
    for (let step = 0; step <= 16 && bestCost > 0; step++) {
      for (const y of [b.y1 - h - step * h, b.y2 + step * h]) {
        for (const x of lefts) {
          const r = { x: clampX(x, w), y: clampY(y), w, h };
          const cost = taken.reduce((sum, t) => sum + overlapArea(r, t), 0);
          if (cost < bestCost) { best = r; bestCost = cost; }
          if (cost === 0) break;
        }
        if (bestCost === 0) break;
      }
    }
    placed[i] = best;
    taken.push(best);
  }
  return placed;
}

// Draws boxes and their labels on ctx at `scale` (canvas pixels per box pixel); returns what
// it drew, for tests: [{x1, y1, x2, y2, color, label: {x, y, w, h}}].
function drawDetections(ctx, detections, classes, scale, W, H) {
  // Sized in the pixels the page shows, not the image's: a 1080p frame in a 400-pixel tile
  // still gets 13-pixel labels on screen.
  const shown = ctx.canvas.clientWidth ? ctx.canvas.width / ctx.canvas.clientWidth : 1;
  const line = Math.max(1, Math.round(2 * shown)), font = Math.round(13 * shown);
  ctx.lineWidth = line;
  ctx.font = `${font}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const scaled = detections.map((d) => ({ ...d, box: { x1: d.box.x1 * scale, y1: d.box.y1 * scale, x2: d.box.x2 * scale, y2: d.box.y2 * scale } }));
  const h = font + 4;
  const rects = placeLabels(scaled, (d) => ctx.measureText(labelText(d)).width + 6, h, W, H);
  const drawn = [];
  scaled.forEach((d, i) => {
    ctx.lineWidth = line;
    const color = classes[d.class_id].color, b = d.box;
    ctx.strokeStyle = color;
    ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
    drawn.push({ ...b, color, line, label: rects[i] });
  });
  scaled.forEach((d, i) => {  // labels after every box, so no box line crosses a label
    const r = rects[i], b = d.box;
    if (r.y > b.y2 + 2 || r.y + r.h < b.y1 - 2) {  // moved away: a line from the label to its box
      ctx.lineWidth = Math.max(1, line / 2);
      ctx.strokeStyle = classes[d.class_id].color;
      ctx.beginPath();
      ctx.moveTo(r.x + r.w / 2, r.y > b.y2 ? r.y : r.y + r.h);
      ctx.lineTo((b.x1 + b.x2) / 2, r.y > b.y2 ? b.y2 : b.y1);
      ctx.stroke();
    }
    ctx.fillStyle = classes[d.class_id].color;
    ctx.fillRect(r.x, r.y, r.w, r.h);
    ctx.fillStyle = "#000";
    ctx.fillText(labelText(d), r.x + 3, r.y + 2);
  });
  return drawn;
}
