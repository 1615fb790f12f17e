#!/usr/bin/env node
// Smoke check for the test STS: `node tests/sts/smoke.mjs` (after `npm ci --prefix tests/sts`).
// Starts server.mjs, exercises token exchange with jwt-spiffe and client_secret auth, the error
// paths and the /test/* endpoints. Exits non-zero on the first failure.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';

const here = path.dirname(fileURLToPath(import.meta.url));
const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const AT = 'urn:ietf:params:oauth:token-type:access_token';
const SPIFFE_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-spiffe';
const AGENT_ID = 'spiffe://example.org/ns/default/sa/agent';
const SECRET = 'smoke-secret';

let failures = 0;
let passes = 0;
function check(cond, what, extra) {
  if (cond) {
    passes += 1;
  } else {
    failures += 1;
    console.error(`FAIL: ${what}${extra !== undefined ? ` -- ${typeof extra === 'string' ? extra : JSON.stringify(extra)}` : ''}`);
  }
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sts-smoke-'));
const bundlePath = path.join(tmp, 'bundle.jwks.json');

// SPIFFE JWT bundle key (EC P-256), written the way SPIRE does: use "jwt-svid", no "alg".
async function newSpiffeKey(kid) {
  const { publicKey, privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(publicKey)), kid, use: 'jwt-svid' };
  return { privateKey, jwk, kid };
}
function writeBundle(keys) {
  const doc = { keys: keys.map((k) => k.jwk), spiffe_sequence: 1, spiffe_refresh_hint: 60 };
  const tmpFile = `${bundlePath}.tmp`;
  fs.writeFileSync(tmpFile, JSON.stringify(doc));
  fs.renameSync(tmpFile, bundlePath);
}
async function jwtSvid(key, { sub = AGENT_ID, aud, exp = '5m' } = {}) {
  const jwt = new jose.SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: 'JWT' })
    .setSubject(sub).setAudience(aud).setIssuedAt();
  if (typeof exp === 'number') jwt.setExpirationTime(exp); else jwt.setExpirationTime(exp);
  return jwt.sign(key.privateKey);
}

const key1 = await newSpiffeKey('spiffe-k1');
writeBundle([key1]);

// --- start server ------------------------------------------------------------------------------
const child = spawn(process.execPath, [
  path.join(here, 'server.mjs'), '--port', '0', '--client-secret', SECRET,
  '--spiffe-jwks', bundlePath, '--exit-on-stdin-eof',
], { stdio: ['pipe', 'pipe', 'inherit'] });
const exited = new Promise((r) => { child.on('exit', (code, sig) => r({ code, sig })); });

const info = await Promise.race([
  new Promise((resolve) => {
    createInterface({ input: child.stdout }).once('line', (l) => resolve(JSON.parse(l)));
  }),
  exited.then((e) => { throw new Error(`server exited before ready: ${JSON.stringify(e)}`); }),
  new Promise((_, rej) => { setTimeout(() => rej(new Error('server did not start in 15s')), 15_000).unref(); }),
]);
const { issuer, token_url: tokenUrl, jwks_uri: jwksUri } = info;
check(/^http:\/\/127\.0\.0\.1:\d+$/.test(issuer) && tokenUrl === `${issuer}/token` && jwksUri === `${issuer}/jwks`
  && info.port === Number(new URL(issuer).port), 'ready line shape', info);

// --- helpers -----------------------------------------------------------------------------------
async function post(url, form, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(form).toString(),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text, headers: res.headers };
}
async function mint(form) {
  const r = await post(`${issuer}/test/mint`, form);
  if (r.status !== 200) throw new Error(`mint failed ${r.status} ${r.text}`);
  return r.json.access_token;
}
const exchangeForm = (subjectToken, extra = []) => [
  ['grant_type', TE],
  ['subject_token', subjectToken],
  ['subject_token_type', AT],
  ['requested_token_type', AT],
  ['audience', 'tool-a'],
  ['scope', 'tools.read'],
  ...extra,
];
const providerJwks = jose.createRemoteJWKSet(new URL(jwksUri));
async function verifyIssued(token) {
  return (await jose.jwtVerify(token, providerJwks, { issuer, audience: 'tool-a' })).payload;
}
function checkSuccessShape(r, what) {
  check(r.status === 200, `${what}: status 200`, r.text);
  check(r.json && typeof r.json.access_token === 'string'
    && r.json.issued_token_type === AT && r.json.token_type === 'Bearer'
    && Number.isInteger(r.json.expires_in) && r.json.expires_in > 0, `${what}: response shape`, r.json);
  check(r.headers.get('cache-control')?.includes('no-store'), `${what}: cache-control no-store`);
}

