/* The admin's live dashboard (templates/admin/dashboard.html, monitoring/admin.py).
 *
 * Polls GET /api/ai/stats/timeseries every few seconds and redraws the tiles and the charts as SVG, with
 * no library: the page must work offline and under a Content-Security-Policy without inline scripts, and
 * SVG leaves every drawn value in the DOM (tests/ops/test_dashboard.py reads it back). Each series' path
 * carries the API's numbers in data-values, and its legend the window's total or latest value.
 */
(function () {
  "use strict";

  const root = document.getElementById("dashboard");
  if (!root) {
    return;
  }
  const SVG = "http://www.w3.org/2000/svg";
  const API = root.dataset.api;
  const REFRESH_MS = Math.max(1, Number(root.dataset.refreshSeconds) || 5) * 1000;
  const PALETTE = ["#2b7bb9", "#e08a1e", "#3a9a4f", "#c0392b", "#8e5ab5", "#16a2a0", "#b5651d", "#7f8c8d", "#d35aa3"];
  const WIDTH = 560;
  const HEIGHT = 210;
  const MARGIN = { left: 58, right: 12, top: 10, bottom: 26 };

  let windowName = root.dataset.window;
  let timer = null;
  let request = 0; // the newest request's number: an older answer arriving late is dropped
  let updates = 0;

  // --- helpers ---

  function svg(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs || {})) {
      node.setAttribute(key, value);
    }
    if (parent) {
      parent.appendChild(node);
    }
    return node;
  }

  function html(name, attrs, parent, text) {
    const node = document.createElement(name);
    for (const [key, value] of Object.entries(attrs || {})) {
      node.setAttribute(key, value);
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    if (parent) {
      parent.appendChild(node);
    }
    return node;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function timeLabel(iso, bucketSeconds) {
    const d = new Date(iso);
    const hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    return bucketSeconds >= 3600 ? pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + hm : hm;
  }

  function bucketLabel(bucketSeconds) {
    return bucketSeconds % 3600 === 0
      ? bucketSeconds / 3600 + "-hour buckets"
      : bucketSeconds / 60 + "-minute buckets";
  }

  function niceCeiling(value) {
    if (!(value > 0)) {
      return 1;
    }
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= value) {
        return step * power;
      }
    }
    return 10 * power;
  }

  function formatNumber(value, unit) {
    if (value === null || value === undefined || Number.isNaN(value)) {
      return "–";
    }
    if (value === 0) {
      return "0";
    }
    if (unit === "USD") {
      return value >= 1 ? value.toFixed(2) : String(Number(value.toPrecision(3)));
    }
    if (unit === "s" && value < 10) {
      return String(Math.round(value * 100) / 100);
    }
    if (Math.abs(value) >= 10000) {
      return (value / 1000).toFixed(1) + "k";
    }
    return String(Math.round(value * 10) / 10);
  }

  function seconds(value) {
    if (value === null || value === undefined) {
      return "–";
    }
    if (value < 60) {
      return value.toFixed(1) + " s";
    }
    if (value < 3600) {
      return Math.floor(value / 60) + " min " + Math.round(value % 60) + " s";
    }
    return Math.floor(value / 3600) + " h " + Math.round((value % 3600) / 60) + " min";
  }

  function summarize(values, how) {
    const present = values.filter((v) => v !== null && v !== undefined);
    if (!present.length) {
      return null;
    }
    if (how === "sum") {
      return present.reduce((a, b) => a + b, 0);
    }
    if (how === "max") {
      return Math.max.apply(null, present);
    }
    return present[present.length - 1]; // "last"
  }

  // --- one chart ---

  function drawChart(section, spec, data) {
    const n = data.buckets.length;
    const plotW = WIDTH - MARGIN.left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const x = (i) => MARGIN.left + ((i + 0.5) * plotW) / n;
    let top = 0;
    for (const s of spec.series) {
      for (const v of s.values) {
        if (v !== null && v > top) {
          top = v;
        }
      }
    }
    // counts get whole-number ticks: a top of 1 would put "0.5 jobs" on the axis
    let ceiling = niceCeiling(top);
    if (spec.whole) {
      ceiling = Math.max(2, ceiling);
      ceiling = Number.isInteger(ceiling / 2) ? ceiling : ceiling * 2;
    }
    const y = (v) => MARGIN.top + plotH - (v / ceiling) * plotH;

    section.replaceChildren();
    section.dataset.chart = spec.key;
    html("h3", {}, section, spec.title + " (" + bucketLabel(data.bucket_seconds) + ")");
    const chart = svg("svg", {
      class: "chart",
      viewBox: "0 0 " + WIDTH + " " + HEIGHT,
      role: "img",
      "aria-label": spec.title,
      preserveAspectRatio: "xMidYMid meet",
    }, section);

    const yAxis = svg("g", { class: "axis y-axis" }, chart);
    for (const fraction of [0, 0.5, 1]) {
      const value = ceiling * fraction;
      svg("line", { class: "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(value), y2: y(value) }, yAxis);
      const label = svg("text", { class: "tick", x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end" }, yAxis);
      label.textContent = formatNumber(value, spec.unit);
    }
    const unit = svg("text", { class: "unit", x: 4, y: MARGIN.top + 8 }, yAxis);
    unit.textContent = spec.unit;

    const xAxis = svg("g", { class: "axis x-axis" }, chart);
    svg("line", { class: "baseline", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(0), y2: y(0) }, xAxis);
    const every = Math.max(1, Math.round(n / 6));
    for (let i = 0; i < n; i += every) {
      const label = svg("text", { class: "tick", x: x(i), y: HEIGHT - 8, "text-anchor": "middle" }, xAxis);
      label.textContent = timeLabel(data.buckets[i], data.bucket_seconds);
    }

    const legend = html("ul", { class: "legend" }, section);
    spec.series.forEach((s, index) => {
      const colour = PALETTE[index % PALETTE.length];
      const group = svg("g", { class: "series", "data-series": s.name }, chart);
      let d = "";
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) {
          pen = false;
          return;
        }
        d += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1);
        const alone = !pen && (i + 1 >= n || s.values[i + 1] === null || s.values[i + 1] === undefined);
        if (alone) {
          svg("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: colour }, group);
        }
        pen = true;
      });
      svg("path", {
        d: d || "M0 0",
        stroke: colour,
        fill: "none",
        "stroke-width": 2,
        "stroke-dasharray": s.dashed ? "5 3" : "none",
        "data-values": (s.raw || s.values).map((v) => (v === null || v === undefined ? "" : String(v))).join(","),
      }, group);

      const item = html("li", { "data-series": s.name }, legend);
      const swatch = html("span", { class: "swatch" + (s.dashed ? " dashed" : "") }, item);
      swatch.style.borderColor = colour;
      html("span", { class: "name" }, item, s.name + " ");
      const how = s.summary || spec.summary;
      const value = s.total !== undefined ? s.total : formatNumber(summarize(s.values, how), spec.unit);
      html("strong", { class: "total", "data-summary": how }, item, value);
      html("span", { class: "how" }, item, " " + { sum: "in window", last: "latest", max: "peak" }[how]);
    });
    if (!spec.series.length) {
      html("li", { class: "empty" }, legend, "nothing in this window");
    }

    // one transparent column per bucket: the browser's own tooltip shows the bucket's values
    const hover = svg("g", { class: "hover" }, chart);
    for (let i = 0; i < n; i++) {
      const column = svg("rect", {
        x: (x(i) - plotW / n / 2).toFixed(1),
        y: MARGIN.top,
        width: (plotW / n).toFixed(2),
        height: plotH,
      }, hover);
      const lines = spec.series.map((s) => s.name + ": " + formatNumber(s.values[i], spec.unit));
      svg("title", {}, column).textContent = timeLabel(data.buckets[i], data.bucket_seconds) + " UTC\n" + lines.join("\n");
    }
  }

  // --- the charts, from the API's answer ---

  function charts(data) {
    const jobs = [];
    for (const [status, byProvider] of Object.entries(data.jobs)) {
      for (const [provider, values] of Object.entries(byProvider)) {
        jobs.push({ name: provider + " " + status, values: values, dashed: status === "dead" });
      }
    }
    const spend = data.spend_usd.map(Number);
    return [
      { id: "chart-jobs", key: "jobs", whole: true, title: "Jobs succeeded and dead, by provider", unit: "jobs", summary: "sum", series: jobs },
      {
        id: "chart-latency", key: "latency", title: "Attempt latency", unit: "ms", summary: "last",
        series: [
          { name: "p50", values: data.latency_ms.p50 },
          { name: "p95", values: data.latency_ms.p95 },
        ],
      },
      {
        id: "chart-queue", key: "queue", whole: true, title: "Queue: submitted, and waiting for a first attempt", unit: "jobs", summary: "sum",
        series: [
          { name: "submitted", values: data.queue.submitted, summary: "sum" },
          { name: "waiting", values: data.queue.waiting, summary: "last" },
        ],
      },
      {
        id: "chart-wait", key: "wait", title: "Wait from submission to first claim", unit: "s", summary: "last",
        series: [
          { name: "p50", values: data.queue.wait_p50_seconds },
          { name: "p95", values: data.queue.wait_p95_seconds },
        ],
      },
      {
        id: "chart-errors", key: "errors", whole: true, title: "Failed attempts by error type", unit: "attempts", summary: "sum",
        series: Object.entries(data.errors).map(([type, values]) => ({ name: type, values: values })),
      },
      {
        id: "chart-spend", key: "spend", title: "Spend", unit: "USD", summary: "sum",
        series: [{ name: "spend", values: spend, raw: data.spend_usd, total: data.totals.spend_usd }],
      },
      {
        id: "chart-running", key: "running", whole: true, title: "Attempts in flight (most at a minute's end)", unit: "attempts", summary: "max",
        series: [{ name: "running", values: data.running }],
      },
    ];
  }

  function render(data) {
    const current = data.current;
    const set = (id, text) => {
      document.getElementById(id).textContent = text;
    };
    set("tile-running", String(current.running));
    set("tile-waiting", String(current.queued));
    set("tile-oldest", seconds(current.oldest_waiting_seconds));
    set("tile-retrying", String(current.retrying));
    set("tile-succeeded", String(data.totals.succeeded));
    set("tile-dead", String(data.totals.dead));
    set("tile-failed", String(data.totals.failed_attempts));
    set("tile-spend", data.totals.spend_usd);
    for (const spec of charts(data)) {
      drawChart(document.getElementById(spec.id), spec, data);
    }
    updates += 1;
    root.dataset.updates = String(updates);
    root.dataset.generatedAt = data.generated_at;
    root.dataset.start = data.start;
    root.dataset.renderedWindow = data.window;
  }

  function status(text, failed) {
    const node = document.getElementById("dash-status");
    node.textContent = text;
    node.classList.toggle("error", Boolean(failed));
  }

  // --- polling ---

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function refresh() {
    if (document.hidden) {
      schedule(); // nobody is looking: ask again later, not now
      return;
    }
    const mine = ++request;
    const url = API + "?window=" + encodeURIComponent(windowName);
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) =>
        response.json().then(
          (body) => ({ response: response, body: body }),
          () => ({ response: response, body: null }),
        ),
      )
      .then(({ response, body }) => {
        if (mine !== request) {
          return;
        }
        if (!response.ok) {
          const reason = body && body.error ? body.error.message : "HTTP " + response.status;
          throw new Error(reason);
        }
        render(body);
        status("Updated " + timeLabel(body.generated_at, 60) + ":" + pad(new Date(body.generated_at).getUTCSeconds()) +
          " UTC; every " + REFRESH_MS / 1000 + " s", false);
      })
      .catch((error) => {
        if (mine === request) {
          status("Refresh failed (" + error.message + "); showing the last answer, trying again in " + REFRESH_MS / 1000 + " s", true);
        }
      })
      .finally(() => {
        if (mine === request) {
          schedule();
        }
      });
  }

  for (const link of root.querySelectorAll("a.dash-window")) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      windowName = link.dataset.window;
      for (const other of root.querySelectorAll("a.dash-window")) {
        const selected = other === link;
        other.classList.toggle("selected", selected);
        if (selected) {
          other.setAttribute("aria-current", "true");
        } else {
          other.removeAttribute("aria-current");
        }
      }
      history.replaceState(null, "", "?window=" + encodeURIComponent(windowName));
      const api = document.getElementById("dash-api-link");
      if (api) {
        api.href = API + "?window=" + encodeURIComponent(windowName);
      }
      status("Loading " + windowName + "…", false);
      refresh();
    });
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      refresh();
    }
  });
  refresh();
})();
