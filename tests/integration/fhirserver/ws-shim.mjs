// Preloaded with `node --import ./ws-shim.mjs` (see server.mjs).
//
// Why: @medplum/core touches the global `WebSocket` when it is imported (for its subscription
// client, which this test server never uses). Node 22+ has a global WebSocket; Node 20 does
// not, and the import fails with "WebSocket is not defined". A placeholder is enough because
// nothing here ever opens a socket; it throws if something tries.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocketUnavailable {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    constructor() {
      throw new Error('WebSocket is not available in the fhir-leuko test FHIR server');
    }
  };
}
