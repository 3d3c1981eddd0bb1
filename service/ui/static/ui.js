/* RAMP Orchestrator web pages: draws the charts (vendored Chart.js + chartjs-chart-matrix) from
   the page's JSON (<script id="page-data">) and keeps active pages live by polling the pages' own
   endpoints. Accuracies arrive as fractions in [0, 1]. */
(function () {
  "use strict";

  const dataEl = document.getElementById("page-data");
  if (!dataEl || typeof Chart === "undefined") return;
  const page = JSON.parse(dataEl.textContent);

  const KEYS = ["clean", "linf", "l2", "l1", "union"];
  const LABELS = { clean: "clean", linf: "l_inf", l2: "l_2", l1: "l_1", union: "union" };
  const COLORS = { clean: "#6b7280", linf: "#2f5fb3", l2: "#1f9d55", l1: "#d97706", union: "#b42318" };
  const PALETTE = ["#2f5fb3", "#b42318", "#1f9d55", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563",
                   "#65a30d", "#a16207", "#0f766e", "#9333ea"];

  Chart.defaults.animation = false;  // charts redraw on every poll; no tweening, steady screenshots
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.size = 12;

  const pct = (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%");
  const fmt = (v) => (Math.abs(v) >= 100 || Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4))));

  function percentAxis(title) {
    return {
      min: 0, max: 1,
      title: { display: Boolean(title), text: title },
      ticks: { callback: (v) => Math.round(v * 100) + "%" },
    };
  }

  function percentTooltip() {
    return { callbacks: { label: (ctx) => ctx.dataset.label + ": " + pct(ctx.parsed.y) } };
  }

  /* Overlaid jobs: a colour and a dash pattern each, so curves that coincide stay told apart. */
  function overlay(i, label, data) {
    const dashes = [[], [6, 4], [2, 3], [10, 3, 2, 3]];
    const points = ["circle", "rectRot", "triangle", "rect"];
    return line(PALETTE[i % PALETTE.length], label, data,
                { borderDash: dashes[i % dashes.length], pointStyle: points[i % points.length], pointRadius: 4 });
  }

  function line(color, label, data, extra) {
    return Object.assign({ label: label, data: data, borderColor: color, backgroundColor: color,
                           pointRadius: 3, borderWidth: 2, spanGaps: true, tension: 0 }, extra || {});
  }

  /* Create the chart on first call, replace its data afterwards (live pages). */
  function draw(id, config) {
    const canvas = document.getElementById(id);
    if (!canvas) return null;
    const existing = Chart.getChart(canvas);
    if (existing) {
      existing.data = config.data;
      existing.update();
      return existing;
    }
    return new Chart(canvas, config);
  }

  // ------------------------------------------------------------------------------ job page

  function epochCharts(epochs) {
    if (!epochs) return;
    const labels = epochs.epochs;
    draw("epoch-accuracy", {
      type: "line",
      data: { labels: labels, datasets: KEYS.map((k) => line(COLORS[k], LABELS[k], epochs.accuracy[k])) },
      options: {
        scales: { x: { title: { display: true, text: "epoch" } },
                  y: percentAxis(epochs.monitor_suite + " suite (upper bound)") },
        plugins: { tooltip: percentTooltip() },
      },
    });
    const parts = Object.keys(epochs.losses);
    draw("epoch-losses", {
      type: "line",
      data: { labels: labels,
              datasets: parts.map((p, i) => line(PALETTE[i % PALETTE.length], p, epochs.losses[p])) },
      options: { scales: { x: { title: { display: true, text: "epoch" } },
                           y: { title: { display: true, text: "loss" } } } },
    });
    if (epochs.has_gradients) {
      draw("epoch-gradients", {
        type: "line",
        data: { labels: labels, datasets: [line(PALETTE[0], "cos(natural, adversarial)", epochs.grad_cosine)] },
        options: { scales: { x: { title: { display: true, text: "epoch" } },
                             y: { min: -1, max: 1, title: { display: true, text: "cosine" } } } },
      });
    }
  }

  function radiusChart(id, curve, datasets, legend) {
    draw(id, {
      type: "line",
      data: { labels: curve.labels, datasets: datasets },
      options: {
        scales: { x: { title: { display: true, text: curve.axis } }, y: percentAxis("accuracy") },
        // The legend shows each curve's point style: a dashed line's swatch reads as a smudge.
        plugins: { tooltip: percentTooltip(), legend: { display: legend, labels: { usePointStyle: true } } },
      },
    });
  }

  function radiusCharts(curves) {
    (curves || []).forEach((c) => {
      const labels = c.radius.map(fmt);
      radiusChart("radius-" + c.norm,
                  { labels: labels, axis: c.label + " radius (last: unbounded)" },
                  [line(COLORS[c.norm] || "#333", c.label, c.accuracy)], false);
    });
  }

  /* Colour of a heat-map cell: light to dark blue over the cells' own range (tiny sweeps differ by
     a few points; a fixed 0-100 % scale would paint them all alike). The numbers are drawn too. */
  function shade(v, lo, hi) {
    if (v === null || v === undefined) return "#eceff3";
    const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    const a = [222, 235, 247], b = [8, 48, 107];
    const c = a.map((x, i) => Math.round(x + (b[i] - x) * t));
    return "rgb(" + c.join(",") + ")";
  }

  const cellText = {
    id: "cellText",
    afterDatasetsDraw(chart) {
      const meta = chart.getDatasetMeta(0);
      const raw = chart.data.datasets[0].data;
      const ctx = chart.ctx;
      ctx.save();
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "bold 13px system-ui, sans-serif";
      meta.data.forEach((el, i) => {
        const cell = raw[i];
        const p = el.getCenterPoint();
        ctx.fillStyle = cell.dark ? "#fff" : "#1d2430";
        const text = pct(cell.v) + (cell.upper_bound ? " ≤" : "") + (cell.best ? " ★" : "");
        ctx.fillText(text, p.x, p.y);
      });
      ctx.restore();
    },
  };

  function heatmap(h) {
    if (!h) return;
    const values = h.cells.map((c) => c.v).filter((v) => v !== null && v !== undefined);
    const lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    const cells = h.cells.map((c) => Object.assign({}, c, {
      dark: c.v !== null && c.v !== undefined && (hi > lo ? (c.v - lo) / (hi - lo) : 0.5) > 0.55,
    }));
    const nx = h.x.length, ny = h.y.length;
    draw("heatmap", {
      type: "matrix",
      data: {
        datasets: [{
          label: h.label,
          data: cells,
          backgroundColor: (ctx) => shade(ctx.raw && ctx.raw.v, lo, hi),
          borderColor: (ctx) => (ctx.raw && ctx.raw.best ? "#f59e0b" : "rgba(255,255,255,0.9)"),
          borderWidth: (ctx) => (ctx.raw && ctx.raw.best ? 5 : 1),
          width: ({ chart }) => (chart.chartArea || {}).width / nx - 4,
          height: ({ chart }) => (chart.chartArea || {}).height / ny - 4,
        }],
      },
      options: {
        scales: {
          x: { type: "category", labels: h.x, offset: true, grid: { display: false },
               title: { display: true, text: h.x_key } },
          y: { type: "category", labels: h.y, offset: true, grid: { display: false },
               title: { display: true, text: h.y_key } },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: {
            title: () => "",
            label: (ctx) => h.y_key + " = " + ctx.raw.y + ", " + h.x_key + " = " + ctx.raw.x + ": union " +
              pct(ctx.raw.v) + (ctx.raw.upper_bound ? " (upper bound)" : "") +
              (ctx.raw.trials.length ? " [" + ctx.raw.trials.join(", ") + "]" : "") + (ctx.raw.best ? " best" : ""),
          } },
        },
      },
      plugins: [cellText],
    });
  }

  function poll(url, ms, onResponse) {
    async function tick() {
      if (document.visibilityState === "visible") {
        try {
          const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
          if (r.status === 401) { window.location.reload(); return; }  // logged out: the login page
          if (r.ok && (await onResponse(r)) === false) return;
        } catch (e) { /* the service restarts or the network blips: try again next tick */ }
      }
      window.setTimeout(tick, ms);
    }
    window.setTimeout(tick, ms);
  }

  function setProgress(progress) {
    const bar = document.getElementById("progress");
    const label = document.getElementById("progress-label");
    if (bar && progress.fraction !== null) bar.value = progress.fraction;
    if (label) label.textContent = progress.label;
  }

  async function refreshFragment(url, boxId) {
    const box = document.getElementById(boxId);
    if (!box) return;
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (r.ok) box.innerHTML = await r.text();  // server-rendered, escaped by the template engine
  }

  function jobPage() {
    epochCharts(page.epochs);
    radiusCharts(page.curves);
    heatmap(page.heatmap);
    if (page.log_url) {
      fetch(page.log_url, { credentials: "same-origin", cache: "no-store" })
        .then((r) => r.text())
        .then((text) => {
          const pre = document.getElementById("driver-log");
          if (!pre) return;
          pre.textContent = text.length > 200000 ? "…" + text.slice(-200000) : (text || "(empty)");
          pre.scrollTop = pre.scrollHeight;  // the latest lines matter most
        })
        .catch(() => {});
    }
    if (page.terminal) return;
    poll(page.live_url, page.poll_ms, async (r) => {
      const live = await r.json();
      if (live.status !== page.status || live.attempt !== page.attempt) {
        window.location.reload();  // a new status brings results, timeline, buttons: redraw it all
        return false;
      }
      setProgress(live.progress);
      epochCharts(live.epochs);
      heatmap(live.heatmap);
      if (page.trials_url) await refreshFragment(page.trials_url, "trials-box");
      return true;
    });
  }

  // ----------------------------------------------------------------------------- jobs page

  function jobsPage() {
    const body = document.getElementById("job-rows");
    poll(page.fragment, page.poll_ms, async (r) => {
      const rows = await r.text();
      // From here on nothing awaits: a box ticked while the rows were on their way is kept.
      const checked = new Set(Array.from(body.querySelectorAll("input[name=ids]:checked")).map((i) => i.value));
      body.innerHTML = rows;  // server-rendered rows, escaped by the template engine
      body.querySelectorAll("input[name=ids]").forEach((i) => { i.checked = checked.has(i.value); });
      return true;
    });
  }

  // -------------------------------------------------------------------------- compare page

  function comparePage() {
    (page.curves || []).forEach((c) => {
      radiusChart("compare-radius-" + c.norm, { labels: c.labels, axis: c.label + " radius" },
                  c.datasets.map((d, i) => overlay(i, d.label, d.data)), true);
    });
    if (page.epochs && page.epochs.length) {
      const epochs = Array.from(new Set([].concat.apply([], page.epochs.map((s) => s.epochs))))
        .sort((a, b) => a - b);
      const datasets = page.epochs.map((s, i) => {
        const at = new Map(s.epochs.map((e, j) => [e, s.union[j]]));
        return overlay(i, s.label, epochs.map((e) => (at.has(e) ? at.get(e) : null)));
      });
      draw("compare-epochs", {
        type: "line",
        data: { labels: epochs, datasets: datasets },
        options: { scales: { x: { title: { display: true, text: "epoch" } },
                             y: percentAxis("union (monitor, upper bound)") },
                   plugins: { tooltip: percentTooltip(), legend: { labels: { usePointStyle: true } } } },
      });
    }
  }

  if (page.page === "job") jobPage();
  else if (page.page === "jobs") jobsPage();
  else if (page.page === "compare") comparePage();
  document.body.dataset.chartsReady = "1";
})();
