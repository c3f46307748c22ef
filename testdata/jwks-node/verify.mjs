// A JWKS consumer that the service's authors did not write: jose's remote key set, as a Node
// resource server would use it, knowing nothing but the JWKS address and the issuer.
//
//   node verify.mjs JWKS_URL ISSUER
//
// Reads lines "UNIX_SECONDS TOKEN" on stdin and answers each with one JSON line on stdout:
// {"ok":true,"kid":...,"jti":...} or {"ok":false,"error":...}. The key set is fetched once and
// kept, as createRemoteJWKSet keeps it, so that a test can show what a cached copy checks.
import { createInterface } from 'node:readline';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [url, issuer] = process.argv.slice(2);
const keys = createRemoteJWKSet(new URL(url), { cacheMaxAge: 5 * 60 * 1000 });

for await (const line of createInterface({ input: process.stdin })) {
  const [now, token] = line.trim().split(' ');
  try {
    const { payload, protectedHeader } = await jwtVerify(token, keys, {
      issuer,
      algorithms: ['EdDSA', 'ES256'],
      currentDate: new Date(Number(now) * 1000),
    });
    console.log(JSON.stringify({ ok: true, kid: protectedHeader.kid, jti: payload.jti }));
  } catch (err) {
    console.log(JSON.stringify({ ok: false, error: err.code || String(err) }));
  }
}