try {
  // --- user token ------------------------------------------------------------------------------
  const userToken = await mint({ sub: 'alice', aud: 'authbridge', scope: 'openid tools.read tools.write' });
  const ut = (await jose.jwtVerify(userToken, providerJwks, { issuer, audience: 'authbridge' })).payload;
  check(ut.sub === 'alice' && ut.scope === 'openid tools.read tools.write', 'minted user token claims', ut);

  await post(`${issuer}/test/reset`, {});

  // --- exchange with jwt-spiffe (client_id present, as AuthBridge sends it) ----------------------
  {
    const svid = await jwtSvid(key1, { aud: issuer });
    const r = await post(tokenUrl, exchangeForm(userToken, [
      ['client_id', AGENT_ID], ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', svid]]));
    checkSuccessShape(r, 'jwt-spiffe exchange');
    if (r.status === 200) {
      const c = await verifyIssued(r.json.access_token);
      const hdr = jose.decodeProtectedHeader(r.json.access_token);
      check(c.sub === 'alice', 'jwt-spiffe: sub is the subject', c);
      check(c.aud === 'tool-a', 'jwt-spiffe: aud is the requested audience', c);
      check(c.scope === 'tools.read', 'jwt-spiffe: scope is the requested scope', c);
      check(c.act?.sub === AGENT_ID && c.act.act === undefined, 'jwt-spiffe: act.sub is the SPIFFE ID', c);
      check(c.client_id === AGENT_ID, 'jwt-spiffe: client_id claim', c);
      check(c.exp - c.iat === r.json.expires_in, 'jwt-spiffe: exp matches expires_in', c);
      check(hdr.typ === 'at+jwt' && hdr.alg === 'RS256' && hdr.kid, 'jwt-spiffe: header', hdr);

      // chained exchange: nested act
      const svid2 = await jwtSvid(key1, { sub: 'spiffe://example.org/ns/default/sa/tool-a', aud: tokenUrl });
      const r2 = await post(tokenUrl, exchangeForm(r.json.access_token, [
        ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', svid2]]));
      checkSuccessShape(r2, 'chained exchange (no client_id, aud=token_url)');
      if (r2.status === 200) {
        const c2 = await verifyIssued(r2.json.access_token);
        check(c2.act?.sub === 'spiffe://example.org/ns/default/sa/tool-a' && c2.act?.act?.sub === AGENT_ID,
          'chained exchange: nested act', c2);
      }
    }
  }

  // --- exchange with client_secret_post and client_secret_basic ----------------------------------
  {
    const r = await post(tokenUrl, exchangeForm(userToken, [
      ['client_id', 'agent-secret-client'], ['client_secret', SECRET]]));
    checkSuccessShape(r, 'client_secret_post exchange');
    if (r.status === 200) {
      const c = await verifyIssued(r.json.access_token);
      check(c.sub === 'alice' && c.act?.sub === 'agent-secret-client' && c.scope === 'tools.read',
        'client_secret_post: claims', c);
    }
    const basic = Buffer.from(`agent-secret-client:${SECRET}`).toString('base64');
    const rb = await post(tokenUrl, exchangeForm(userToken), { authorization: `Basic ${basic}` });
    checkSuccessShape(rb, 'client_secret_basic exchange');
    const rw = await post(tokenUrl, exchangeForm(userToken, [
      ['client_id', 'agent-secret-client'], ['client_secret', 'wrong']]));
    check(rw.status === 401 && rw.json?.error === 'invalid_client', 'wrong client_secret -> 401 invalid_client', rw.text);
    // scope defaults to the subject token's scope when not requested
    const rs = await post(tokenUrl, exchangeForm(userToken, [
      ['client_id', 'agent-secret-client'], ['client_secret', SECRET]]).filter(([k]) => k !== 'scope'));
    if (rs.status === 200) {
      const c = await verifyIssued(rs.json.access_token);
      check(c.scope === 'openid tools.read tools.write', 'no scope requested -> subject scope', c);
    } else check(false, 'exchange without scope', rs.text);
  }

  // --- request log ------------------------------------------------------------------------------
  {
    const res = await fetch(`${issuer}/test/requests`);
    const log = await res.json();
    check(Array.isArray(log) && log.length === 6, 'request log length', log.length);
    const first = log[0];
    check(first?.method === 'POST' && first.content_type === 'application/x-www-form-urlencoded'
      && JSON.stringify(first.fields.map(([k]) => k)) === JSON.stringify(['grant_type', 'subject_token',
        'subject_token_type', 'requested_token_type', 'audience', 'scope', 'client_id',
        'client_assertion_type', 'client_assertion'])
      && first.form.client_id === AGENT_ID && first.form.audience === 'tool-a',
    'request log entry records all fields in order', first);
    check(log[3]?.authorization?.startsWith('Basic '), 'request log records the authorization header', log[3]);
    await post(`${issuer}/test/reset`, {});
    check((await (await fetch(`${issuer}/test/requests`)).json()).length === 0, 'reset clears the log');
  }

  // --- jwt-spiffe failures ------------------------------------------------------------------------
  {
    const rogue = await newSpiffeKey('spiffe-k1'); // same kid, different key -> signature mismatch
    const bad = await jwtSvid(rogue, { aud: issuer });
    const r = await post(tokenUrl, exchangeForm(userToken, [
      ['client_id', AGENT_ID], ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', bad]]));
    check(r.status === 401 && r.json?.error === 'invalid_client', 'wrong-signature assertion -> 401 invalid_client', r.text);

    const wrongAud = await jwtSvid(key1, { aud: 'https://someone-else.example' });
    const r2 = await post(tokenUrl, exchangeForm(userToken, [
      ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', wrongAud]]));
    check(r2.status === 401 && r2.json?.error === 'invalid_client', 'wrong-aud assertion -> 401', r2.text);

    const expired = await jwtSvid(key1, { aud: issuer, exp: Math.floor(Date.now() / 1000) - 30 });
    const r3 = await post(tokenUrl, exchangeForm(userToken, [
      ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', expired]]));
    check(r3.status === 401 && r3.json?.error === 'invalid_client', 'expired assertion -> 401', r3.text);

    const notSpiffe = await jwtSvid(key1, { aud: issuer, sub: 'agent' });
    const r4 = await post(tokenUrl, exchangeForm(userToken, [
      ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', notSpiffe]]));
    check(r4.status === 401 && r4.json?.error === 'invalid_client', 'non-SPIFFE sub -> 401', r4.text);

    const good = await jwtSvid(key1, { aud: issuer });
    const r5 = await post(tokenUrl, exchangeForm(userToken, [
      ['client_id', 'spiffe://example.org/other'], ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', good]]));
    check(r5.status === 401 && r5.json?.error === 'invalid_client', 'client_id != SVID sub -> 401', r5.text);

    // a SPIFFE client that already authenticated once cannot come back with client_id alone
    const r6 = await post(tokenUrl, exchangeForm(userToken, [['client_id', AGENT_ID]]));
    check(r6.status === 401 && r6.json?.error === 'invalid_client', 'SPIFFE client_id without assertion -> 401', r6.text);

    const r7 = await post(tokenUrl, exchangeForm(userToken, [
      ['client_id', AGENT_ID], ['client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'],
      ['client_assertion', good]]));
    check(r7.status === 401 && r7.json?.error === 'invalid_client', 'jwt-bearer assertion type -> 401', r7.text);

    // bundle rotation: k1 removed, k2 added -> old SVIDs fail, new ones work (file re-read per request)
    const key2 = await newSpiffeKey('spiffe-k2');
    writeBundle([key2]);
    const r8 = await post(tokenUrl, exchangeForm(userToken, [
      ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', good]]));
    check(r8.status === 401, 'after rotation, old-key SVID -> 401', r8.text);
    const r9 = await post(tokenUrl, exchangeForm(userToken, [
      ['client_assertion_type', SPIFFE_TYPE], ['client_assertion', await jwtSvid(key2, { aud: issuer })]]));
    check(r9.status === 200, 'after rotation, new-key SVID -> 200', r9.text);
  }

  // --- subject token failures ---------------------------------------------------------------------
  {
    const auth = [['client_id', 'agent-secret-client'], ['client_secret', SECRET]];
    const expiredUser = await mint({ sub: 'alice', aud: 'authbridge', scope: 'tools.read', expires_in: '-60' });
    const r = await post(tokenUrl, exchangeForm(expiredUser, auth));
    check(r.status === 400 && r.json?.error === 'invalid_grant', 'expired subject token -> 400 invalid_grant', r.text);

    const foreignIss = await mint({ sub: 'alice', aud: 'authbridge', iss: 'https://evil.example' });
    const r2 = await post(tokenUrl, exchangeForm(foreignIss, auth));
    check(r2.status === 400 && r2.json?.error === 'invalid_grant', 'foreign iss subject token -> 400 invalid_grant', r2.text);

    const { privateKey } = await jose.generateKeyPair('RS256');
    const forged = await new jose.SignJWT({ sub: 'alice', scope: 'x' }).setProtectedHeader({ alg: 'RS256' })
      .setIssuer(issuer).setExpirationTime('5m').sign(privateKey);
    const r3 = await post(tokenUrl, exchangeForm(forged, auth));
    check(r3.status === 400 && r3.json?.error === 'invalid_grant', 'forged subject token -> 400 invalid_grant', r3.text);

    const r4 = await post(tokenUrl, exchangeForm(userToken, auth).map(([k, v]) => (k === 'subject_token_type'
      ? [k, 'urn:ietf:params:oauth:token-type:id_token'] : [k, v])));
    check(r4.status === 400 && r4.json?.error === 'invalid_request', 'wrong subject_token_type -> 400 invalid_request', r4.text);

    const r5 = await post(tokenUrl, exchangeForm(userToken, auth).filter(([k]) => k !== 'subject_token'));
    check(r5.status === 400 && r5.json?.error === 'invalid_request', 'missing subject_token -> 400 invalid_request', r5.text);
  }

  // --- faults ------------------------------------------------------------------------------------
  {
    const auth = [['client_id', 'agent-secret-client'], ['client_secret', SECRET]];
    const setFault = async (form) => (await post(`${issuer}/test/fault`, form)).json;

    await setFault({ mode: 'http500' });
    let r = await post(tokenUrl, exchangeForm(userToken, auth));
    check(r.status === 500, 'fault http500', r.status);

    await setFault({ mode: 'garbage' });
    r = await post(tokenUrl, exchangeForm(userToken, auth));
    check(r.status === 200 && r.json === undefined, 'fault garbage -> 200 non-JSON', r.text);

    await setFault({ mode: 'invalid_grant' });
    r = await post(tokenUrl, exchangeForm(userToken, auth));
    check(r.status === 400 && r.json?.error === 'invalid_grant', 'fault invalid_grant', r.text);

    await setFault({ mode: 'slow', slow_ms: '400' });
    let t0 = Date.now();
    r = await post(tokenUrl, exchangeForm(userToken, auth));
    check(r.status === 200 && Date.now() - t0 >= 400, 'fault slow (slow_ms=400) delays then answers', Date.now() - t0);

    const st = await setFault({ mode: 'none', delay_ms: '300', token_ttl: '42' });
    check(st.mode === 'none' && st.delay_ms === 300 && st.token_ttl === 42 && st.slow_ms === 400, 'fault state echo', st);
    t0 = Date.now();
    r = await post(tokenUrl, exchangeForm(userToken, auth));
    check(r.status === 200 && Date.now() - t0 >= 300 && r.json.expires_in === 42, 'delay_ms + token_ttl', { ms: Date.now() - t0, body: r.json });
    await setFault({ delay_ms: '0', token_ttl: '300', slow_ms: '30000' });

    const log = await (await fetch(`${issuer}/test/requests`)).json();
    check(log.length >= 5, 'faulted requests are logged too', log.length);
  }
} catch (err) {
  failures += 1;
  console.error('FAIL: unexpected error', err);
}

// --- shutdown via stdin EOF ------------------------------------------------------------------------
child.stdin.end();
const ex = await Promise.race([exited, new Promise((r) => { setTimeout(() => r(null), 5000).unref(); })]);
check(ex !== null, 'server exits when stdin closes (--exit-on-stdin-eof)');
if (ex === null) child.kill('SIGKILL');
fs.rmSync(tmp, { recursive: true, force: true });

if (failures) {
  console.error(`sts smoke: ${failures} failure(s), ${passes} passed`);
  process.exit(1);
}
console.log(`sts smoke: OK (${passes} checks)`);
process.exit(0);
