// fhir-leuko trend app: reads a patient's CBCs with the SMART on FHIR client (fhirclient),
// asks the service for the assessment (POST api/evaluate: the one evaluation, no clinical
// rule in this file) and draws the counts with uPlot, with a table of the same values.
//
// Launches:
//   EHR launch (SMART App Launch 2.0):  ./?iss=<FHIR base>&launch=<token>  -> authorisation
//     code with PKCE, discovery from <iss>/.well-known/smart-configuration (fhirclient);
//   the redirect back:                  ./?code=...&state=...
//   an open FHIR server (no auth):      ./?iss=<FHIR base>&patient=<id>
/* global FHIR, uPlot */
'use strict';

(function () {
  const BAND_FILL = { 1: '#fde2e1', 2: '#f9c4c0', 3: '#f29a93', 4: '#e8665c' };
  const FINAL = '#0b57a4';
  const INK = '#1a1a1a';
  const ALERT = '#8a1c14';
  const MAX_PAGES = 20;

  const $ = (id) => document.getElementById(id);
  const state = { charts: [], times: [], trend: null, cursor: -1 };
  window.leuko = state; // for people debugging in the console, and for the browser test

  function setStatus(text, isError) {
    const el = $('status');
    el.textContent = text;
    el.className = isError ? 'error' : '';
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtTime(iso) {
    return iso ? iso.replace('T', ' ').replace(/:\d\d(\.\d+)?Z$/, ' UTC') : '–';
  }

  // --- SMART --------------------------------------------------------------------------------

  async function connect(config) {
    const params = new URLSearchParams(window.location.search);
    if (params.has('launch') && params.has('iss')) {
      setStatus('Signing in with the EHR…');
      await FHIR.oauth2.authorize({
        clientId: config.clientId,
        scope: config.scope,
        redirectUri: window.location.pathname,
        pkceMode: 'required',
      });
      return null; // the browser is on its way to the authorisation server
    }
    if (params.has('code') || params.has('state') || params.has('error')) {
      return FHIR.oauth2.ready();
    }
    if (params.has('iss') && params.has('patient')) {
      return FHIR.client({
        serverUrl: params.get('iss'),
        tokenResponse: { patient: params.get('patient') },
      });
    }
    throw new Error(
      'Open this app from the EHR (SMART launch with iss and launch), or for a FHIR server ' +
      'without authorisation as ./?iss=<FHIR base URL>&patient=<Patient id>.');
  }

  async function readPatientData(client, config) {
    const patientId = client.patient.id;
    if (!patientId) throw new Error('The launch gave no patient.');
    const resources = [];
    const missing = [];
    for (const q of config.queries) {
      const url = q.url.split(config.patientToken).join(encodeURIComponent(patientId));
      try {
        if (q.returns === 'Patient') {
          resources.push(await client.request(url));
        } else {
          const found = await client.request(url, { pageLimit: MAX_PAGES, flat: true });
          for (const r of found || []) {
            if (r && r.resourceType && r.resourceType !== 'OperationOutcome') resources.push(r);
          }
        }
      } catch (err) {
        if (q.key === 'patient' || q.key === 'cbc') throw err;
        missing.push(q.key); // e.g. a scope the EHR did not grant: said, not hidden
      }
    }
    return { patientId, resources, missing };
  }

  async function evaluate(patientId, resources) {
    const response = await fetch('api/evaluate', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ patient: patientId, resources }),
    });
    if (!response.ok) throw new Error(`The service could not evaluate the data (${response.status}).`);
    return response.json();
  }

  // --- Chart (uPlot) -------------------------------------------------------------------------

  function seconds(iso) {
    return Date.parse(iso) / 1000;
  }

  function panelData(panel, times) {
    const byTime = new Map(panel.points.map((p) => [seconds(p.time), p]));
    const all = [];
    const fin = [];
    const pre = [];
    for (const t of times) {
      const p = byTime.get(t);
      all.push(p ? p.value : null);
      fin.push(p && p.status !== 'preliminary' ? p.value : null);
      pre.push(p && p.status === 'preliminary' ? p.value : null);
    }
    return [times, all, fin, pre];
  }

  function drawBands(panel) {
    return (u) => {
      const { ctx } = u;
      const { left, width } = u.bbox;
      ctx.save();
      for (const b of panel.bands) {
        const top = u.valToPos(Math.min(b.high, u.scales.y.max), 'y', true);
        const bottom = u.valToPos(Math.max(b.low, u.scales.y.min), 'y', true);
        ctx.fillStyle = BAND_FILL[b.level];
        ctx.fillRect(left, top, width, bottom - top);
      }
      ctx.restore();
    };
  }

  function drawMarks(panel, trend) {
    return (u) => {
      const { ctx } = u;
      const dpr = window.devicePixelRatio || 1;
      ctx.save();
      if (panel.lowerLimit !== null && panel.key !== 'anc') {
        const y = u.valToPos(panel.lowerLimit, 'y', true);
        ctx.strokeStyle = ALERT;
        ctx.setLineDash([4 * dpr, 3 * dpr]);
        ctx.beginPath();
        ctx.moveTo(u.bbox.left, y);
        ctx.lineTo(u.bbox.left + u.bbox.width, y);
        ctx.stroke();
        ctx.setLineDash([]);
      }
      for (const p of panel.points) {
        if (!p.index) continue;
        const x = u.valToPos(seconds(p.time), 'x', true);
        const y = u.valToPos(p.value, 'y', true);
        ctx.strokeStyle = INK;
        ctx.lineWidth = 2 * dpr;
        ctx.beginPath();
        ctx.arc(x, y, 9 * dpr, 0, 2 * Math.PI);
        ctx.stroke();
      }
      ctx.strokeStyle = ALERT;
      ctx.lineWidth = 2.5 * dpr;
      for (const bad of trend.unusable) {
        if (bad.panel !== panel.key || !bad.time) continue;
        const x = u.valToPos(seconds(bad.time), 'x', true);
        const y = u.bbox.top + u.bbox.height - 8 * dpr;
        const d = 5 * dpr;
        ctx.beginPath();
        ctx.moveTo(x - d, y - d); ctx.lineTo(x + d, y + d);
        ctx.moveTo(x + d, y - d); ctx.lineTo(x - d, y + d);
        ctx.stroke();
      }
      ctx.restore();
    };
  }

  function drawChart(trend) {
    const host = $('chart');
    host.replaceChildren();
    state.charts = [];
    const times = new Set();
    for (const p of trend.panels) for (const x of p.points) times.add(seconds(x.time));
    for (const bad of trend.unusable) if (bad.time) times.add(seconds(bad.time));
    state.times = [...times].sort((a, b) => a - b);
    const width = Math.max(320, Math.min(host.clientWidth || 720, 900));
    const xMin = seconds(trend.start);
    const xMax = seconds(trend.end) + (seconds(trend.end) - xMin) * 0.02; // room for the ring
    const noPath = () => null;
    for (const panel of trend.panels) {
      const box = el('div', { class: 'panel', 'data-panel': panel.key });
      box.append(el('h3', {}, `${panel.label} (${panel.unit})`));
      host.append(box);
      const values = panel.points.map((p) => p.value);
      const top = Math.max(...values, ...panel.bands.map((b) => b.high), panel.lowerLimit || 0, 1e-9) * 1.15;
      const opts = {
        width,
        height: 150,
        legend: { show: false },
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
        cursor: { sync: { key: 'leuko' }, drag: { x: false, y: false }, points: { size: 10 } },
        scales: { x: { time: true, range: [xMin, xMax] }, y: { range: [0, top] } },
        axes: [
          { stroke: INK, grid: { stroke: '#e0e0e0' } },
          { stroke: INK, grid: { stroke: '#e0e0e0' }, size: 50 },
        ],
        series: [
          {},
          { label: panel.label, stroke: FINAL, width: 1.5, spanGaps: true, points: { show: false } },
          {
            label: `${panel.label} final`, stroke: FINAL, paths: noPath,
            points: { show: true, size: 9, fill: FINAL, stroke: FINAL },
          },
          {
            label: `${panel.label} preliminary`, stroke: FINAL, paths: noPath, dash: [3, 3],
            points: { show: true, size: 11, width: 2, fill: '#ffffff', stroke: FINAL },
          },
        ],
        hooks: { drawClear: [drawBands(panel)], draw: [drawMarks(panel, trend)] },
      };
      const chart = new uPlot(opts, panelData(panel, state.times), box);
      chart.leukoPanel = panel;
      state.charts.push(chart);
    }
  }

  function describe(i) {
    const t = state.times[i];
    const parts = [];
    for (const panel of state.trend.panels) {
      const p = panel.points.find((x) => seconds(x.time) === t);
      if (p) {
        parts.push(`${panel.label} ${p.shown}${p.derived ? ' (derived)' : ''}` +
          `${p.status === 'preliminary' ? ' (preliminary)' : ''}${p.index ? ' (index draw)' : ''}`);
      }
    }
    for (const bad of state.trend.unusable) {
      if (bad.time && seconds(bad.time) === t) parts.push(`not used: ${bad.message}`);
    }
    return `${fmtTime(new Date(t * 1000).toISOString())}: ${parts.join(', ') || 'no value'}`;
  }

  function moveCursor(i) {
    if (!state.times.length) return;
    state.cursor = Math.max(0, Math.min(i, state.times.length - 1));
    const t = state.times[state.cursor];
    for (const u of state.charts) {
      u.setCursor({ left: u.valToPos(t, 'x'), top: u.bbox.height / (2 * (window.devicePixelRatio || 1)) });
    }
    $('readout').textContent = describe(state.cursor);
  }

  function onChartKey(event) {
    const steps = { ArrowRight: 1, ArrowLeft: -1 };
    if (event.key in steps) {
      event.preventDefault();
      moveCursor((state.cursor < 0 ? state.times.length : state.cursor) + steps[event.key]);
    } else if (event.key === 'Home' || event.key === 'End') {
      event.preventDefault();
      moveCursor(event.key === 'Home' ? 0 : state.times.length - 1);
    }
  }

  // --- Table view ----------------------------------------------------------------------------

  function drawTable(trend) {
    const rows = new Map();
    for (const panel of trend.panels) {
      for (const p of panel.points) {
        const row = rows.get(p.time) || { time: p.time, values: {}, preliminary: false, index: false };
        row.values[panel.key] = p.shown + (p.derived ? '*' : '');
        row.preliminary = row.preliminary || p.status === 'preliminary';
        row.index = row.index || p.index;
        rows.set(p.time, row);
      }
    }
    const head = el('tr', {}, el('th', { scope: 'col' }, 'Drawn'),
      trend.panels.map((p) => el('th', { scope: 'col' }, `${p.label} (${p.unit})`)),
      el('th', { scope: 'col' }, 'Status'));
    const body = [...rows.values()].sort((a, b) => (a.time < b.time ? 1 : -1)).map((r) => {
      const status = `${r.preliminary ? 'preliminary' : 'final'}${r.index ? ', index draw' : ''}`;
      return el('tr', { class: `${r.preliminary ? 'preliminary' : 'final'}${r.index ? ' index' : ''}` },
        el('th', { scope: 'row' }, fmtTime(r.time)),
        trend.panels.map((p) => el('td', { class: 'num' }, r.values[p.key] || '–')),
        el('td', {}, status));
    });
    for (const bad of trend.unusable) {
      body.push(el('tr', { class: 'unusable' }, el('th', { scope: 'row' }, fmtTime(bad.time)),
        el('td', { colspan: trend.panels.length }, `not used: ${bad.message}`), el('td', {}, 'unusable')));
    }
    const limits = trend.panels.filter((p) => p.lowerLimit !== null)
      .map((p) => `${p.label} ${p.lowerLimit} ${p.unit}`).join('; ');
    $('table-view').replaceChildren(
      el('table', {},
        el('caption', {}, `The values in the chart, newest first (* derived ANC). Lower limits: ${limits}.`),
        el('thead', {}, head), el('tbody', {}, body)));
  }

  function showView(which) {
    const table = which === 'table';
    $('chart').hidden = table;
    $('readout').hidden = table;
    $('table-view').hidden = !table;
    $('show-chart').setAttribute('aria-pressed', String(!table));
    $('show-table').setAttribute('aria-pressed', String(table));
  }

  // --- Assessment ----------------------------------------------------------------------------

  function cites(sources) {
    if (!sources || !sources.length) return null;
    const parts = [];
    sources.forEach((s, i) => {
      if (i) parts.push('; ');
      parts.push(s.url ? el('a', { href: s.url, target: '_blank', rel: 'noopener' }, s.name) : s.name);
    });
    return el('span', { class: 'cite' }, ' (', parts, ')');
  }

  function list(title, items) {
    if (!items.length) return [];
    return [el('h3', {}, title), el('ul', {}, items.map((x) => el('li', {}, x)))];
  }

  function drawAssessment(a, missing) {
    const body = [
      el('p', { class: `headline risk-${a.risk}` }, el('strong', {}, `Risk ${a.risk}`), `: ${a.headline}.`,
        ` Neutropenia grade: ${a.grade}${a.preliminary ? ' (preliminary results)' : ''}.`),
      el('p', {}, 'Decided by ',
        el('a', { href: a.rowUrl, target: '_blank', rel: 'noopener' }, a.rowTitle),
        ' of the ', el('a', { href: a.rulesUrl, target: '_blank', rel: 'noopener' }, 'decision table'), '.'),
      ...list('Findings', a.findings.map((f) => [f.text, cites(f.sources)])),
      ...list('Proposed orders', a.orders.map((o) => [el('strong', {}, o.display),
        ` (${o.priority}${o.optional ? ', optional' : ''}; ${o.window}): ${o.reason}`, cites(o.sources)])),
      ...list('Not proposed', a.notProposed),
      ...list('Active medications known to lower white cells', a.medications.map((m) =>
        `${m.name} (${m.ref}; matched by ${m.matchedBy})` +
        (m.antineoplastic ? ' — neutropenia is expected: manage per the oncology protocol' : ''))),
      ...list('Recorded conditions that can explain it', a.conditions.map((c) => `${c.display} (${c.ref})`)),
      ...list('Advice', a.advice),
      ...list('Data not used or not available', [
        ...a.issues.filter((i) => i.severity !== 'information').map((i) => i.message),
        ...missing.map((k) => `could not read ${k} from the FHIR server`),
      ]),
    ];
    $('assessment-body').replaceChildren(...body);
  }

  // --- Main ----------------------------------------------------------------------------------

  async function main() {
    $('show-chart').addEventListener('click', () => showView('chart'));
    $('show-table').addEventListener('click', () => showView('table'));
    $('chart').addEventListener('keydown', onChartKey);
    try {
      const config = await (await fetch('config.json')).json();
      const client = await connect(config);
      if (!client) return;
      setStatus('Reading the CBCs from the FHIR server…');
      const { patientId, resources, missing } = await readPatientData(client, config);
      const patient = resources.find((r) => r.resourceType === 'Patient');
      const name = patient && patient.name && patient.name[0];
      $('patient').textContent = name
        ? `${(name.given || []).join(' ')} ${name.family || ''}`.trim() + (patient.birthDate ? `, born ${patient.birthDate}` : '')
        : `Patient ${patientId}`;
      setStatus('Evaluating…');
      const result = await evaluate(patientId, resources);
      state.trend = result.trend;
      drawChart(result.trend);
      drawTable(result.trend);
      drawAssessment(result.assessment, missing);
      const draws = state.times.length;
      setStatus(`${draws} draw${draws === 1 ? '' : 's'} shown.`);
      document.body.dataset.ready = 'true';
    } catch (err) {
      setStatus(String(err && err.message ? err.message : err), true);
      document.body.dataset.ready = 'error';
    }
  }

  main();
}());
