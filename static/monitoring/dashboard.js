// Draws the dashboard's charts from the JSON the page carries (no request of its own).
"use strict";
(function () {
  function read(id) {
    const element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }
  function draw() {
    const series = read("dashboard-series") || [];
    const labels = read("dashboard-labels") || {};
    const at = series.map((point) => new Date(point.at).toLocaleString([], { month: "numeric", day: "numeric", hour: "2-digit" }));
    const line = (key, axis) => ({ label: labels[key], data: series.map((point) => point[key]), yAxisID: axis || "y", spanGaps: true, tension: 0.2 });
    const charts = {
      "chart-questions": [line("questions"), line("users")],
      "chart-latency": [line("total_p95"), line("first_token_p95")],
      "chart-failures": [line("failed"), line("rejected")],
      "chart-load": [line("load"), line("queue_wait_p95", "y2")],
    };
    for (const [id, datasets] of Object.entries(charts)) {
      const canvas = document.getElementById(id);
      if (!canvas || typeof Chart === "undefined") continue;
      const scales = { y: { beginAtZero: true } };
      if (datasets.some((set) => set.yAxisID === "y2")) scales.y2 = { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } };
      canvas.chart = new Chart(canvas, { type: "line", data: { labels: at, datasets }, options: { animation: false, responsive: true, scales } });
    }
    document.body.dataset.dashboardCharts = String(document.querySelectorAll("canvas").length);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
