// The GraphQL client: queries over HTTP, run events over graphql-transport-ws with reconnects and a
// polling fallback, the token, and the connection indicator (data-testid="conn").
import {$} from "./util.js";

const TOKEN_KEY = "gflow.token";
let token = localStorage.getItem(TOKEN_KEY) || "";
// set when the server refused the token (expired, mistyped) but answers reads without one: reads go
// without it, actions still send it (and say at the action that it was not accepted)
let rejected = false;
let onRejected = () => {};
export const getToken = () => token;
export const tokenRejected = () => rejected;
export function setToken(t) {
  token = (t || "").trim();
  rejected = false;
  if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
}
export function whenTokenRejected(fn) { onRejected = fn; }
const readToken = () => (rejected ? "" : token);

export class ApiError extends Error {
  constructor(message, code, status, data) {
    super(message);
    this.code = code || "ERROR";
    this.status = status || 0;
    this.data = data;
  }
}

// -- connection indicator -----------------------------------------------------------------------------
const connState = {state: "", text: ""};
export function setConn(state, text) {
  if (connState.state === state && connState.text === text) return;
  connState.state = state;
  connState.text = text;
  const c = $("#conn");
  c.dataset.state = state;
  c.textContent = text;
}
export const connIs = () => connState.state;

/** One GraphQL request. Network failures and non-JSON answers become ApiError too. */
export async function gql(query, variables, {quiet} = {}) {
  const mutation = /^\s*mutation\b/.test(query);
  const send = (t) => {
    const headers = {"Content-Type": "application/json"};
    if (t) headers.Authorization = `Bearer ${t}`;
    return fetch("/graphql", {method: "POST", headers, body: JSON.stringify({query, variables: variables || {}})});
  };
  let r;
  try {
    r = await send(mutation ? token : readToken());
    if (r.status === 401 && !mutation && token && !rejected &&
        /invalid_token/.test(r.headers.get("WWW-Authenticate") || "")) {
      const again = await send("");  // are reads open? then the token alone was the problem
      if (again.status !== 401) {
        rejected = true;
        onRejected();
        r = again;
      }
    }
  } catch {
    if (!quiet) setConn("reconnecting", "reconnecting…");
    throw new ApiError("the server cannot be reached; retrying", "NETWORK", 0);
  }
  let body;
  try {
    body = await r.json();
  } catch {
    if (!quiet && r.status >= 500) setConn("reconnecting", "reconnecting…");
    throw new ApiError(`the server answered ${r.status} ${r.statusText}`, "BAD_RESPONSE", r.status);
  }
  if (connState.state === "reconnecting" && !quiet) setConn("live", "live");
  if (body.errors && body.errors.length) {
    const e = body.errors[0];
    const code = (e.extensions && e.extensions.code) || "ERROR";
    throw new ApiError(body.errors.map((x) => x.message).join("; "), code, r.status, body.data);
  }
  return body.data;
}

/** A message for an action that failed, saying what to do about it. */
export function actionMessage(what, err) {
  if (err.code === "UNAUTHENTICATED" && /invalid|malformed/i.test(err.message)) {
    return `${what}: the token was not accepted (expired or mistyped). Set a valid write token in the token field.`;
  }
  if (err.code === "UNAUTHENTICATED") return `${what} needs a write token: set one in the token field (top right).`;
  if (err.code === "FORBIDDEN") {
    return /none configured/.test(err.message)
      ? `${what} is disabled: this server has no write tokens (start it with --token-write).`
      : `${what}: your token only allows reads. Use a write token.`;
  }
  if (err.code === "NETWORK") return `${what}: the server cannot be reached. Try again when it is back.`;
  return `${what} failed: ${err.message}`;
}

// -- live events --------------------------------------------------------------------------------------
function wsURL() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/graphql`;
}

/**
 * Follows a subscription and keeps following it: reconnects with backoff when the socket drops, polls
 * over HTTP (poll()) while it cannot, and resubscribes from where it left off (variables() is asked
 * again each time). Calls onData(data), onDone() when the server completes the stream, onFatal(err)
 * for errors that retrying cannot fix (unknown run, refused token).
 */
export class Feed {
  constructor({query, variables, onData, onDone, onFatal, poll}) {
    Object.assign(this, {query, variables, onData, onDone, onFatal, poll});
    this.ws = null;
    this.stopped = false;
    this.failures = 0;
    this.timer = null;
    this.pollTimer = null;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    let ws;
    try {
      ws = this.ws = new WebSocket(wsURL(), "graphql-transport-ws");
    } catch {
      this.lost();
      return;
    }
    let acked = false;
    let ended = false;
    const t = readToken();
    ws.onopen = () => ws.send(JSON.stringify({type: "connection_init", payload: t ? {Authorization: `Bearer ${t}`} : {}}));
    ws.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch { return; }
      if (msg.type === "connection_ack") {
        acked = true;
        ws.send(JSON.stringify({id: "1", type: "subscribe", payload: {query: this.query, variables: this.variables()}}));
        this.failures = 0;
        this.stopPolling();
        setConn("live", "live");
      } else if (msg.type === "ping") {
        ws.send(JSON.stringify({type: "pong"}));
      } else if (msg.type === "next") {
        const errs = msg.payload.errors;
        if (errs && errs.length) {
          const code = errs[0].extensions && errs[0].extensions.code;
          if (code === "SLOW_SUBSCRIBER" || code === "STORE_UNAVAILABLE") return;  // the socket closes: resubscribe
          ended = true;
          this.stop();
          this.onFatal(new ApiError(errs.map((e) => e.message).join("; "), code));
          return;
        }
        this.onData(msg.payload.data);
      } else if (msg.type === "error") {
        ended = true;
        this.stop();
        this.onFatal(new ApiError(msg.payload.map((e) => e.message).join("; "), "ERROR"));
      } else if (msg.type === "complete") {
        ended = true;
        this.stop();
        this.onDone();
      }
    };
    ws.onclose = (e) => {
      if (this.stopped || ended) return;
      if (e.code === 4403 || e.code === 4401) {
        this.stop();
        this.onFatal(new ApiError("this server needs a token for reads", "UNAUTHENTICATED"));
        return;
      }
      this.lost(acked);
    };
  }

  lost() {
    if (this.stopped) return;
    this.ws = null;
    this.failures += 1;
    setConn("reconnecting", "reconnecting…");
    this.startPolling();
    const delay = Math.min(4000, 250 * 2 ** Math.min(this.failures, 5));
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  startPolling() {
    if (this.pollTimer || !this.poll) return;
    const tick = async () => {
      if (this.stopped) return;
      try {
        const finished = await this.poll();
        if (this.stopped) return;
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) setConn("polling", "polling");
        if (finished) { this.stop(); this.onDone(); return; }
      } catch (e) {
        if (this.stopped) return;
        if (e.code && e.code !== "NETWORK" && e.code !== "BAD_RESPONSE" && e.code !== "STORE_UNAVAILABLE") {
          this.stop();
          this.onFatal(e);
          return;
        }
        setConn("reconnecting", "reconnecting…");
      }
      this.pollTimer = setTimeout(tick, 1000);
    };
    this.pollTimer = setTimeout(tick, 300);
  }

  stopPolling() {
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopPolling();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(); } catch { /* already closed */ }
    }
  }
}
