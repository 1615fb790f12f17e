#!/usr/bin/env node
// TEST-ONLY security token service for AuthBridge end-to-end tests.
//
// A real OpenID provider (`oidc-provider`, certified) with:
//   * an RFC 8693 token-exchange grant registered through provider.registerGrantType();
//   * client authentication at the token endpoint by client_secret_basic / client_secret_post
//     (static client `agent-secret-client`) or by jwt-spiffe (a JWT-SVID as client_assertion,
//     draft-ietf-oauth-spiffe-client-auth, Keycloak's spelling) which oidc-provider does not
//     support natively, so it is added by a Koa middleware in front of the token endpoint;
//   * test-only endpoints under /test/ (mint a user token, request log, fault injection).
//
// NEVER deploy this: /test/mint signs arbitrary tokens with the provider's keys.
// See README.md next to this file for the full CLI / endpoint / claim reference.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const TE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const AT_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const SPIFFE_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-spiffe';
const SECRET_CLIENT_ID = 'agent-secret-client';
const SPIFFE_ID_RE = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$/;
const SVID_ALGS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512'];
const MAX_BODY = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------
const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'client-secret': { type: 'string', default: 's3cret' },
    'spiffe-jwks': { type: 'string' },
    'spiffe-audience': { type: 'string', multiple: true },
    'spiffe-client': { type: 'string', multiple: true },
    'token-ttl': { type: 'string', default: '300' },
    'token-alg': { type: 'string', default: 'RS256' },
    'exit-on-stdin-eof': { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
  },
  strict: true,
});

const opts = {
  port: Number.parseInt(args.port, 10),
  host: args.host,
  clientSecret: args['client-secret'],
  spiffeJwks: args['spiffe-jwks'],
  spiffeAudience: args['spiffe-audience'] ?? [],
  spiffeClients: args['spiffe-client'] ?? [],
  tokenAlg: args['token-alg'],
  verbose: args.verbose,
};
if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) die(`invalid --port ${args.port}`);
if (!['RS256', 'ES256'].includes(opts.tokenAlg)) die('--token-alg must be RS256 or ES256');

// Mutable test state (request log + fault injection).
const state = {
  requests: [],
  fault: 'none', // none | http500 | garbage | slow | invalid_grant
  slowMs: 30_000,
  delayMs: 0,
  tokenTtl: positiveInt(args['token-ttl'], '--token-ttl'),
};

function die(msg) {
  process.stderr.write(`sts: ${msg}\n`);
  process.exit(2);
}
function positiveInt(v, what) {
  const n = Number.parseInt(v, 10);
  if (!Number.isSafeInteger(n) || n <= 0 || String(n) !== String(v).trim()) die(`${what} must be a positive integer`);
  return n;
}
function log(...a) {
  if (opts.verbose) console.error('sts:', ...a);
}
const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

// ---------------------------------------------------------------------------------------------
// Signing keys (fresh per process): RS256 + ES256, published at jwks_uri.
// ---------------------------------------------------------------------------------------------
async function genKey(alg, params) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, ...params });
  const jwk = await jose.exportJWK(privateKey);
  jwk.alg = alg;
  jwk.use = 'sig';
  jwk.kid = `sts-${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
  return jwk;
}
const privateJwks = [await genKey('RS256', { modulusLength: 2048 }), await genKey('ES256')];
const publicJwks = privateJwks.map(({ d, p, q, dp, dq, qi, ...pub }) => pub);
const ownKeySet = jose.createLocalJWKSet({ keys: publicJwks });
const signingKeys = Object.fromEntries(await Promise.all(privateJwks.map(
  async (jwk) => [jwk.alg, { key: await jose.importJWK(jwk, jwk.alg), kid: jwk.kid }],
)));

// ---------------------------------------------------------------------------------------------
// Minimal in-memory adapter (avoids oidc-provider's dev-adapter warning; lets us add clients).
// ---------------------------------------------------------------------------------------------
const stores = new Map();
class MapAdapter {
  constructor(name) {
    this.name = name;
    if (!stores.has(name)) stores.set(name, new Map());
    this.store = stores.get(name);
  }

  async upsert(id, payload, expiresIn) {
    this.store.set(id, { payload, exp: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
  }

  async find(id) {
    const e = this.store.get(id);
    if (!e) return undefined;
    if (e.exp !== undefined && e.exp < Date.now()) { this.store.delete(id); return undefined; }
    return e.payload;
  }

  async findByUserCode(userCode) {
    for (const [id, e] of this.store) if (e.payload.userCode === userCode) return this.find(id);
    return undefined;
  }

  async findByUid(uid) {
    for (const [id, e] of this.store) if (e.payload.uid === uid) return this.find(id);
    return undefined;
  }

  async consume(id) {
    const e = this.store.get(id);
    if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { this.store.delete(id); }

  async revokeByGrantId(grantId) {
    for (const [id, e] of this.store) if (e.payload.grantId === grantId) this.store.delete(id);
  }
}

// ---------------------------------------------------------------------------------------------
// Listen first (port 0 = ephemeral), then build the provider with the real issuer.
// ---------------------------------------------------------------------------------------------
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(opts.port, opts.host, resolve);
});
const { port } = server.address();
const issuer = `http://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}`;
const tokenPath = '/token';
const tokenUrl = `${issuer}${tokenPath}`;
const jwksUri = `${issuer}/jwks`;

