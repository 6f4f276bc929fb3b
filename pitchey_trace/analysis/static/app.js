// pitchey-trace analysis pages: the overview/search page (body data-page="index") and the
// waterfall page (data-page="trace"). Plain DOM code, no build step, no third-party code.
//
// Span names, attributes, messages and service names come from traced applications and may be
// hostile, so every value reaches the page through textContent or a DOM property, and markup is
// only ever built with createElement: never an HTML string.
"use strict";

(function () {
  // -- DOM helpers -------------------------------------------------------------------------------

  // Archived text can be any length. Chromium lays out a long unbroken word in a wrapping
  // table cell in time that grows with the square of its length (a 100,000-character value
  // froze the page for minutes), so text is shown clipped: MAX_TEXT characters in tables and
  // lists, MAX_DETAIL in the span details. A trace's answers cut long values too (saying how
  // long each was in "clipped"); /api/traces/{id}/spans/{span_id} holds a span's whole values.
  const MAX_TEXT = 1000;
  const MAX_DETAIL = 4000;

  /** ``text`` cut to ``max`` characters (never inside a surrogate pair), saying how much is left
   * out of its ``full`` length (when the API already cut it) or of its own. */
  function clip(text, max, full) {
    const s = String(text);
    const limit = max || MAX_TEXT;
    const total = Math.max(Number(full) || 0, s.length);
    if (total <= limit && total === s.length) return s;
    let end = Math.min(limit, s.length);
    const last = s.charCodeAt(end - 1);
    if (last >= 0xd800 && last <= 0xdbff) end -= 1;
    return s.slice(0, end) + "… (" + (total - end) + " more characters)";
  }

  /** An element with optional class, text (clipped at ``max``, MAX_TEXT by default, of ``full``
   * characters when the API cut it), title and dataset; children are appended in order. */
  function el(tag, opts, children) {
    const node = document.createElement(tag);
    const o = opts || {};
    if (o.cls) node.className = o.cls;
    if (o.text !== undefined && o.text !== null) node.textContent = clip(o.text, o.max, o.full);
    if (o.title) node.title = clip(o.title, MAX_DETAIL);
    if (o.data) {
      for (const key of Object.keys(o.data)) node.dataset[key] = String(o.data[key]);
    }
    for (const child of children || []) {
      if (child !== null && child !== undefined) node.appendChild(child);
    }
    return node;
  }

  /** The full length of ``obj[field]`` when the API cut it (its "clipped" says), else undefined. */
  function fullLength(obj, field) {
    const lengths = obj && obj.clipped;
    return lengths && typeof lengths[field] === "number" ? lengths[field] : undefined;
  }

  /** Options for el() showing ``obj[field]`` (a text the API may have cut). */
  function textOf(obj, field, extra) {
    return Object.assign({ text: obj[field], full: fullLength(obj, field) }, extra || {});
  }

  /** Options for el() showing ``text``, made of ``obj``'s ``fields`` the API may have cut:
   * its full length counts the characters cut out of them. */
  function composed(text, obj, fields, extra) {
    let cut = 0;
    for (const field of fields) {
      const full = fullLength(obj, field);
      if (full !== undefined && obj[field] !== null && obj[field] !== undefined) cut += full - String(obj[field]).length;
    }
    return Object.assign({ text: text, full: cut > 0 ? text.length + cut : undefined }, extra || {});
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function cell(text, cls) {
    return el("td", { text: text, cls: cls });
  }

  function numCell(text) {
    return cell(text, "num");
  }

  function showMessage(text) {
    const box = byId("message");
    box.textContent = clip(text);
    box.hidden = false;
  }

  /** GET a JSON endpoint; a non-2xx answer throws an Error carrying the API's message. */
  async function getJSON(url) {
    // Against the origin, not the page address: an address with credentials in it
    // (http://user:pw@host/, behind HTTP Basic authentication) cannot be fetched relative to.
    const target = new URL(url, window.location.origin);
    const response = await fetch(target, { headers: { accept: "application/json" } });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.error ? body.error : response.status + " " + response.statusText;
      const error = new Error(String(detail));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // -- formatting --------------------------------------------------------------------------------

  function fmtMs(ms) {
    if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return "–";
    const v = Number(ms);
    if (v === 0) return "0 ms";
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 1 : 2) + " s";
    if (v >= 100) return v.toFixed(0) + " ms";
    if (v >= 1) return v.toFixed(1) + " ms";
    return v.toFixed(2) + " ms";
  }

  function fmtPct(fraction) {
    if (fraction === null || fraction === undefined) return "–";
    return (Number(fraction) * 100).toFixed(1) + "%";
  }

  function fmtTime(unixNano) {
    if (unixNano === null || unixNano === undefined) return "–";
    const date = new Date(Number(unixNano) / 1e6);
    if (Number.isNaN(date.getTime())) return "–";
    return date.toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function fmtValue(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  function traceLink(traceId, text) {
    const a = el("a", { text: text || String(traceId).slice(0, 16), title: traceId, cls: "trace-link" });
    a.href = "/traces/" + encodeURIComponent(traceId);
    return a;
  }

  // -- overview / search page --------------------------------------------------------------------

  const SEARCH_FIELDS = [
    "service", "name", "min_duration_ms", "max_duration_ms", "status", "log", "since", "until", "sort", "limit",
  ];

  /** The search parameters of the page address (attr repeated, one per key=value). */
  function searchParamsFromLocation() {
    const here = new URLSearchParams(window.location.search);
    const out = new URLSearchParams();
    for (const field of SEARCH_FIELDS) {
      const value = here.get(field);
      if (value) out.set(field, value);
    }
    for (const raw of here.getAll("attr")) {
      for (const line of raw.split("\n")) {
        if (line.trim()) out.append("attr", line.trim());
      }
    }
    return out;
  }

  function fillForm(form, params) {
    for (const field of SEARCH_FIELDS) {
      if (!params.has(field)) continue;
      const input = form.elements[field];
      const value = params.get(field);
      // A value the list does not offer (a bookmarked since=2h, an ISO time) gets an option of
      // its own: the form shows the search that runs, and Search keeps it in the address.
      if (input.tagName === "SELECT" && !Array.from(input.options).some((o) => o.value === value)) {
        const option = el("option", { text: value });
        option.value = value;
        input.appendChild(option);
      }
      input.value = value;
    }
    form.elements.attr.value = params.getAll("attr").join("\n");
  }

  function traceRows(tbody, traces) {
    tbody.replaceChildren();
    for (const t of traces) {
      const row = el("tr", { cls: t.status === "error" ? "error" : "", data: { traceId: t.trace_id } }, [
        el("td", {}, [traceLink(t.trace_id)]),
        cell(t.name),
        cell(t.service),
        numCell(fmtMs(t.duration_ms)),
        numCell(t.span_count),
      ]);
      tbody.appendChild(row);
    }
  }

  function renderOverview(o) {
    byId("overview-cards").replaceChildren(
      card("Spans", o.spans),
      card("Traces", o.traces),
      card("Errors", o.errors, o.errors > 0 ? "bad" : ""),
      card("Error rate", fmtPct(o.error_rate)),
      card("From", fmtTime(o.start_time_unix_nano)),
      card("To", fmtTime(o.end_time_unix_nano))
    );
    const services = byId("services").tBodies[0];
    services.replaceChildren();
    for (const s of o.services || []) {
      services.appendChild(
        el("tr", {}, [cell(s.service), numCell(s.spans), numCell(s.errors), numCell(s.instances || "–")])
      );
    }
    traceRows(byId("slowest").tBodies[0], o.slowest || []);
    traceRows(byId("recent-errors").tBodies[0], o.recent_errors || []);
    const audit = o.audit || {};
    const outcomes = Object.keys(audit.by_outcome || {})
      .map(function (k) {
        return k + ": " + audit.by_outcome[k];
      })
      .join(", ");
    byId("audit").textContent = clip(
      "Audit records: " + (audit.records || 0) + " (security events: " + (audit.security_events || 0) + ")" +
        (outcomes ? " · by outcome: " + outcomes : "")
    );
  }

  function card(label, value, cls) {
    return el("div", { cls: "card " + (cls || "") }, [
      el("div", { cls: "card-value", text: value }),
      el("div", { cls: "card-label", text: label }),
    ]);
  }

  function renderResults(traces) {
    const tbody = byId("results").tBodies[0];
    tbody.replaceChildren();
    for (const t of traces) {
      tbody.appendChild(
        el("tr", { cls: t.status === "error" ? "error" : "", data: { traceId: t.trace_id } }, [
          el("td", {}, [traceLink(t.trace_id)]),
          cell(t.name),
          cell(t.service),
          cell(fmtTime(t.start_time_unix_nano)),
          numCell(fmtMs(t.duration_ms)),
          numCell(t.span_count),
          numCell(t.error_count),
          cell((t.services || []).join(", ")),
          cell(t.status + (t.complete ? "" : " (incomplete)")),
        ])
      );
    }
    byId("results-empty").hidden = traces.length > 0;
  }

  const SVG = "http://www.w3.org/2000/svg";

  /** An SVG element with attributes (set one by one: no markup string is ever parsed). */
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const key of Object.keys(attrs || {})) node.setAttribute(key, String(attrs[key]));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  /** p50/p95/p99 per step as three polylines over a shared time and latency scale. */
  function renderSeries(series) {
    const box = byId("latency-chart");
    const points = (series && series.points) || [];
    box.replaceChildren();
    const legend = byId("latency-legend");
    if (!points.length) {
      legend.textContent = "No spans or rollups in this window.";
      return;
    }
    const width = 900, height = 180, pad = 28;
    const t0 = points[0].start_unix_nano, t1 = points[points.length - 1].start_unix_nano;
    const top = Math.max(...points.map((p) => Number(p.p99_ms) || 0), 0.001);
    const x = (t) => pad + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (width - 2 * pad) : (width - 2 * pad) / 2);
    const y = (v) => height - pad - ((Number(v) || 0) / top) * (height - 2 * pad);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
    for (const q of ["p50", "p95", "p99"]) {
      const coords = points.map((p) => `${x(p.start_unix_nano).toFixed(1)},${y(p[q + "_ms"]).toFixed(1)}`);
      chart.appendChild(svg("polyline", { class: q, points: coords.join(" "), "data-points": points.length }));
      for (const p of points) {  // markers: a one-point series still shows
        chart.appendChild(svg("circle", { class: q, r: 2.5, cx: x(p.start_unix_nano).toFixed(1), cy: y(p[q + "_ms"]).toFixed(1) }));
      }
    }
    chart.appendChild(svg("text", { class: "axis", x: 2, y: pad - 8 }, fmtMs(top)));
    chart.appendChild(svg("text", { class: "axis", x: 2, y: height - 6 }, fmtTime(t0)));
    box.appendChild(chart);
    const total = points.reduce((n, p) => n + p.count, 0);
    legend.textContent =
      `p50 (blue), p95 (orange), p99 (red) every ${series.step_s} s from ${series.source}: ` +
      `${points.length} points, ${total} spans`;
  }

  function renderPerformance(stats) {
    const select = byId("latency-operation");
    const chosen = select.value;
    select.replaceChildren(el("option", { text: "all operations" }));
    select.firstChild.value = "";
    for (const op of [...new Set(stats.map((s) => s.operation))].sort()) {
      const option = el("option", { text: op });
      option.value = op;
      select.appendChild(option);
    }
    select.value = chosen;
    const tbody = byId("performance-table").tBodies[0];
    tbody.replaceChildren();
    for (const s of stats) {
      tbody.appendChild(
        el("tr", { cls: s.errors > 0 ? "has-errors" : "" }, [
          cell(s.service),
          cell(s.operation),
          cell(s.kind),
          numCell(s.count),
          numCell(s.errors),
          numCell(fmtPct(s.error_rate)),
          numCell(fmtMs(s.mean_ms)),
          numCell(fmtMs(s.p50_ms)),
          numCell(fmtMs(s.p95_ms)),
          numCell(fmtMs(s.p99_ms)),
          numCell(fmtMs(s.max_ms)),
          cell(s.source),
        ])
      );
    }
  }

  // A cell of short links to sample traces.
  function traceLinksCell(ids) {
    const links = el("td", { cls: "links" });
    for (const id of ids || []) {
      links.appendChild(traceLink(id, String(id).slice(0, 8)));
      links.appendChild(document.createTextNode(" "));
    }
    return links;
  }

  function renderErrors(groups) {
    const tbody = byId("errors-table").tBodies[0];
    tbody.replaceChildren();
    for (const g of groups) {
      const links = traceLinksCell(g.trace_ids);
      tbody.appendChild(
        el("tr", { data: { fingerprint: g.fingerprint } }, [
          cell(g.service),
          cell(g.name),
          cell(g.exception_type || "–"),
          cell(g.message),
          numCell(g.count),
          cell(fmtTime(g.first_seen_unix_nano)),
          cell(fmtTime(g.last_seen_unix_nano)),
          links,
        ])
      );
    }
  }

  function renderDependencies(edges) {
    const tbody = byId("dependencies-table").tBodies[0];
    tbody.replaceChildren();
    for (const e of edges) {
      const links = traceLinksCell(e.trace_ids);
      const callee = cell(e.callee);
      if (!e.traced) callee.appendChild(el("em", { text: " (untraced)" }));
      // every call when the rollups count the edge's operations, else the kept ones
      const estimated = e.estimated_calls !== null && e.estimated_errors !== null;
      const calls = estimated ? e.estimated_calls : e.count;
      const errors = estimated ? e.estimated_errors : e.errors;
      tbody.appendChild(
        el("tr", { cls: e.errors > 0 ? "has-errors" : "" }, [
          cell(e.caller === null ? "(outside)" : e.caller),
          callee,
          cell(e.protocol),
          numCell(calls),
          numCell(e.count),
          numCell(fmtPct(calls ? errors / calls : 0)),
          numCell(fmtMs(e.p50_ms)),
          numCell(fmtMs(e.p95_ms)),
          numCell(fmtMs(e.p99_ms)),
          links,
        ])
      );
    }
  }

  function renderSecurity(records) {
    const tbody = byId("security-table").tBodies[0];
    tbody.replaceChildren();
    for (const r of records) {
      tbody.appendChild(
        el("tr", {}, [
          cell(fmtTime(r.time_unix_nano)),
          cell(r.actor || "–"),
          cell(r.action),
          cell(r.target),
          cell(r.outcome),
          el("td", { cls: "links" }, [r.trace_id ? traceLink(r.trace_id, String(r.trace_id).slice(0, 8)) : null]),
        ])
      );
    }
    byId("security-empty").hidden = records.length > 0;
  }

  // The latest shipped log lines of ERROR and above, each linked to its trace.
  function renderErrorLogs(lines) {
    byId("error-logs-table").tBodies[0].replaceChildren(
      ...lines.map(function (r) {
        return el("tr", {}, [
          cell(fmtTime(r.time_unix_nano)),
          cell(r.service),
          cell(r.logger),
          el("td", {}, [el("code", { cls: "log-body", text: r.body })]),
          el("td", { cls: "links" }, [r.trace_id ? traceLink(r.trace_id, String(r.trace_id).slice(0, 8)) : null]),
        ]);
      })
    );
    byId("error-logs-empty").hidden = lines.length > 0;
  }

  async function loadSection(promise, render) {
    try {
      render(await promise);
    } catch (error) {
      showMessage(error.message);
    }
  }

  function initIndex() {
    const form = byId("search-form");
    const params = searchParamsFromLocation();
    fillForm(form, params);
    form.addEventListener("submit", function (event) {
      // Build the address ourselves so each attribute line becomes its own attr parameter.
      event.preventDefault();
      const next = new URLSearchParams();
      for (const field of SEARCH_FIELDS) {
        const value = String(form.elements[field].value || "").trim();
        if (value) next.set(field, value);
      }
      for (const line of form.elements.attr.value.split("\n")) {
        if (line.trim()) next.append("attr", line.trim());
      }
      window.location.search = next.toString();
    });

    // The time window (and service) of the search also scopes the tables beside it.
    const timeWindow = new URLSearchParams();
    for (const key of ["since", "until"]) {
      if (params.has(key)) timeWindow.set(key, params.get(key));
    }
    const scope = new URLSearchParams(timeWindow);
    if (params.has("service")) scope.set("service", params.get("service"));
    byId("latency-operation").addEventListener("change", function (event) {
      const chosen = new URLSearchParams(scope);
      if (event.target.value) chosen.set("operation", event.target.value);
      loadSection(getJSON("/api/series?" + chosen), renderSeries);
    });
    return Promise.all([
      loadSection(getJSON("/api/overview?" + timeWindow), renderOverview),
      loadSection(getJSON("/api/search?" + params), renderResults),
      loadSection(getJSON("/api/performance?" + scope), renderPerformance),
      loadSection(getJSON("/api/errors?" + scope), renderErrors),
      loadSection(getJSON("/api/dependencies?" + scope), renderDependencies),
      loadSection(getJSON("/api/series?" + scope), renderSeries),
      loadSection(getJSON("/api/audit?category=security&limit=20&" + timeWindow), renderSecurity),
      loadSection(getJSON("/api/logs?level=ERROR&limit=20&" + scope), renderErrorLogs),
    ]);
  }

  // -- waterfall page ----------------------------------------------------------------------------

  function traceIdFromPath() {
    const parts = window.location.pathname.split("/");
    const last = parts[parts.length - 1] || "";
    try {
      return decodeURIComponent(last);
    } catch (e) {
      return last; // a malformed escape (%ZZ): the API then says the id is not one
    }
  }

  function renderSummary(view) {
    byId("summary").replaceChildren(
      card("Duration", fmtMs(view.duration_ms)),
      card("Spans", view.span_count),
      card("Errors", view.error_count, view.error_count > 0 ? "bad" : ""),
      card("Services", (view.services || []).join(", ")),
      card("Started", fmtTime(view.start_time_unix_nano))
    );
    if (view.truncated) {
      const spans = (view.spans || []).length;
      const logs = (view.logs || []).length;
      const limits = view.limits || {};
      const box = byId("truncated");
      box.textContent =
        "Large trace: showing the first " + spans + " of " + view.span_count + " spans" +
        (logs < view.log_count ? " and " + logs + " of " + view.log_count + " log lines" : "") +
        " (the API answers at most " + limits.spans + " spans and about " +
        Math.round((limits.bytes || 0) / 1048576) + " MB per trace). " +
        "pitchey-trace show " + view.trace_id + " prints every span.";
      box.hidden = false;
    }
    const missing = view.missing_parents || [];
    if (missing.length) {
      const box = byId("missing-parents");
      box.textContent = clip(
        "Incomplete trace: " + missing.length + " parent span(s) are not in the archive (" + missing.join(", ") + ")."
      );
      box.hidden = false;
    }
  }

  function renderAxis(total) {
    const axis = byId("axis");
    axis.replaceChildren();
    for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
      const tick = el("span", { cls: "tick", text: fmtMs(total * fraction) });
      tick.style.left = fraction * 100 + "%";
      axis.appendChild(tick);
    }
  }

  function renderWaterfall(view, analysis) {
    const total = Number(view.duration_ms) || 0;
    const bottleneckId = analysis && analysis.bottleneck ? analysis.bottleneck.span_id : null;
    const repeated = new Set();
    for (const group of (analysis && analysis.n_plus_one) || []) {
      for (const id of group.span_ids || []) repeated.add(id);
    }
    renderAxis(total);
    const rows = byId("rows");
    rows.replaceChildren();
    const byIdMap = new Map();
    for (const span of view.spans) {
      byIdMap.set(span.span_id, span);
      const isError = span.status === "error";
      const classes = ["span-row"];
      if (isError) classes.push("error");
      if (span.on_critical_path) classes.push("critical");
      if (span.span_id === bottleneckId) classes.push("bottleneck");
      if (repeated.has(span.span_id)) classes.push("repeated");

      const label = el("div", { cls: "wf-label" }, [
        span.on_critical_path ? el("span", { cls: "marker", text: "◆", title: "on the critical path" }) : null,
        el("span", { cls: "span-name", text: span.name }),
        el("span", { cls: "span-service", text: span.service }),
        isError ? el("span", { cls: "badge error-badge", text: "error" }) : null,
        span.span_id === bottleneckId ? el("span", { cls: "badge bottleneck-badge", text: "bottleneck" }) : null,
      ]);
      label.style.paddingLeft = 6 + 16 * (Number(span.depth) || 0) + "px";

      const bar = el("div", { cls: "bar", title: span.name + " · " + fmtMs(span.duration_ms) });
      const left = total > 0 ? (Number(span.offset_ms) / total) * 100 : 0;
      const width = total > 0 ? (Number(span.duration_ms) / total) * 100 : 100;
      bar.style.left = Math.min(Math.max(left, 0), 100) + "%";
      bar.style.width = Math.min(Math.max(width, 0), 100 - Math.min(Math.max(left, 0), 100)) + "%";

      const row = el(
        "div",
        {
          cls: classes.join(" "),
          data: { spanId: span.span_id, depth: span.depth, parentSpanId: span.parent_span_id || "" },
        },
        [label, el("div", { cls: "wf-track" }, [bar]), el("div", { cls: "wf-duration", text: fmtMs(span.duration_ms) })]
      );
      row.setAttribute("role", "button");
      row.tabIndex = 0;
      row.addEventListener("click", function () {
        selectSpan(view, span.span_id, byIdMap);
      });
      row.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          selectSpan(view, span.span_id, byIdMap);
        }
      });
      rows.appendChild(row);
    }
  }

  function selectSpan(view, spanId, spans) {
    const span = spans.get(spanId);
    if (!span) return;
    for (const row of byId("rows").children) {
      const selected = row.dataset.spanId === spanId;
      row.classList.toggle("selected", selected);
      row.setAttribute("aria-pressed", selected ? "true" : "false");
    }
    if (window.location.hash !== "#span=" + spanId) {
      history.replaceState(null, "", "#span=" + spanId);
    }
    renderDetails(view, span);
  }

  // ``lengths``: the full length of each value the API cut, by key.
  function keyValueTable(cls, obj, lengths) {
    const keys = Object.keys(obj || {}).sort();
    if (!keys.length) return el("p", { cls: "muted", text: "none" });
    const full = lengths || {};
    return el(
      "table",
      { cls: "grid kv " + cls },
      [el("tbody", {}, keys.map(function (k) {
        const value = { text: fmtValue(obj[k]), max: MAX_DETAIL, full: Object.hasOwn(full, k) ? full[k] : undefined };
        return el("tr", {}, [el("th", { text: k }), el("td", value)]);
      }))]
    );
  }

  function clippedOf(record, field) {
    return (record && record.clipped && record.clipped[field]) || {};
  }

  function renderDetails(view, span) {
    const facts = [
      ["Service", span.service],
      ["Kind", span.kind],
      ["Status", span.status + (span.status_message ? ": " + span.status_message : "")],
      ["Duration", fmtMs(span.duration_ms)],
      ["Self time", fmtMs(span.self_time_ms)],
      ["Starts at", "+" + fmtMs(span.offset_ms)],
      ["Category", span.category],
      ["Span id", span.span_id],
      ["Parent", span.parent_span_id || "(root)"],
      ["Children", span.child_count],
    ];
    const dl = el("dl", { cls: "facts" });
    for (const pair of facts) {
      dl.appendChild(el("dt", { text: pair[0] }));
      dl.appendChild(el("dd", { text: pair[1], max: MAX_DETAIL }));
    }
    const events = el("ol", { cls: "events plain" });
    for (const event of span.events || []) {
      const offset = (Number(event.time_unix_nano) - Number(view.start_time_unix_nano)) / 1e6;
      events.appendChild(
        el("li", { cls: "event" }, [
          el("span", { cls: "event-time", text: "+" + fmtMs(offset) + " " }),
          el("strong", { cls: "event-name", text: event.name, max: MAX_DETAIL }),
          keyValueTable("event-attributes", event.attributes, clippedOf(event, "attributes")),
        ])
      );
    }
    const links = el("ul", { cls: "plain" });
    for (const link of span.links || []) {
      const target = link.trace_id ? traceLink(link.trace_id, link.trace_id + " / " + (link.span_id || "")) : null;
      links.appendChild(el("li", {}, [target]));
    }
    const hasLinks = (span.links || []).length > 0;
    const parts = [
      el("h2", { cls: "details-name", text: span.name, max: MAX_DETAIL }),
      dl,
      el("h3", { text: "Attributes" }),
      keyValueTable("span-attributes", span.attributes, clippedOf(span, "attributes")),
      el("h3", { text: "Events" }),
      (span.events || []).length ? events : el("p", { cls: "muted", text: "none" }),
      hasLinks ? el("h3", { text: "Links" }) : null,
      hasLinks ? links : null,
      el("h3", { text: "Resource" }),
      keyValueTable("span-resource", span.resource, clippedOf(span, "resource")),
    ];
    // When the trace's answer cut some of its values, a link to the span's own answer, which
    // holds them whole (under the details: their links are only the span's own links).
    const whole = byId("whole-values");
    const cut = Boolean(span.clipped || (span.events || []).some((e) => e && e.clipped));
    whole.hidden = !cut;
    if (cut) {
      const link = el("a", { text: "the span's whole values (JSON)" });
      link.href = "/api/traces/" + encodeURIComponent(view.trace_id) + "/spans/" + encodeURIComponent(span.span_id);
      whole.replaceChildren(document.createTextNode("Long values are cut above: see "), link, document.createTextNode("."));
    }
    // (replaceChildren would turn a null into the text "null")
    byId("details").replaceChildren(...parts.filter(Boolean));
  }

  function renderAnalysis(analysis) {
    const bottleneck = analysis.bottleneck;
    if (bottleneck) {
      const box = byId("bottleneck");
      box.replaceChildren(
        el("strong", { text: "Bottleneck: " }),
        el("span", textOf(bottleneck, "name", { cls: "bottleneck-name" })),
        el("span", composed(
          " (" + bottleneck.service + ") spends " + fmtMs(bottleneck.self_time_ms) + " on its own, " +
            fmtPct(bottleneck.share) + " of the trace.",
          bottleneck,
          ["service"]
        ))
      );
      box.hidden = false;
    }
    byId("critical-path").replaceChildren(
      ...(analysis.critical_path || []).map(function (s) {
        return el("li", { data: { spanId: s.span_id } }, [
          el("span", textOf(s, "name", { cls: "span-name" })),
          el("span", composed(" " + s.service + " · " + fmtMs(s.duration_ms) + " (self " + fmtMs(s.self_time_ms) + ")", s, ["service"], { cls: "muted" })),
        ]);
      })
    );
    const db = analysis.db || {};
    byId("db-summary").textContent = (db.queries || 0) + " queries, " + fmtMs(db.total_ms || 0) + " in total";
    const groups = analysis.n_plus_one || [];
    byId("n-plus-one").replaceChildren(
      ...(groups.length
        ? groups.map(function (g) {
            return el("li", { cls: "n-plus-one-group" }, [
              el("strong", { cls: "n-count", text: g.count + "×" }),
              document.createTextNode(" "),
              el("code", textOf(g, "statement", { cls: "statement" })),
              el("span", composed(" under " + g.parent_name + " · " + fmtMs(g.total_ms) + " in total", g, ["parent_name"], { cls: "muted" })),
            ]);
          })
        : [el("li", { cls: "muted", text: "none found" })])
    );
    const errs = analysis.errors || [];
    byId("trace-errors").replaceChildren(
      ...(errs.length
        ? errs.map(function (e) {
            // the engine's description (analyze()'s message, as `show` prints it: the
            // exception's message, else the status message, else "HTTP <code>"), after the
            // exception's type; the raw fields when an older server sends no message
            const field = e.message ? "message" : e.exception_message ? "exception_message" : "status_message";
            const what = [e.exception_type, e[field]].filter(Boolean).join(": ");
            return el("li", { cls: "trace-error", data: { spanId: e.span_id } }, [
              el("strong", textOf(e, "name")),
              el("span", composed(" (" + e.service + ") " + what, e, ["service", "exception_type", field])),
            ]);
          })
        : [el("li", { cls: "muted", text: "none" })])
    );
    const tbody = byId("by-operation").tBodies[0];
    tbody.replaceChildren(
      ...(analysis.by_operation || []).map(function (op) {
        return el("tr", {}, [el("td", textOf(op, "service")), el("td", textOf(op, "name")), numCell(op.count), numCell(fmtMs(op.total_ms)), numCell(fmtMs(op.self_time_ms))]);
      })
    );
  }

  /** The details of a span the trace's answer left out (a large trace), from its own answer. */
  async function showSpanBeyondCut(view, spanId) {
    if (!/^[0-9a-f]{16}$/.test(String(spanId))) return;
    try {
      const span = await getJSON("/api/traces/" + encodeURIComponent(view.trace_id) + "/spans/" + spanId);
      for (const row of byId("rows").children) {
        row.classList.remove("selected");
        row.setAttribute("aria-pressed", "false");
      }
      if (window.location.hash !== "#span=" + spanId) history.replaceState(null, "", "#span=" + spanId);
      renderDetails(view, span);
    } catch (error) {
      showMessage(error.message);
    }
  }

  // The application's log records logged in the trace (shipped by export_logs), by time; a
  // row selects the span it was logged in.
  function renderLogs(view, spans) {
    const logs = view.logs || [];
    byId("logs-section").hidden = !logs.length;
    byId("trace-logs").tBodies[0].replaceChildren(
      ...logs.map(function (log) {
        const row = el("tr", { cls: log.severity_number >= 17 ? "has-errors" : "", data: { spanId: log.span_id || "" } }, [
          numCell(fmtMs(log.offset_ms)),
          cell(log.severity_text),
          cell(log.logger),
          el("td", {}, [el("code", { cls: "log-body", text: log.body })]),
        ]);
        if (log.span_id && spans.has(log.span_id)) {
          row.tabIndex = 0;
          row.addEventListener("click", function () { selectSpan(view, log.span_id, spans); });
        } else if (log.span_id && view.truncated) {
          row.tabIndex = 0;
          row.addEventListener("click", function () { showSpanBeyondCut(view, log.span_id); });
        }
        return row;
      })
    );
  }

  async function initTrace() {
    const traceId = traceIdFromPath();
    byId("trace-id").textContent = clip(traceId, 100);
    const base = "/api/traces/" + encodeURIComponent(traceId);
    let view;
    let analysis = null;
    try {
      [view, analysis] = await Promise.all([getJSON(base), getJSON(base + "/analysis")]);
    } catch (error) {
      showMessage(error.status === 404 ? "Trace " + traceId + " is not in the archive." : error.message);
      return;
    }
    const root = view.spans.length ? view.spans[0].name : "";
    document.title = clip("Trace " + String(traceId).slice(0, 8) + " · " + root, 200);
    renderSummary(view);
    renderAnalysis(analysis);
    renderWaterfall(view, analysis);
    const byIdMap = new Map(view.spans.map(function (s) { return [s.span_id, s]; }));
    renderLogs(view, byIdMap);
    const wanted = window.location.hash.startsWith("#span=") ? window.location.hash.slice(6) : null;
    if (wanted && byIdMap.has(wanted)) {
      selectSpan(view, wanted, byIdMap);
    } else if (wanted && view.truncated) {
      await showSpanBeyondCut(view, wanted); // (linked from a log line or an error)
    }
  }

  function start() {
    const page = document.body.dataset.page;
    const work = page === "index" ? initIndex() : page === "trace" ? initTrace() : Promise.resolve();
    // data-ready tells a reader of the page (and the browser tests) that rendering is done.
    work
      .catch(function (error) {
        showMessage(error.message);
      })
      .finally(function () {
        document.body.dataset.ready = "true";
      });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
