/// <reference types="./client.d.ts" />
// client.js: the auth service's browser client, one ES module without dependencies. The service
// serves it at /auth/client.js, and its types beside it at /auth/client.d.ts.
//
//   import { createAuth } from "/auth/client.js";
//   const auth = createAuth();
//   auth.onChange((ev) => ev.type === "signed_out" && showLogin(ev.reason));
//   let res = await auth.signIn(email, password);
//   if (res.state === "mfa_required") res = await auth.verifySecondFactor({ code });
//   // or, with a passkey: await auth.passkeys.signIn(), auth.passkeys.verifySecondFactor()
//   const orders = await auth.fetch("/api/orders");
//
// auth.fetch sends the access token only to the service's origin (baseURL's, else the page's) and
// to the origins in apiOrigins, e.g. createAuth({apiOrigins: ["https://api.example.com"]}); a
// request to any other origin goes out as a plain fetch.
//
// Tabs that keep the tokens in localStorage share one session. A refresh token may be used once:
// the service takes a retired one, presented after REFRESH_REUSE_INTERVAL, for a stolen copy and
// ends the session. So the tabs of an origin refresh one at a time, under a Web Lock, and a tab
// that finds its refresh token already replaced by another tab takes the new tokens rather than
// present the retired one. Tokens are dropped only when the service refuses a refresh with 401;
// an outage (a 503, a network error, a timeout) keeps them.