const exchangeExtras = new WeakMap(); // AccessToken -> { act, aud[] }

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [{
    client_id: SECRET_CLIENT_ID,
    client_secret: opts.clientSecret,
    grant_types: [TE_GRANT],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic', // basic and post are interchangeable in oidc-provider
  }],
  // 'none' is only used for SPIFFE clients whose JWT-SVID was verified by spiffeAuth below.
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'none'],
  jwks: { keys: privateJwks },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  features: { devInteractions: { enabled: false } },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  ttl: {
    AccessToken: () => state.tokenTtl,
    AuthorizationCode: 60,
    ClientCredentials: () => state.tokenTtl,
    DeviceCode: 600,
    BackchannelAuthenticationRequest: 600,
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 3600,
    Session: 86400,
    Grant: 86400,
  },
  formats: {
    customizers: {
      // Adds RFC 8693 `act` (and multi-valued `aud`) to exchanged JWT access tokens.
      async jwt(ctx, token, jwt) {
        const extra = exchangeExtras.get(token);
        if (!extra) return;
        jwt.payload.act = extra.act;
        if (extra.aud.length > 1) jwt.payload.aud = extra.aud;
      },
    },
  },
  renderError(ctx, out) { ctx.type = 'json'; ctx.body = out; },
});
provider.proxy = false;
provider.on('server_error', (ctx, err) => console.error('sts: server_error', ctx.method, ctx.path, err));
provider.on('grant.error', (ctx, err) => log('grant.error', err.message, err.error_description));

// ---------------------------------------------------------------------------------------------
// RFC 8693 token exchange grant.
// ---------------------------------------------------------------------------------------------
function oauthError(Cls, description, ...rest) {
  const e = new Cls(...rest);
  e.error_description = description;
  return e;
}
const asArray = (v) => (v === undefined ? [] : (Array.isArray(v) ? v : [v]));

async function verifyOwnAccessToken(token) {
  const { payload } = await jose.jwtVerify(token, ownKeySet, {
    issuer,
    algorithms: ['RS256', 'ES256'],
    requiredClaims: ['exp', 'sub'],
  });
  return payload;
}

async function tokenExchangeHandler(ctx) {
  const { params, client } = ctx.oidc;

  // Defence in depth: 'none' clients exist only for verified jwt-spiffe callers.
  if (client.clientAuthMethod === 'none' && ctx.state.spiffe?.sub !== client.clientId) {
    throw oauthError(errors.InvalidClientAuth, 'SPIFFE clients must authenticate with jwt-spiffe');
  }
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter \'subject_token\'');
  if (!params.subject_token_type) throw new errors.InvalidRequest('missing required parameter \'subject_token_type\'');
  if (params.subject_token_type !== AT_TYPE) {
    throw new errors.InvalidRequest(`unsupported subject_token_type, expected ${AT_TYPE}`);
  }
  if (params.requested_token_type !== undefined && ![AT_TYPE, JWT_TYPE].includes(params.requested_token_type)) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  if (params.actor_token !== undefined || params.actor_token_type !== undefined) {
    throw new errors.InvalidRequest('actor_token is not supported');
  }
  const audiences = [...asArray(params.audience), ...asArray(params.resource)].filter(Boolean);
  if (audiences.length === 0) throw new errors.InvalidRequest('audience (or resource) is required');

  let subject;
  try {
    subject = await verifyOwnAccessToken(params.subject_token);
  } catch (err) {
    throw oauthError(errors.InvalidGrant, `subject_token is invalid: ${err.code ?? err.message}`);
  }

  const scope = params.scope ?? subject.scope ?? undefined;

  if (state.delayMs > 0) await sleep(state.delayMs);

  const at = new provider.AccessToken({
    accountId: subject.sub,
    client,
    scope: scope || undefined,
    gty: 'token-exchange',
    expiresIn: state.tokenTtl,
  });
  at.resourceServer = new provider.ResourceServer(audiences[0], {
    audience: audiences[0],
    scope: scope || undefined,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: opts.tokenAlg } },
  });
  const act = { sub: client.clientId };
  if (subject.act) act.act = subject.act; // nested delegation chain per RFC 8693 §4.1
  exchangeExtras.set(at, { act, aud: audiences });

  const accessToken = await at.save();
  ctx.body = {
    access_token: accessToken,
    issued_token_type: AT_TYPE,
    token_type: 'Bearer',
    expires_in: at.expiration,
    ...(scope ? { scope } : undefined),
  };
}

