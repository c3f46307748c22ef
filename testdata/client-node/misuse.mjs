// Node runs client.js, as the service serves it, the way an app gets it wrong, and prints what
// each mistake came to as JSON for client_node_test.go. Usage: node misuse.mjs <service URL> <email>
import { createAuth } from "./client.mjs";

const [base, email] = process.argv.slice(2);
const password = "correct horse battery";
const outcome = async (f) => {
  try {
    const r = await f();
    if (r?.state) return r.state;
    return r instanceof Response ? `${r.status} ${(await r.json()).error ?? ""}`.trim() : `no error`;
  } catch (err) {
    return `${err.name}: ${err.message}`;
  }
};
const out = { options: {} };

// Nonsense options, each of which would leave a module that breaks later.
const nonsense = {
  "retryFor: \"abc\"": { retryFor: "abc" },
  "timeout: -1": { timeout: -1 },
  "timeout: 0": { timeout: 0 },
  "fresh: NaN": { fresh: NaN },
  "refreshAhead: -5": { refreshAhead: -5 },
  "apiOrigins: a string": { apiOrigins: "https://api.example.com" },
  "apiOrigins: no URL": { apiOrigins: ["api.example.com"] },
  "storage: 42": { storage: 42 },
  "storage: \"session\"": { storage: "session" },
  "onSignOut: a string": { onSignOut: "logout" },
  "key: \"\"": { key: "" },
  "baseURL: 42": { baseURL: 42 },
};
for (const [name, options] of Object.entries(nonsense)) {
  out.options[name] = await outcome(() => createAuth({ baseURL: base, ...options }));
}

// Calls out of turn: a second factor with no sign-in waiting for it, a step-up while signed out.
const auth = createAuth({ baseURL: base });
out.verifyFirst = await outcome(() => auth.verifySecondFactor({ code: "123456" }));
out.stepUpSignedOut = await outcome(() => auth.stepUp("123456"));
out.signUp = (await auth.signUp(email, password)).status;

// A baseURL written with a trailing slash (the service takes //auth/login for /auth/login).
out.trailingSlash = await outcome(() => createAuth({ baseURL: `${base}/` }).signIn(email, password));

// A localStorage that is there but unusable: Node 25 defines one without methods unless given a
// file, and reading it throws in a sandboxed frame. createAuth() with defaults keeps to memory.
for (const [name, get] of Object.entries({ noMethods: () => ({}), throws: () => { throw new Error("denied"); } })) {
  Object.defineProperty(globalThis, "localStorage", { get, configurable: true });
  out[name] = await outcome(() => createAuth({ baseURL: base }).signIn(email, password));
  delete globalThis.localStorage;
}
console.log(JSON.stringify(out));
