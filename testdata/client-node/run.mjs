// Node runs client.js, as the service serves it, outside any browser: no localStorage, no
// addEventListener, no Web Locks. client_node_test.go copies the module beside this script and
// reads the JSON it prints. Usage: node run.mjs <service URL> <email>
import { createAuth } from "./client.mjs";

const [base, email] = process.argv.slice(2);
createAuth(); // with defaults: no page, no localStorage, no addEventListener
const auth = createAuth({ baseURL: base });
const events = [];
auth.onChange((ev) => events.push(ev.type));
const out = { signedOutAtStart: auth.session() === null };
out.signUp = (await auth.signUp(email, "correct horse battery")).status;
out.signIn = (await auth.signIn(email, "correct horse battery")).state;
out.email = auth.session()?.email;
out.page = (await auth.fetch(`${base}/auth/page`)).status;
out.token = Boolean(await auth.getAccessToken());
out.signOut = (await auth.signOut()).status;
out.afterSignOut = (await auth.fetch(`${base}/auth/page`)).status;
await Promise.resolve(); // events are told in a microtask
out.events = events;
console.log(JSON.stringify(out));