provider.registerGrantType(
  TE_GRANT,
  tokenExchangeHandler,
  ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope',
    'actor_token', 'actor_token_type'],
  ['audience', 'resource'],
);

// ---------------------------------------------------------------------------------------------
// Front middleware: /test/* endpoints, token endpoint request log, faults, jwt-spiffe auth.
// ---------------------------------------------------------------------------------------------
async function readBody(req) {
  const chunks = [];
  let n = 0;
  for await (const c of req) {
    n += c.length;
    if (n > MAX_BODY) throw Object.assign(new Error('request body too large'), { status: 413 });
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

// Give oidc-provider a fresh, unread request stream carrying `buf` as the body.
function replaceRequestBody(ctx, buf) {
  const orig = ctx.req;
  const m = new http.IncomingMessage(orig.socket);
  m.method = orig.method;
  m.url = orig.url;
  m.httpVersion = orig.httpVersion;
  m.httpVersionMajor = orig.httpVersionMajor;
  m.httpVersionMinor = orig.httpVersionMinor;
  const headers = { ...orig.headers, 'content-length': String(buf.length) };
  delete headers['transfer-encoding'];
  m.headers = headers;
  m.rawHeaders = Object.entries(headers).flatMap(([k, v]) => (Array.isArray(v) ? v.flatMap((x) => [k, x]) : [k, v]));
  m.push(buf);
  m.push(null);
  m.complete = true;
  ctx.req = m;
  ctx.request.req = m;
  ctx.response.req = m;
}

function sendJson(ctx, status, body, headers = {}) {
  ctx.status = status;
  ctx.set('Cache-Control', 'no-store');
  for (const [k, v] of Object.entries(headers)) ctx.set(k, v);
  ctx.type = 'application/json';
  ctx.body = JSON.stringify(body);
}
function sendOAuthError(ctx, status, error, description) {
  sendJson(ctx, status, { error, error_description: description });
}

function isForm(ctx) {
  return ctx.is('application/x-www-form-urlencoded') === 'application/x-www-form-urlencoded';
}

async function readForm(ctx) {
  const buf = await readBody(ctx.req);
  const ct = ctx.get('content-type');
  if (ct && /json/i.test(ct)) {
    const obj = buf.length ? JSON.parse(buf.toString('utf8')) : {};
    return new URLSearchParams(Object.entries(obj).flatMap(([k, v]) => (
      v !== null && typeof v === 'object' && !Array.isArray(v)
        ? [[k, JSON.stringify(v)]] // e.g. "claims": {...}
        : asArray(v).map((x) => [k, String(x)]))));
  }
  return new URLSearchParams(buf.toString('utf8'));
}

// Loads the SPIFFE JWT bundle (re-read on every call so tests can rotate it). Accepts a plain JWKS
// or a SPIFFE bundle (keys with use "jwt-svid"; "x509-svid" keys are ignored; spiffe_* members ignored).
function loadSpiffeKeySet() {
  const doc = JSON.parse(fs.readFileSync(opts.spiffeJwks, 'utf8'));
  const keys = (doc.keys ?? [])
    .filter((k) => k.use === undefined || k.use === 'jwt-svid' || k.use === 'sig')
    .map(({ use, ...k }) => k);
  return jose.createLocalJWKSet({ keys });
}

async function verifyJwtSvid(assertion) {
  if (!opts.spiffeJwks) throw new Error('jwt-spiffe client authentication is not configured (no --spiffe-jwks)');
  let keySet;
  try {
    keySet = loadSpiffeKeySet();
  } catch (err) {
    console.error(`sts: cannot load SPIFFE bundle ${opts.spiffeJwks}: ${err.message}`);
    throw new Error('SPIFFE bundle unavailable');
  }
  const audience = opts.spiffeAudience.length ? opts.spiffeAudience : [issuer, tokenUrl];
  const { payload } = await jose.jwtVerify(assertion, keySet, {
    algorithms: SVID_ALGS,
    audience,
    requiredClaims: ['sub', 'aud', 'exp'],
  });
  if (typeof payload.sub !== 'string' || !SPIFFE_ID_RE.test(payload.sub)) {
    throw new Error('sub is not a SPIFFE ID');
  }
  if (opts.spiffeClients.length && !opts.spiffeClients.includes(payload.sub)) {
    throw new Error('SPIFFE ID is not a registered client');
  }
  return payload;
}

function basicClientId(ctx) {
  const h = ctx.get('authorization');
  if (!h) return undefined;
  const [scheme, value] = h.split(' ');
  if (!/^basic$/i.test(scheme) || !value) return undefined;
  const s = Buffer.from(value, 'base64').toString('utf8');
  const i = s.indexOf(':');
  try {
    return decodeURIComponent((i === -1 ? s : s.slice(0, i)).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

async function tokenEndpointFront(ctx, next) {
  const buf = await readBody(ctx.req);
  const fields = [...new URLSearchParams(buf.toString('utf8'))];
  const form = {};
  for (const [k, v] of fields) {
    if (k in form) form[k] = [...asArray(form[k]), v];
    else form[k] = v;
  }
  state.requests.push({
    method: ctx.method,
    path: ctx.path,
    content_type: ctx.get('content-type') || null,
    authorization: ctx.get('authorization') || null,
    fields,
    form,
    received_at_ms: Date.now(),
  });
  log('token request', JSON.stringify(fields.map(([k]) => k)));

  switch (state.fault) {
    case 'http500':
      sendJson(ctx, 500, { error: 'server_error', error_description: 'injected fault (http500)' });
      return;
    case 'garbage':
      ctx.status = 200;
      ctx.set('Cache-Control', 'no-store');
      ctx.type = 'application/json';
      ctx.body = '<html>this is not JSON (injected fault)';
      return;
    case 'invalid_grant':
      sendOAuthError(ctx, 400, 'invalid_grant', 'injected fault (invalid_grant)');
      return;
    case 'slow':
      await sleep(state.slowMs);
      break;
    default:
  }

  let body = buf;
  if (ctx.method === 'POST' && isForm(ctx)) {
    const params = new URLSearchParams(fields);
    const assertionType = params.getAll('client_assertion_type');
    const assertion = params.getAll('client_assertion');

    if (assertionType.length || assertion.length) {
      if (assertionType.length !== 1 || assertion.length !== 1) {
        sendOAuthError(ctx, 400, 'invalid_request', 'client_assertion and client_assertion_type must be provided exactly once');
        return;
      }
      if (assertionType[0] !== SPIFFE_ASSERTION_TYPE) {
        sendOAuthError(ctx, 401, 'invalid_client', `unsupported client_assertion_type, only ${SPIFFE_ASSERTION_TYPE} is accepted`);
        return;
      }
      if (params.has('client_secret') || ctx.get('authorization')) {
        sendOAuthError(ctx, 400, 'invalid_request', 'client authentication must only be provided using one mechanism');
        return;
      }
      let svid;
      try {
        svid = await verifyJwtSvid(assertion[0]);
      } catch (err) {
        log('jwt-spiffe rejected:', err.code ?? '', err.message);
        sendOAuthError(ctx, 401, 'invalid_client', `JWT-SVID client assertion rejected: ${err.code ?? err.message}`);
        return;
      }
      const clientIds = params.getAll('client_id');
      if (clientIds.length > 1 || (clientIds.length === 1 && clientIds[0] !== svid.sub)) {
        sendOAuthError(ctx, 401, 'invalid_client', 'client_id does not match the JWT-SVID sub');
        return;
      }
      // Register (idempotently) the SPIFFE ID as a public client allowed only the token-exchange
      // grant, and hand oidc-provider a request it understands: auth method 'none' + client_id.
      await new MapAdapter('Client').upsert(svid.sub, {
        client_id: svid.sub,
        token_endpoint_auth_method: 'none',
        grant_types: [TE_GRANT],
        response_types: [],
        redirect_uris: [],
      });
      ctx.state.spiffe = { sub: svid.sub, claims: svid };
      params.delete('client_assertion');
      params.delete('client_assertion_type');
      params.delete('client_id');
      params.append('client_id', svid.sub);
      body = Buffer.from(params.toString(), 'utf8');
    } else {
      const claimed = params.get('client_id') ?? basicClientId(ctx);
      if (claimed?.startsWith('spiffe://')) {
        sendOAuthError(ctx, 401, 'invalid_client', `SPIFFE clients must authenticate with client_assertion_type=${SPIFFE_ASSERTION_TYPE}`);
        return;
      }
    }
  }

  replaceRequestBody(ctx, body);
  await next();
}

async function testEndpoints(ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  switch (route) {
    case 'GET /test/requests':
      sendJson(ctx, 200, state.requests);
      return;
    case 'POST /test/reset':
      state.requests = [];
      sendJson(ctx, 200, { ok: true });
      return;
    case 'POST /test/fault': {
      const f = await readForm(ctx);
      if (f.has('mode')) {
        const mode = f.get('mode');
        if (!['none', 'http500', 'garbage', 'slow', 'invalid_grant'].includes(mode)) {
          sendOAuthError(ctx, 400, 'invalid_request', `unknown fault mode ${mode}`);
          return;
        }
        state.fault = mode;
      }
      if (f.has('slow_ms')) state.slowMs = Math.max(0, Number.parseInt(f.get('slow_ms'), 10) || 0);
      if (f.has('delay_ms')) state.delayMs = Math.max(0, Number.parseInt(f.get('delay_ms'), 10) || 0);
      if (f.has('token_ttl')) {
        const ttl = Number.parseInt(f.get('token_ttl'), 10);
        if (!(ttl > 0)) { sendOAuthError(ctx, 400, 'invalid_request', 'token_ttl must be > 0'); return; }
        state.tokenTtl = ttl;
      }
      sendJson(ctx, 200, {
        mode: state.fault, slow_ms: state.slowMs, delay_ms: state.delayMs, token_ttl: state.tokenTtl,
      });
      return;
    }
    case 'POST /test/mint': {
      const f = await readForm(ctx);
      const sub = f.get('sub');
      if (!sub) { sendOAuthError(ctx, 400, 'invalid_request', 'sub is required'); return; }
      const alg = f.get('alg') ?? opts.tokenAlg;
      if (!signingKeys[alg]) { sendOAuthError(ctx, 400, 'invalid_request', 'alg must be RS256 or ES256'); return; }
      const auds = f.getAll('aud');
      const expiresIn = f.has('expires_in') ? Number.parseInt(f.get('expires_in'), 10) : state.tokenTtl;
      if (!Number.isSafeInteger(expiresIn)) { sendOAuthError(ctx, 400, 'invalid_request', 'expires_in must be an integer'); return; }
      let extra = {};
      if (f.has('claims')) {
        try {
          extra = JSON.parse(f.get('claims'));
        } catch {
          sendOAuthError(ctx, 400, 'invalid_request', 'claims must be a JSON object'); return;
        }
      }
      const now = Math.floor(Date.now() / 1000);
      const payload = {
        iss: f.get('iss') ?? issuer,
        sub,
        ...(auds.length ? { aud: auds.length === 1 ? auds[0] : auds } : undefined),
        ...(f.get('scope') ? { scope: f.get('scope') } : undefined),
        client_id: f.get('client_id') ?? 'test-user-client',
        iat: now,
        exp: now + expiresIn,
        jti: crypto.randomUUID(),
        ...extra,
      };
      const { key, kid } = signingKeys[alg];
      const accessToken = await new jose.SignJWT(payload)
        .setProtectedHeader({ alg, kid, typ: 'at+jwt' })
        .sign(key);
      sendJson(ctx, 200, { access_token: accessToken, token_type: 'Bearer', expires_in: expiresIn });
      return;
    }
    default:
      sendJson(ctx, 404, { error: 'not_found', error_description: `no test endpoint ${route}` });
  }
}

provider.use(async (ctx, next) => {
  try {
    if (ctx.path.startsWith('/test/')) {
      await testEndpoints(ctx);
      return;
    }
    if (ctx.path === tokenPath) {
      await tokenEndpointFront(ctx, next);
      return;
    }
  } catch (err) {
    if (err.status === 413) { sendOAuthError(ctx, 413, 'invalid_request', err.message); return; }
    console.error('sts: front middleware error', ctx.method, ctx.path, err);
    sendOAuthError(ctx, 500, 'server_error', 'internal error');
    return;
  }
  await next();
});

// ---------------------------------------------------------------------------------------------
// Serve.
// ---------------------------------------------------------------------------------------------
server.on('request', provider.callback());

process.stdout.write(`${JSON.stringify({
  issuer, token_url: tokenUrl, jwks_uri: jwksUri, port,
})}\n`);

const shutdown = () => {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (args['exit-on-stdin-eof']) {
  // The Rust harness holds our stdin open; when the test process dies, we go too.
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
