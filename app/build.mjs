// Copies the browser builds of the trend app's libraries from node_modules into the folder
// the service serves (fhir_leuko/web/static/app/vendor/). Run by `make app` after `npm ci`.
// Nothing is fetched at page run time: the page loads only these copies.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'fhir_leuko', 'web', 'static', 'app', 'vendor');
const files = [
  ['fhirclient/build/fhir-client.min.js', 'fhir-client.min.js'],
  ['fhirclient/build/fhir-client.min.js.LICENSE.txt', 'fhir-client.LICENSE.txt'],
  ['fhirclient/LICENSE', 'fhirclient-LICENSE.txt'],
  ['uplot/dist/uPlot.iife.min.js', 'uPlot.iife.min.js'],
  ['uplot/dist/uPlot.min.css', 'uPlot.min.css'],
  ['uplot/LICENSE', 'uplot-LICENSE.txt'],
];
mkdirSync(out, { recursive: true });
const versions = {};
for (const [from, to] of files) {
  copyFileSync(join(here, 'node_modules', from), join(out, to));
}
for (const name of ['fhirclient', 'uplot']) {
  versions[name] = JSON.parse(readFileSync(join(here, 'node_modules', name, 'package.json'))).version;
}
// Written last: the service checks for this file to tell a built app from a missing build.
writeFileSync(join(out, 'versions.json'), `${JSON.stringify(versions, null, 2)}\n`);
console.log(`build.mjs: copied ${files.length} files to ${out} (${JSON.stringify(versions)})`);
