// The metrics dashboard: live overview table and per-deployment charts (uPlot, served from static_build).
(function () {
  "use strict";
  var PALETTE = ["#b4411b", "#215e9e", "#1f7a3a", "#8a5a00", "#6b3fa0", "#0f7c86", "#a03f6b", "#555"];

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    return Number(value).toFixed(digits === undefined ? 2 : digits);
  }
  // Every time on the pages is 24-hour (the server renders H:i:s); so is the browser's.
  function clock(date, seconds) {
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(date.getHours()) + ":" + two(date.getMinutes()) + (seconds === false ? "" : ":" + two(date.getSeconds()));
  }
  // The charts' time axis on the same clock: seconds where ticks are under a minute apart, and the date
  // under the first tick and under every midnight, so a day-long or week-long range reads unambiguously.
  function timeTicks(el) {
    return function (u, splits) {
      function two(n) { return (n < 10 ? "0" : "") + n; }
      var step = splits.length > 1 ? splits[1] - splits[0] : 60;
      var labels = splits.map(function (s, i) {
        var d = new Date(s * 1000), time = clock(d, step < 60);
        var day = two(d.getMonth() + 1) + "-" + two(d.getDate());
        if (step >= 86400) return day;
        return i === 0 || (d.getHours() === 0 && d.getMinutes() === 0 && d.getSeconds() === 0) ? time + "\n" + day : time;
      });
      el.setAttribute("data-x-labels", labels.join("|"));  // canvas text cannot be read from the page
      return labels;
    };
  }
  function pct(value) { return value === null || value === undefined ? "–" : (value * 100).toFixed(1) + "%"; }
  function esc(text) {
    var div = document.createElement("div"); div.textContent = text === null || text === undefined ? "" : String(text);
    return div.innerHTML;
  }

  // ---- overview -------------------------------------------------------------------------
  function overview() {
    var table = document.querySelector("table[data-overview]");
    if (!table) return;
    var url = table.getAttribute("data-overview"), body = table.querySelector("tbody");
    var filter = document.querySelector("[data-filter-table]");
    var sortKey = null, sortDir = 1, rows = null;

    function render() {
      if (!rows) return;
      var q = filter ? filter.value.trim().toLowerCase() : "";
      var shown = rows.filter(function (r) {
        return !q || r.name.toLowerCase().indexOf(q) >= 0 || r.model.toLowerCase().indexOf(q) >= 0 || r.status.indexOf(q) >= 0;
      });
      if (sortKey) {
        shown.sort(function (a, b) {
          var x = a[sortKey], y = b[sortKey];
          if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
          return (x > y ? 1 : -1) * sortDir;
        });
      }
      body.innerHTML = shown.map(function (r) {
        var gpu = r.gpu_utilization === null ? "–" : pct(r.gpu_utilization) + " · " + fmt(r.gpu_memory_bytes / 1048576, 0) + " MiB";
        return '<tr data-name="' + esc(r.name) + '"' + (r.problems.length ? ' class="problem"' : "") + ">" +
          '<td><a href="/dashboard/deployments/' + esc(r.name) + '/">' + esc(r.name) + '</a><br><small class="muted">' + esc(r.model) + "</small></td>" +
          '<td><span class="status status-' + esc(r.status) + '">' + esc(r.status) + "</span></td>" +
          "<td>" + r.replicas_ready + " / " + r.replicas_desired + "</td>" +
          '<td data-metric="requests_per_s">' + fmt(r.requests_per_s, 1) + "</td>" +
          "<td>" + pct(r.error_rate) + "</td><td>" + fmt(r.latency_p50_ms) + "</td><td>" + fmt(r.latency_p95_ms) + "</td>" +
          "<td>" + fmt(r.latency_p99_ms) + "</td><td>" + fmt(r.mean_batch_size, 1) + "</td><td>" + fmt(r.queue_depth, 0) + "</td>" +
          "<td>" + gpu + '</td><td class="reason">' + esc(r.problems.join("; ")) + "</td></tr>";
      }).join("") || '<tr><td colspan="12" class="muted">No deployments match.</td></tr>';
    }
    function tick() {
      fetch(url, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) { rows = data.deployments; render(); } setTimeout(tick, 5000); })
        .catch(function () { setTimeout(tick, 10000); });
    }
    table.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.setAttribute("tabindex", "0");
      function sort() {
        var key = th.getAttribute("data-sort");
        sortDir = sortKey === key ? -sortDir : 1; sortKey = key;
        table.querySelectorAll("th[data-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
        render();
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
    });
    if (filter) filter.addEventListener("input", render);
    tick();
  }

  // ---- per-deployment charts ---------------------------------------------------------------
  function chartSeries(data, kind) {
    var sets = [];
    Object.keys(data.variants).forEach(function (name) {
      var v = data.variants[name];
      if (kind === "requests_per_s" || kind === "queue_depth") sets.push({ label: name, values: v[kind] });
      if (kind === "latency") ["p50", "p95", "p99"].forEach(function (q) { sets.push({ label: name + " " + q, values: v["latency_" + q + "_ms"] }); });
      if (kind === "replicas") {
        sets.push({ label: name + " reporting", values: v.replicas });
        sets.push({ label: name + " desired", values: v.desired_replicas });
      }
      if (kind === "errors_per_s") Object.keys(v.errors_per_s).forEach(function (o) { sets.push({ label: name + " " + o, values: v.errors_per_s[o] }); });
    });
    if (["cpu_percent", "rss_mb", "gpu_utilization_percent"].indexOf(kind) >= 0) {
      Object.keys(data.workers).forEach(function (id) {
        var w = data.workers[id];
        sets.push({ label: w.variant + " #" + id + (w.node ? " @" + w.node : ""), values: w[kind] });
      });
    }
    return sets;
  }

  function drawHistogram(el, histogram) {
    if (!histogram || !histogram.counts || !histogram.counts.length) { el.innerHTML = '<p class="muted">No batches in this range.</p>'; return; }
    var max = Math.max.apply(null, histogram.counts) || 1, lower = 0;
    el.innerHTML = '<ul class="histogram">' + histogram.counts.map(function (c, i) {
      var upper = histogram.le[i], label = upper === "+Inf" ? "> " + lower : (lower === 0 && +upper === 1 ? "1" : (lower + 1 === +upper ? String(upper) : (lower + 1) + "–" + upper));
      lower = upper === "+Inf" ? lower : +upper;
      return '<li><span class="h-label">' + esc(label) + '</span><span class="bar" style="width:' + Math.max(2, c / max * 200) + 'px"></span> <span class="h-count">' + c + "</span></li>";
    }).join("") + "</ul>";
    el.setAttribute("data-total", histogram.counts.reduce(function (a, b) { return a + b; }, 0));
  }

  // The width a chart may take: its box without padding (a phone's 390 px leaves little to spare).
  function plotWidth(el, fallback) {
    var style = window.getComputedStyle(el);
    var inner = el.clientWidth - parseFloat(style.paddingLeft || 0) - parseFloat(style.paddingRight || 0);
    return Math.max(200, inner > 0 ? inner : fallback);
  }

  function sparse(values) {
    for (var i = 1; i < values.length; i++) if (values[i] !== null && values[i - 1] !== null) return false;
    return true;
  }

  // The part of the range the reports cover: a deployment minutes old has one bucket of a 7-day range.
  function covered(data) {
    var first = null, last = null;
    Object.keys(data.variants).forEach(function (name) {
      (data.variants[name].requests_per_s || []).forEach(function (v, i) {
        if (v === null) return;
        if (first === null || data.t[i] < first) first = data.t[i];
        if (last === null || data.t[i] > last) last = data.t[i];
      });
    });
    if (first === null) return " · no reports in this range";
    var a = new Date(first * 1000), b = new Date(last * 1000);
    var day = function (d) { return d.getFullYear() + "-" + ("0" + (d.getMonth() + 1)).slice(-2) + "-" + ("0" + d.getDate()).slice(-2); };
    var text = day(a) === day(b) ? clock(a, false) + "–" + clock(b, false) : day(a) + " " + clock(a, false) + " – " + day(b) + " " + clock(b, false);
    return " · data " + (first === last ? "at " + clock(a, false) : "from " + text);
  }

  function charts() {
    var root = document.querySelector("[data-series]");
    if (!root || !window.uPlot) return;
    var url = root.getAttribute("data-series"), range = "15m", plots = {};
    var updated = document.querySelector("[data-updated]");

    function update(data) {
      var cap = document.querySelector("[data-worker-cap]"), shown = Object.keys(data.workers).length;
      if (cap) {
        cap.hidden = !(data.workers_limit && shown >= data.workers_limit);
        cap.textContent = "Per-worker charts show " + shown + " workers (the live ones first); the variants' charts count every worker.";
      }
      root.querySelectorAll("[data-chart]").forEach(function (el) {
        var kind = el.getAttribute("data-chart");
        if (kind === "batch_histogram") {
          var merged = null;
          Object.keys(data.variants).forEach(function (n) {
            var h = data.variants[n].batch_histogram;
            if (!h || !h.counts) return;
            if (!merged) merged = { le: h.le.slice(), counts: h.counts.slice() };
            else h.counts.forEach(function (c, i) { merged.counts[i] += c; });
          });
          drawHistogram(el, merged); return;
        }
        var sets = chartSeries(data, kind);
        var points = sets.reduce(function (n, s) { return n + s.values.filter(function (v) { return v !== null; }).length; }, 0);
        el.setAttribute("data-points", points);
        if (!points) {
          // Axes with nothing on them read as broken: say why instead.
          if (plots[kind]) { plots[kind].plot.destroy(); delete plots[kind]; }
          el.innerHTML = '<p class="muted" data-empty>' + (kind === "gpu_utilization_percent" && Object.keys(data.workers).length
            ? "No GPU on these workers." : "No data in this range.") + "</p>";
          return;
        }
        var key = kind + ":" + sets.map(function (s) { return s.label; }).join("|");
        var columns = [data.t].concat(sets.map(function (s) { return s.values; }));
        key += ":" + sets.map(function (s) { return sparse(s.values) ? "p" : "l"; }).join("");
        if (plots[kind] && plots[kind].key === key) { plots[kind].plot.setData(columns); return; }
        if (plots[kind]) plots[kind].plot.destroy();
        el.innerHTML = "";
        if (!sets.length) { el.innerHTML = '<p class="muted">No data yet.</p>'; delete plots[kind]; return; }
        var opts = {
          width: plotWidth(el, 320), height: 200,
          // A series with no two neighbouring values draws no line: show its values as points.
          series: [{}].concat(sets.map(function (s, i) {
            var colour = PALETTE[i % PALETTE.length];
            return { label: s.label, stroke: colour, width: 1.5, spanGaps: false, points: { show: sparse(s.values), size: 7, fill: colour } };
          })),
          axes: [{ values: timeTicks(el), size: 44 }, { label: el.getAttribute("data-unit") || "" , size: 50 }],
          scales: { x: { time: true } }, legend: { live: false },
        };
        plots[kind] = { key: key, plot: new window.uPlot(opts, columns, el) };
      });
      updateGateway(data.gateway || {});
      if (updated) updated.textContent = "updated " + clock(new Date()) + covered(data);
      root.setAttribute("data-loaded", String(Date.now()));
    }

    function updateGateway(gateway) {
      var table = document.getElementById("gateway-table");
      if (!table) return;
      var names = Object.keys(gateway);
      if (!names.length) return;
      table.querySelector("tbody").innerHTML = names.map(function (n) {
        var g = gateway[n], s = g.shadow;
        var statuses = Object.keys(g.responses || {}).map(function (k) { return k + ": " + g.responses[k]; }).join(", ");
        return "<tr><td>" + esc(n) + "</td><td>" + g.requests + "</td><td>" + esc(statuses) + "</td><td>" + fmt(g.latency_p50_ms) +
          "</td><td>" + fmt(g.latency_p99_ms) + "</td><td>" + (s ? pct(s.argmax_agreement) + " of " + s.compared : "–") +
          "</td><td>" + (s ? fmt(s.shadow_p50_ms) + " vs " + fmt(s.live_p50_ms) : "–") + "</td><td>" + (s ? fmt(s.max_abs_diff, 4) : "–") + "</td></tr>";
      }).join("");
    }

    // The answer carries an ETag: the browser revalidates (a 304 costs the server a few
    // indexed reads), and an unchanged answer is not drawn again. The pause follows the
    // range: refresh_s is 5 s for 15 minutes, minutes for a week.
    var lastTag = null, refreshS = 5;
    function tick() {
      var asked = range;
      fetch(url + "?range=" + encodeURIComponent(asked), { credentials: "same-origin", cache: "no-cache" })
        .then(function (r) {
          if (!r.ok) return null;
          var tag = r.headers.get("ETag");
          if (tag && tag === lastTag) return null;
          lastTag = tag;
          return r.json();
        })
        .then(function (data) {
          if (data && asked === range) { refreshS = data.refresh_s || 5; update(data); }
          setTimeout(tick, refreshS * 1000);
        })
        .catch(function () { setTimeout(tick, 10000); });
    }
    document.querySelectorAll("[data-range]").forEach(function (button) {
      button.addEventListener("click", function () {
        range = button.getAttribute("data-range");
        document.querySelectorAll("[data-range]").forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
        fetch(url + "?range=" + encodeURIComponent(range), { credentials: "same-origin" })
          .then(function (r) { lastTag = r.headers.get("ETag"); return r.json(); })
          .then(function (data) { refreshS = data.refresh_s || 5; update(data); });
      });
    });
    tick();
  }

  // ---- version page: profile chart and serving advice ------------------------------------------
  function profileChart() {
    var el = document.querySelector("[data-profile-chart]");
    if (!el || !window.uPlot) return;
    var rows = JSON.parse(el.getAttribute("data-profile-chart"));
    if (!rows.length) return;
    var x = rows.map(function (r) { return r.batch_size; });
    var ort = rows.map(function (r) { return r.onnxruntime_ms; });
    var torch = rows.map(function (r) { return r.torch_ms === undefined ? null : r.torch_ms; });
    new window.uPlot({
      width: plotWidth(el, 360), height: 220,
      scales: { x: { time: false, distr: 3 } },
      axes: [{ label: "batch size" }, { label: "ms", size: 50 }],
      series: [{ label: "batch" }, { label: "ONNX Runtime", stroke: PALETTE[0], width: 2 }, { label: "PyTorch", stroke: PALETTE[1], width: 2 }],
    }, [x, ort, torch], el);
  }

  function advice() {
    var form = document.querySelector("form[data-advice]");
    if (!form) return;
    var out = document.querySelector("[data-advice-result]");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var params = new URLSearchParams(new FormData(form));
      fetch(form.getAttribute("data-advice") + "?" + params.toString(), { credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          if (!res.ok) { out.innerHTML = '<p class="error" role="alert">' + esc(res.body.message) + "</p>"; return; }
          var a = res.body, html = "";
          if (a.choice && !a.shortfall) {
            html += '<p class="ok" data-advice-choice>' + esc(a.explanation) + "</p>";
          } else if (a.shortfall) {
            html += '<p class="error" role="alert" data-advice-shortfall>' + esc(a.shortfall) + "</p>";
          }
          if (a.choice) {
            // a.deploy is the deploy form's query for exactly this advice (every batching option, from the server)
            var c = a.choice, deploy = form.getAttribute("data-deploy") + "?" + new URLSearchParams(a.deploy || {}).toString();
            html += "<dl class=\"facts\"><dt>Batch size</dt><dd>" + c.batch_size + "</dd><dt>Queue delay</dt><dd>" + c.queue_delay_ms +
              " ms</dd><dt>Instances</dt><dd>" + a.instances + "</dd><dt>Replicas</dt><dd>" + a.replicas + "</dd><dt>Protocol</dt><dd>" +
              esc(c.protocol_label) + "</dd></dl>" +
              '<p><a class="button" href="' + deploy + '" data-advice-deploy>Create a deployment with exactly this</a></p>';
          }
          if (a.throughput_basis) html += '<p class="muted" data-advice-basis>' + esc(a.throughput_basis) + "</p>";
          html += '<p data-advice-cold-start>' + (a.cold_start_s === null
            ? "Cold start: not measured yet (no worker of this version has become ready)."
            : "Cold start (measured, median start to ready): " + fmt(a.cold_start_s, 1) +
              " s. A variant scaled to zero makes its first caller wait about this long.") + "</p>";
          html += '<details><summary>All options</summary><div class="table-wrap"><table><thead><tr><th>Protocol</th><th>Batch</th><th>Batch latency (ms)</th><th>Codec (ms/request)</th><th>Worst latency (ms)</th><th>Predicted throughput (req/s)</th><th>Measured throughput (req/s)</th><th>Measured p99 (ms)</th><th>Meets</th></tr></thead><tbody>' +
            a.options.map(function (o) {
              return "<tr><td>" + esc(o.protocol_label) + "</td><td>" + o.batch_size + "</td><td>" + fmt(o.batch_latency_ms, 3) + "</td><td>" +
                fmt(o.codec_ms, 4) + "</td><td>" + fmt(o.worst_latency_ms) + "</td><td>" + fmt(o.throughput_rps, 0) + "</td><td data-measured-rps>" +
                (o.measured ? fmt(o.measured_throughput_rps, 0) + " (" + o.measured_concurrency + " clients)" : "–") + "</td><td>" +
                (o.measured ? fmt(o.measured_p99_ms) : "–") + "</td><td>" + (o.meets ? "yes" : "no") + "</td></tr>";
            }).join("") + "</tbody></table></div></details>";
          if (a.measurements.length) {
            html += '<details><summary>Every measured cell</summary><div class="table-wrap"><table><thead><tr><th>Batch</th><th>Instances</th><th>Protocol</th><th>Clients</th><th>Throughput (req/s)</th><th>p50 (ms)</th><th>p99 (ms)</th><th>Failed</th><th>Measured</th></tr></thead><tbody>' +
              a.measurements.map(function (m) {
                return "<tr><td>" + m.batch_size + "</td><td>" + m.instances + "</td><td>" + esc(m.protocol) + "</td><td>" + m.concurrency + "</td><td>" +
                  fmt(m.throughput_rps, 0) + "</td><td>" + fmt(m.p50_ms) + "</td><td>" + fmt(m.p99_ms) + "</td><td>" + m.failed_requests + "</td><td>" + esc(m.measured_at) + "</td></tr>";
              }).join("") + "</tbody></table></div></details>";
          }
          out.innerHTML = html;
        });
    });
  }

  // the latest measurement run: its progress while it runs (polled), then when and where it ran
  function measurement() {
    var el = document.querySelector("[data-measurement]");
    if (!el) return;
    var url = el.getAttribute("data-measurement"), wasRunning = false;
    function show() {
      fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (body) {
        var run = body.run, running = run && (run.status === "queued" || run.status === "running");
        el.className = run && run.status === "failed" ? "error" : "muted";
        if (!run) {
          el.textContent = "Throughput figures are predicted until this version is measured on this machine.";
        } else if (running) {
          el.textContent = "Measuring on this machine (" + run.progress + "%): " + (run.step || run.status);
        } else if (run.status === "failed") {
          el.textContent = "The last measurement failed: " + run.error;
        } else {
          el.textContent = "Measured on this machine (" + run.machine + ") at " + run.finished_at + ", for a " +
            run.latency_budget_ms + " ms budget: " + body.rows.length + " cells. The advice quotes them.";
        }
        var form = document.querySelector("form[data-advice]");
        if (wasRunning && !running && form && document.querySelector("[data-advice-choice], [data-advice-shortfall]")) {
          form.requestSubmit();
        }
        wasRunning = running;
        if (running) setTimeout(show, 2000);
      });
    }
    show();
  }

  document.addEventListener("DOMContentLoaded", function () { overview(); charts(); profileChart(); advice(); measurement(); });
})();
