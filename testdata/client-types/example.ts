// A small typed app against client.d.ts; client_types_test.go runs tsc --noEmit on it.
import { createAuth, type AuthEvent, type Auth } from "../../client.js";

const auth: Auth = createAuth({ baseURL: "https://auth.example.com", apiOrigins: ["https://api.example.com"], fresh: 10 });
const stop: () => void = auth.onChange((ev: AuthEvent) => {
  if (ev.type === "signed_out") console.log("signed out:", ev.reason.toUpperCase());
  else console.log(ev.type, ev.session.email, ev.session.expiresAt.getTime());
});

export async function signIn(email: string, password: string, askCode: () => Promise<string>): Promise<boolean> {
  let res = await auth.signIn(email, password);
  while (res.state === "mfa_required" && res.methods?.includes("totp")) {
    res = await auth.verifySecondFactor({ code: await askCode() });
  }
  return res.state === "signed_in";
}

export async function orders(askCode: () => Promise<string>): Promise<unknown> {
  let res = await auth.fetch(new Request("https://api.example.com/orders", { method: "POST", body: "{}" }));
  if (auth.needsStepUp(res)) {
    if ((await auth.stepUp(await askCode())).ok) res = await auth.fetch("https://api.example.com/orders");
  }
  const token: string | null = await auth.getAccessToken();
  if (token) new WebSocket(`wss://api.example.com/live?token=${token}`);
  stop();
  return res.json();
}

// @ts-expect-error: a second factor is a code or a recovery code, not both
auth.verifySecondFactor({ code: "123456", recovery_code: "abc" });
// @ts-expect-error: no such option
createAuth({ baseUrl: "x" });