// The codes of a 401 about the token sent, for when a cross-origin API does not expose
// WWW-Authenticate; the service's challenge says error="invalid_token" for all of them.
const tokenErrors = [
  "token_expired", "token_invalid", "token_revoked", "token_reused", "session_expired",
];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function createAuth({
  baseURL = "", // the service's origin; "" when a proxy serves it on the page's own origin
  storage = usableLocalStorage(), // or sessionStorage, or "memory"; "memory" where there is none
  key = "auth", // the storage entry's name, which also names the locks
  onSignOut = () => {}, // deprecated: onChange's signed_out; told the reason, once in every tab
  refreshAhead = 0, // seconds before the access token expires to refresh it; 0: only on a 401
  retryFor = 10, // seconds to retry a refresh or sign-out that the service could not answer
  timeout = 10, // seconds after which a request to the service counts as unanswered
  apiOrigins = [], // other origins that auth.fetch sends the access token to
  fresh = 5, // seconds that a token from getAccessToken is good for at least
} = {}) {
  // A mistaken option is an error now, not a session that breaks later (a retryFor that is no
  // number would retry forever, a storage without setItem would fail after the login).
  const wrong = (what) => {
    throw new TypeError(`createAuth: ${what}`);
  };
  for (const [name, v] of Object.entries({ refreshAhead, retryFor, timeout, fresh })) {
    if (!(Number.isFinite(v) && v >= 0) || (name === "timeout" && !v)) {
      wrong(`${name} must be a number of seconds, 0 or more (timeout more than 0), not ${String(v)}`);
    }
  }
  if (typeof baseURL !== "string") wrong("baseURL must be a string, e.g. \"https://auth.example.com\"");
  if (typeof key !== "string" || !key) wrong("key must be a non-empty string");
  if (typeof onSignOut !== "function") wrong("onSignOut must be a function");
  if (!Array.isArray(apiOrigins)) wrong("apiOrigins must be an array of origins");
  const methods = (s) => typeof s.getItem === "function" && typeof s.setItem === "function";
  if (storage && storage !== "memory" && !methods(storage)) {
    wrong('storage must be localStorage, sessionStorage, "memory" or have getItem and setItem');
  }
  // Outside a browser (server-side rendering, Node) there is no localStorage: memory, no tabs.
  const store = storage === "memory" || !storage ? memory() : storage;
  // Only localStorage is seen by other tabs; only then do tabs need locks and each other's news.
  const shared = store === usableLocalStorage() && typeof addEventListener === "function";
  const locks = shared ? globalThis.navigator?.locks : undefined;
  const listeners = new Set();
  let challenge = null; // the mfa_token of a sign-in waiting for a second factor: this tab's alone
  let started = false; // the entry found at creation is no change to announce
  let signedIn = false; // what this tab last knew, so that it hears of an end once
  let known; // the refresh token this tab last saw in storage
  let retiring = Promise.resolve(); // the mark on the refresh token it last saw replaced
  let refreshing = null; // this tab's refresh, which all its waiting calls share
  const ahead = { token: undefined, timer: 0 };
  // Origins are compared as the browser parses URLs, so a look-alike name, userinfo, another port
  // or scheme is another origin; an entry of apiOrigins that is no absolute URL throws here.
  const origins = new Set([origin(baseURL || "/"), ...apiOrigins.map(originOf)]);
  function originOf(o) {
    try {
      return new URL(o).origin;
    } catch {
      wrong(`apiOrigins holds ${String(o)}, which is no absolute URL`);
    }
  }
  origins.delete("null"); // no page to resolve against, or an opaque origin: nothing matches
  // origin is that of a Request, a URL or a string, a relative one resolved as fetch does.
  function origin(input) {
    try {
      const base = globalThis.document?.baseURI ?? globalThis.location?.href;
      return new URL(input.url ?? input, base).origin;
    } catch {
      return "null";
    }
  }

  // entry is what storage holds: {access_token, refresh_token, expires_at} when signed in,
  // {ended: reason} after a session ended, {} before any.
  function entry() {
    try {
      return JSON.parse(store.getItem(key)) ?? {};
    } catch {
      return {};
    }
  }

  // current is the tokens to send, or null; reading them also tells this tab of changes it missed.
  function current() {
    const e = entry();
    seen(e);
    return e.access_token ? e : null;
  }

  function save(e) {
    store.setItem(key, JSON.stringify(e));
    seen(e);
  }

  // keep stores a token pair; event is what every tab announces of it.
  function keep({ access_token, refresh_token, expires_in }, event) {
    save({ access_token, refresh_token, expires_at: Date.now() + expires_in * 1000, event });
  }

  // emit tells the listeners, after the module's state is settled: a listener that throws or
  // calls back into the module breaks nothing.
  function emit(type, e, extra) {
    const ev = { type, session: sessionOf(e), ...extra };
    queueMicrotask(() => listeners.forEach((fn) => fn(ev)));
  }

  // seen takes note of what storage holds, written by this tab or by another: the end of a session
  // is reported once, a replaced refresh token is marked retired, and the refresh ahead of expiry
  // follows the current tokens.
  function seen(e) {
    if (signedIn && !e.access_token) {
      const reason = e.ended ?? "signed_out";
      queueMicrotask(() => onSignOut(reason)); // the app's callback cannot break the module's state
      emit("signed_out", e, { reason });
    } else if (started && e.access_token && e.refresh_token !== known) {
      emit(e.event ?? (signedIn ? "refreshed" : "signed_in"), e);
    }
    signedIn = Boolean(e.access_token);
    if (locks && known && e.refresh_token !== known) retiring = retire(known);
    known = e.refresh_token;
    if (refreshAhead > 0 && e.refresh_token !== ahead.token) {
      clearTimeout(ahead.timer);
      ahead.token = e.refresh_token;
      // Every tab sets a timer; the first to fire refreshes, and the others then find the token
      // they would present replaced, so one tab alone asks the service.
      const wait = Math.min(e.expires_at - refreshAhead * 1000 - Date.now(), 2 ** 31 - 1);
      if (e.refresh_token) ahead.timer = setTimeout(() => refresh(e).catch(() => {}), wait);
    }
  }
  seen(entry());
  started = true;
  if (shared) {
    addEventListener("storage", (ev) => {
      if (ev.storageArea === store && (ev.key === key || ev.key === null)) seen(entry());
    });
  }

  // Chromium gives each tab's process a copy of localStorage, brought up to date a moment after
  // another tab writes; a tab may read, even inside the lock, a refresh token that another tab has
  // just replaced, and a tab waking from a freeze may read one replaced long ago. Locks are held in
  // one place for all tabs, so every tab that sees a refresh token replaced holds a lock naming it
  // retired until it expires, and a tab finds out for sure before it presents one.
  const mark = (token) => `${key}:retired:${token.slice(-22)}`;
  function retire(token) {
    const ms = claims(token).exp * 1000 + 60000 - Date.now(); // a minute for the service's leeway
    return new Promise((marked) =>
      locks
        .request(mark(token), { mode: "shared" }, () => {
          marked();
          return sleep(Math.min(ms, 2 ** 31 - 1));
        })
        .catch(marked), // a page on its way out; nothing waits for the mark then
    );
  }
  async function retired(token) {
    const { held } = await locks.query();
    return held.some((lock) => lock.name === mark(token));
  }

  // refresh replaces stale, the tokens that a request was refused with. It resolves to null when
  // storage then holds tokens to retry with (or none: signed out meanwhile), and to the service's
  // answer when the service refused the refresh or could not answer it; it rejects with the
  // network error when the service could not be reached. One refresh at a time in this tab and,
  // under the lock, in all tabs of the origin.
  function refresh(stale) {
    if (!refreshing) {
      const rotation = () => rotate(stale);
      const done = locks ? locks.request(`${key}:refresh`, rotation) : rotation();
      refreshing = done.finally(() => (refreshing = null));
    }
    return refreshing;
  }

  async function rotate(stale) {
    const token = stale.refresh_token;
    // Replaced by another tab, or this one, while this call waited for the lock; or signed out.
    if (current()?.refresh_token !== token) return null;
    if (locks && (await retired(token))) {
      // Another tab replaced it; wait, five seconds at most, for this tab's copy to show what with.
      const until = Date.now() + 5000;
      while (entry().refresh_token === token && Date.now() < until) await sleep(20);
      current();
      return null;
    }
    const res = await retrying(() => post("/auth/refresh", { refresh_token: token }));
    if (entry().refresh_token !== token) return null; // signed out or in meanwhile
    if (res.ok) {
      keep(await res.clone().json(), "refreshed");
      await retiring; // before the lock is released, so that the next holder sees the mark
      return null;
    }
    if (res.status === 401) {
      const body = await res.clone().json().catch(() => null);
      save({ ended: body?.error ?? "token_invalid" });
    }
    return res;
  }

  // retrying sends a request until the service answers it with anything but a 5xx, for retryFor
  // seconds at most, waiting between tries as Retry-After says (a second when it says nothing).
  // A network error or a timeout is tried again too. The last answer, or error, is the result.
  async function retrying(send) {
    const until = Date.now() + retryFor * 1000;
    for (;;) {
      let res, error;
      try {
        res = await send();
      } catch (err) {
        error = err;
      }
      if (res && res.status < 500) return res;
      const wait = 1000 * (Number(res?.headers.get("Retry-After")) || 1);
      if (Date.now() + wait > until) {
        if (res) return res;
        throw error;
      }
      await sleep(wait);
    }
  }

  // post sends body to the service as JSON, which it requires.
  function post(path, body, access) {
    const headers = { "Content-Type": "application/json" };
    if (access) headers.Authorization = `Bearer ${access}`;
    const signal = AbortSignal.timeout(timeout * 1000);
    return fetch(baseURL + path, { method: "POST", headers, body: JSON.stringify(body), signal });
  }

  // authFetch is fetch with the access token, and without an Authorization header when signed
  // out. A 401 about a token refreshes it and sends the request again with the new one; the
  // README says what it resolves to. Another origin than those allowed gets a plain fetch.
  async function authFetch(input, init) {
    if (!origins.has(origin(input))) return fetch(input, init);
    // A Request's own headers, method and body go with it; each try sends a copy, so that the
    // body is still there for the try after a refresh.
    const request = new Request(input, init);
    let sent = current();
    // A tab that finds its tokens replaced by another may find those expired too: three tries.
    for (let tries = 1; ; tries++) {
      const res = await send(request.clone(), sent);
      if (res.status !== 401 || !sent || tries === 3 || !(await aboutToken(res))) return res;
      const refused = await refresh(sent);
      if (refused) return refused.clone();
      sent = current();
      if (!sent) return res;
    }
  }

  function send(request, tokens) {
    const headers = new Headers(request.headers);
    if (tokens) headers.set("Authorization", `Bearer ${tokens.access_token}`);
    return fetch(new Request(request, { headers }));
  }

  // aboutToken tells a 401 about the token sent from one saying that none was: the challenge,
  // which nginx passes on in front of its own page, or else the JSON body's code.
  async function aboutToken(res) {
    if (/error="invalid_token"/.test(res.headers.get("WWW-Authenticate") ?? "")) return true;
    const body = await res.clone().json().catch(() => null);
    return tokenErrors.includes(body?.error);
  }

  // signIn ends the session signed in now, at the service too, and logs in. It resolves to the
  // service's answer with a state: "signed_in" (the tokens are stored, for every tab),
  // "mfa_required" (with the methods that verifySecondFactor takes), or "refused" (401
  // invalid_credentials, 429 too_many_attempts with Retry-After, ...).
  async function signIn(email, password) {
    challenge = null;
    if (current()) await signOut().catch(() => {});
    return signedInBy(await post("/auth/login", { email, password }));
  }

  // verifySecondFactor completes signIn's "mfa_required" with {code} or {recovery_code}. A wrong
  // code is "refused" and may be tried again, as long as the challenge lasts.
  async function verifySecondFactor({ code, recovery_code } = {}) {
    if (!challenge) throw new Error("no sign-in is waiting for a second factor: call signIn first");
    return signedInBy(await post("/auth/mfa/verify", { mfa_token: challenge, code, recovery_code }));
  }

  async function signedInBy(res) {
    const body = res.ok ? await res.clone().json() : {};
    let state = "refused";
    if (body.mfa_required) {
      challenge = body.mfa_token;
      state = "mfa_required";
      res.methods = body.methods ?? ["totp", "recovery_code"];
    } else if (res.ok) {
      challenge = null;
      keep(body, "signed_in");
      state = "signed_in";
    }
    res.state = state;
    return res;
  }

  // stepUp raises this session to a second factor, for a route that answered 401 mfa_required;
  // the call then passes when sent again. The service replaces the session's tokens, so this
  // happens under the refresh lock, as a refresh does. It resolves to the service's answer.
  async function stepUp(code) {
    const proof = typeof code === "object" ? code : { code };
    await getAccessToken();
    const raise = async () => {
      const s = current();
      if (!s) return new Response('{"error":"token_missing"}', { status: 401 });
      const res = await post("/auth/mfa/verify", proof, s.access_token);
      if (res.ok && entry().refresh_token === s.refresh_token) {
        keep(await res.clone().json(), "stepped_up");
        await retiring;
      }
      return res;
    };
    return locks ? locks.request(`${key}:refresh`, raise) : raise();
  }

  // passkeys run the browser's WebAuthn ceremonies on the service's options: register adds one
  // (after the password), signIn signs in with one alone, verifySecondFactor completes signIn's
  // "mfa_required", stepUp raises the session. The authenticator's prompt is waited on outside
  // the refresh lock; only the exchange for new tokens happens under it.
  const webauthn = {
    create: async (options) => (await navigator.credentials.create({
      publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options),
    })).toJSON(),
    get: async (options, mediation) => (await navigator.credentials.get({
      publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options), mediation,
    })).toJSON(),
  };
  const signedOutAnswer = () => new Response('{"error":"token_missing"}', { status: 401 });
  const passkeys = {
    async register({ password, name } = {}) {
      const access = await getAccessToken();
      if (!access) return signedOutAnswer();
      const begin = await post("/auth/passkeys/register/begin", { password }, access);
      if (!begin.ok) return begin;
      const credential = await webauthn.create(await begin.json());
      return post("/auth/passkeys/register/finish", { credential, name }, (await getAccessToken()) ?? access);
    },
    async signIn({ email, mediation } = {}) {
      const begin = await post("/auth/passkeys/login/begin", email ? { email } : {});
      if (!begin.ok) return Object.assign(begin, { state: "refused" });
      const credential = await webauthn.get(await begin.json(), mediation);
      challenge = null;
      if (current()) await signOut().catch(() => {});
      return signedInBy(await post("/auth/passkeys/login/finish", { credential }));
    },
    async verifySecondFactor() {
      if (!challenge) throw new Error("no sign-in is waiting for a second factor: call signIn first");
      const mfa_token = challenge;
      const begin = await post("/auth/passkeys/login/begin", { mfa_token });
      if (!begin.ok) return Object.assign(begin, { state: "refused" });
      const credential = await webauthn.get(await begin.json());
      return signedInBy(await post("/auth/passkeys/login/finish", { mfa_token, credential }));
    },
    async stepUp() {
      const access = await getAccessToken();
      if (!access) return signedOutAnswer();
      const begin = await post("/auth/passkeys/login/begin", {}, access);
      if (!begin.ok) return begin;
      const credential = await webauthn.get(await begin.json());
      await getAccessToken();
      const raise = async () => {
        const s = current();
        if (!s) return signedOutAnswer();
        const res = await post("/auth/passkeys/login/finish", { credential }, s.access_token);
        if (res.ok && entry().refresh_token === s.refresh_token) {
          keep(await res.clone().json(), "stepped_up");
          await retiring;
        }
        return res;
      };
      return locks ? locks.request(`${key}:refresh`, raise) : raise();
    },
  };

  // getAccessToken resolves to an access token good for at least fresh seconds more, refreshing
  // it (one tab at a time) when it is not, or to null when signed out. It rejects when the
  // service could not answer the refresh.
  async function getAccessToken() {
    for (let tries = 1; ; tries++) {
      const s = current();
      if (!s) return null;
      if (s.expires_at - Date.now() > fresh * 1000 || tries > 3) return s.access_token;
      const refused = await refresh(s);
      if (refused && refused.status !== 401) {
        throw new Error(`the service could not refresh the session: ${refused.status}`);
      }
    }
  }

  // needsStepUp tells whether a call was refused for want of a second factor: by the header
  // WWW-Authenticate, which proxies pass on (nginx replaces the body of a 401 with its own page).
  function needsStepUp(res) {
    return res.status === 401 && /error="insufficient_user_authentication"/.test(res.headers.get("WWW-Authenticate") ?? "");
  }

  function onChange(fn) {
    listeners.add(fn);
    return () => listeners.delete(fn);
  }

  // signOut ends the session in every tab and at the service. The tokens leave storage first, so
  // that no tab sends them meanwhile; the answer (or error) says whether the service ended the
  // session too.
  async function signOut() {
    challenge = null;
    const s = current();
    save({ ended: "signed_out" });
    if (!s) return null;
    return retrying(() => post("/auth/logout", { refresh_token: s.refresh_token }, s.access_token));
  }

  // session is who is signed in, as the access token says, or null.
  const session = () => sessionOf(current());
  function sessionOf(s) {
    if (!s?.access_token) return null;
    const { sub, email } = claims(s.access_token);
    return { userId: sub, email, expiresAt: new Date(s.expires_at) };
  }

  return {
    signUp: (email, password) => post("/auth/signup", { email, password }),
    signIn,
    verifySecondFactor,
    stepUp,
    passkeys,
    needsStepUp,
    signOut,
    fetch: authFetch,
    getAccessToken,
    onChange,
    session,
  };
}

// claims reads a token's payload ({} if it cannot); the service, not the browser, checks tokens.
function claims(token) {
  try {
    const payload = atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(payload, (c) => c.charCodeAt(0))));
  } catch {
    return {};
  }
}

// usableLocalStorage is localStorage where it works, else "memory": reading it throws in a
// sandboxed frame or where the user blocks storage, and some Node versions define it without
// methods unless given a file.
function usableLocalStorage() {
  try {
    const s = globalThis.localStorage;
    if (typeof s?.getItem === "function") return s;
  } catch {}
  return "memory";
}

// memory keeps the tokens in this page only: gone on reload, and never seen by another tab.
function memory() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)) };
}
