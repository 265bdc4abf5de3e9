// Test-only OpenID Provider that looks like an authentik OAuth2/proxy provider.
//
// Usage: node tests/idp/idp.mjs CONFIG.json
//
// Owns: discovery, JWKS (an RSA key generated at start), authorization code + PKCE with
// devInteractions login/consent forms (the login password is checked), userinfo,
// introspection, RP-initiated logout, authentik's client_credentials grant with
// username + app password, the password grant, and test-only routes under /_test/.
// Listens on config.host (default 127.0.0.1) and prints `IDP READY <issuer>` once listening.
// Never prints passwords or tokens.

import { createHash, generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import * as querystring from 'node:querystring';

import { SignJWT } from 'jose';
import Provider, { errors } from 'oidc-provider';

// ---------------------------------------------------------------------------------------
// Configuration

function fail(message) {
  process.stderr.write(`idp: ${message}\n`);
  process.exit(2);
}

if (process.argv.length !== 3) fail('usage: node idp.mjs CONFIG.json');

let config;
try {
  config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
} catch (err) {
  fail(`cannot read config: ${err.message}`);
}

const port = Number(config.port);
if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('config.port must be a TCP port');
const issuer = config.issuer || `http://127.0.0.1:${port}`;
// authentik's default access token validity is 5 minutes; id_token lifetime is separate
// so browser sessions in long tests do not expire under them.
const accessTokenTtl = Number(config.access_token_ttl ?? 300);
const idTokenTtl = Number(config.id_token_ttl ?? 3600);

const groups = config.groups ?? {};
const users = new Map();
for (const u of config.users ?? []) {
  if (!u.username) fail('every user needs a username');
  for (const g of u.groups ?? []) {
    if (!(g in groups)) fail(`user ${u.username}: unknown group ${g}`);
  }
  users.set(u.username, {
    username: u.username,
    password: u.password ?? '',
    email: u.email ?? '',
    name: u.name ?? u.username,
    groups: [...(u.groups ?? [])],
    attributes: u.attributes ?? {},
    app_passwords: [...(u.app_passwords ?? [])],
    entitlements: [...(u.entitlements ?? [])],
  });
}

const clientConfigs = new Map();
const clients = (config.clients ?? []).map((c) => {
  if (!c.client_id || !c.client_secret) fail('every client needs client_id and client_secret');
  clientConfigs.set(c.client_id, c);
  return {
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris ?? [],
    post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_post',
    id_token_signed_response_alg: c.id_token_signed_response_alg ?? 'RS256',
    grant_types: ['authorization_code', 'client_credentials', 'password'],
    response_types: ['code'],
  };
});

// ---------------------------------------------------------------------------------------
// Identity claims, shaped like authentik's scope mappings.

const SCOPE_CLAIMS = {
  // `sid` only in id_tokens of the browser sign-in (see findAccount).
  openid: ['sub', 'sid'],
  profile: ['name', 'given_name', 'preferred_username', 'nickname', 'groups', 'entitlements'],
  email: ['email', 'email_verified'],
  ak_proxy: ['ak_proxy'],
};
const SUPPORTED_SCOPES = ['openid', 'profile', 'email', 'ak_proxy', 'offline_access'];

function mergedAttributes(user) {
  // authentik: the user's groups' attributes (groups in name order), then the user's own,
  // a shallow merge.
  const merged = {};
  for (const g of [...user.groups].sort()) {
    Object.assign(merged, groups[g]?.attributes ?? {});
  }
  Object.assign(merged, user.attributes);
  return merged;
}

function allClaims(user) {
  return {
    sub: user.username,
    name: user.name,
    given_name: user.name,
    preferred_username: user.username,
    nickname: user.username,
    groups: [...user.groups],
    entitlements: [...user.entitlements],
    email: user.email,
    email_verified: true,
    ak_proxy: { user_attributes: mergedAttributes(user) },
  };
}

function claimsForScopes(user, scopes) {
  const all = allClaims(user);
  const out = { sub: all.sub };
  for (const scope of scopes) {
    for (const claim of SCOPE_CLAIMS[scope] ?? []) {
      if (all[claim] !== undefined) out[claim] = all[claim];
    }
  }
  return out;
}

function scopeList(scope) {
  return String(scope ?? '').split(' ').filter(Boolean);
}

function safeEqual(a, b) {
  // Compare digests so the comparison time does not depend on where (or whether) the
  // strings differ, nor on their lengths.
  const da = createHash('sha256').update(String(a), 'utf8').digest();
  const db = createHash('sha256').update(String(b), 'utf8').digest();
  return timingSafeEqual(da, db);
}

function matchesAny(candidates, presented) {
  let ok = false;
  for (const c of candidates) ok = safeEqual(c, presented) || ok;
  return ok;
}

// ---------------------------------------------------------------------------------------
// A start that hangs, for the test of tests.stack.idp's start: while the file named by
// config.hang_once_file exists, a start deletes it and blocks its only thread for good,
// as the two hangs seen in full-suite runs did (after the runtime warning, before the
// SIGTERM handler below is installed).

if (config.hang_once_file && existsSync(config.hang_once_file)) {
  unlinkSync(config.hang_once_file);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

// ---------------------------------------------------------------------------------------
// The IdP sessions (sids) each user's id_tokens named, in order, for GET /_test/sids.

const sidsByUser = new Map();

function rememberSid(username, sid) {
  const known = sidsByUser.get(username) ?? [];
  if (!known.includes(sid)) known.push(sid);
  sidsByUser.set(username, known.slice(-100));
}

// ---------------------------------------------------------------------------------------
// Keys

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const kid = randomBytes(8).toString('hex');
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };

// ---------------------------------------------------------------------------------------
// Provider

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingJwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: SCOPE_CLAIMS,
  scopes: SUPPORTED_SCOPES,
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'HS256'] },
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: idTokenTtl,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // authentik's default invalidation flow signs out without asking; a browser with JS
      // submits the confirmation form at once (the "Yes" button works without JS).
      async logoutSource(ctx, form) {
        ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign out</title></head>
<body><h1>Sign out</h1>${form}
<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<script>document.querySelector('button[name=logout]').click()</script></body></html>`;
      },
    },
  },
  async findAccount(ctx, id, token) {
    const user = users.get(id);
    if (!user) return undefined;
    // authentik's id_token `sid`: a hash of its session's key, one per browser session
    // at the IdP and the same for every application signed in from it (SESSION_END
    // names it). Here: a hash of oidc-provider's session uid, which the authorization
    // code carries to the token endpoint.
    const sessionUid = token?.sessionUid ?? ctx?.oidc?.session?.uid;
    const sid = sessionUid
      ? createHash('sha256').update(`sid\0${sessionUid}`, 'utf8').digest('hex')
      : undefined;
    return {
      accountId: id,
      async claims(use) {
        const claims = allClaims(user);
        if (sid && use === 'id_token') {
          claims.sid = sid;
          rememberSid(id, sid);
        }
        return claims;
      },
    };
  },
  async extraTokenClaims(ctx, token) {
    // Introspection of an access token carries the identity, like authentik's does.
    if (!token.accountId) return undefined;
    const user = users.get(token.accountId);
    if (!user) return undefined;
    const claims = claimsForScopes(user, scopeList(token.scope));
    delete claims.sub;
    return { ...claims, username: user.username, preferred_username: user.username };
  },
  async renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
});
provider.proxy = false;

// ---------------------------------------------------------------------------------------
// Tokens issued outside oidc-provider's own flows

// authentik signs a proxy provider's JWT access tokens as its id_tokens: HS256 with the
// client secret when the provider has no signing key. A client registered with an HMAC
// id_token alg gets HMAC access tokens too; the others get RS256 with the JWKS key.
const ACCESS_TOKEN_ALGS = new Set(['RS256', 'HS256', 'HS384', 'HS512']);

function accessTokenAlg(client) {
  return clientConfigs.get(client.clientId)?.id_token_signed_response_alg ?? 'RS256';
}

function signingFor(client, alg) {
  if (alg.startsWith('HS')) {
    return { header: { alg, typ: 'JWT' }, key: new TextEncoder().encode(client.clientSecret) };
  }
  return { header: { alg, kid, typ: 'JWT' }, key: privateKey };
}

// JWT access token -> the opaque AccessToken saved with it, so introspection accepts the
// JWT too (oidc-provider refuses to introspect structured tokens itself).
const jwtToOpaque = new Map();

function rememberJwt(jwt, opaque, exp) {
  const now = Math.floor(Date.now() / 1000);
  for (const [k, v] of jwtToOpaque) if (v.exp < now) jwtToOpaque.delete(k);
  jwtToOpaque.set(jwt, { opaque, exp });
}

async function issueAccessTokens(client, user, scopes, gty, alg = accessTokenAlg(client)) {
  const scope = scopes.join(' ');
  // A Grant makes the opaque token usable at userinfo as well as at introspection.
  const grant = new provider.Grant({ accountId: user.username, clientId: client.clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const at = new provider.AccessToken({
    accountId: user.username,
    client,
    grantId,
    scope,
    gty,
    expiresIn: accessTokenTtl,
  });
  const opaque = await at.save();
  const now = Math.floor(Date.now() / 1000);
  const exp = now + accessTokenTtl;
  const signing = signingFor(client, alg);
  const jwt = await new SignJWT({
    ...claimsForScopes(user, scopes),
    scope,
    azp: client.clientId,
    client_id: client.clientId,
  })
    .setProtectedHeader(signing.header)
    .setIssuer(issuer)
    .setAudience(client.clientId)
    .setSubject(user.username)
    .setIssuedAt(now)
    .setExpirationTime(exp)
    .setJti(randomBytes(16).toString('hex'))
    .sign(signing.key);
  rememberJwt(jwt, opaque, exp);
  return { opaque, jwt, exp };
}

function grantScopes(requested) {
  // authentik always answers these grants with an id_token; unknown scopes are ignored.
  const scopes = scopeList(requested).filter((s) => SUPPORTED_SCOPES.includes(s));
  if (!scopes.includes('openid')) scopes.unshift('openid');
  return [...new Set(scopes)];
}

function userCredentialGrant(kind) {
  return async function handler(ctx) {
    const { params, client } = ctx.oidc;
    if (!params.username || !params.password) {
      throw new errors.InvalidRequest('username and password are required');
    }
    const user = users.get(params.username);
    const candidates = user
      ? (kind === 'app_password' ? user.app_passwords : [user.password])
      : ['\u0000no-such-user'];
    const ok = matchesAny(candidates, params.password);
    if (!user || !ok) {
      throw new errors.InvalidGrant('invalid username or password');
    }
    const scopes = grantScopes(params.scope);
    const { jwt } = await issueAccessTokens(
      client,
      user,
      scopes,
      kind === 'app_password' ? 'client_credentials' : 'password',
    );
    const idToken = new provider.IdToken(allClaims(user), { ctx, client });
    idToken.scope = scopes.join(' ');
    idToken.set('at_hash', jwt);
    ctx.body = {
      access_token: jwt,
      token_type: 'Bearer',
      expires_in: accessTokenTtl,
      scope: scopes.join(' '),
      id_token: await idToken.issue({ use: 'idtoken' }),
    };
  };
}

// Registered after construction: replaces the built-in client_credentials grant.
provider.registerGrantType(
  'client_credentials',
  userCredentialGrant('app_password'),
  ['scope', 'username', 'password'],
);
provider.registerGrantType('password', userCredentialGrant('password'), ['scope', 'username', 'password']);

// ---------------------------------------------------------------------------------------
// Middleware: request counting, delays, body rewriting, test routes

const ENDPOINTS = [
  ['discovery', (p) => p === '/.well-known/openid-configuration'],
  ['introspection', (p) => p === '/token/introspection'],
  ['revocation', (p) => p === '/token/revocation'],
  ['token', (p) => p === '/token'],
  ['userinfo', (p) => p === '/me'],
  ['jwks', (p) => p === '/jwks'],
  ['authorization', (p) => p === '/auth' || p.startsWith('/auth/')],
  ['end_session', (p) => p === '/session/end' || p.startsWith('/session/end/')],
  ['interaction', (p) => p.startsWith('/interaction/')],
];

function zeroStats() {
  return Object.fromEntries(ENDPOINTS.map(([name]) => [name, 0]));
}
let stats = zeroStats();

function bump(key) {
  stats[key] = (stats[key] ?? 0) + 1;
}

async function readRawBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function looksLikeJwt(value) {
  return typeof value === 'string' && /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(value);
}

// oidc-provider lets a client_secret_basic client send its secret in the body and vice
// versa; authentik and stricter IdPs do not, and tests must catch a client that ignores
// its configured `client_auth`.
const CLIENT_AUTH_PATHS = new Set(['/token', '/token/introspection', '/token/revocation']);

function clientAuthMismatch(ctx, form) {
  const header = ctx.get('authorization');
  const usesBasic = /^basic /i.test(header);
  let clientId = typeof form.client_id === 'string' ? form.client_id : undefined;
  if (usesBasic) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i > 0) {
      try {
        clientId = decodeURIComponent(decoded.slice(0, i).replace(/\+/g, '%20'));
      } catch {
        return undefined; // malformed: oidc-provider answers it
      }
    }
  }
  if (!clientConfigs.has(clientId)) return undefined; // unknown: oidc-provider answers it
  const registered = clientConfigs.get(clientId).token_endpoint_auth_method ?? 'client_secret_post';
  if (registered === 'client_secret_basic' && form.client_secret !== undefined) {
    return 'this client must authenticate with HTTP Basic (client_secret_basic)';
  }
  if (registered === 'client_secret_post' && usesBasic) {
    return 'this client must send client_secret in the body (client_secret_post)';
  }
  return undefined;
}

provider.use(async function countRequests(ctx, next) {
  const endpoint = ENDPOINTS.find(([, match]) => match(ctx.path));
  if (endpoint) bump(endpoint[0]);
  await next();
  if (endpoint?.[0] === 'token' && ctx.oidc?.params?.grant_type) {
    bump(`token:${ctx.oidc.params.grant_type}`);
  }
});

// Per-endpoint delays (milliseconds), set by POST /_test/delay: a slow IdP, endpoint by
// endpoint, for the tests of ext-authz's deadline. Test routes are never delayed.
let delays = {};

provider.use(async function delayEndpoints(ctx, next) {
  const endpoint = ENDPOINTS.find(([, match]) => match(ctx.path));
  const ms = endpoint ? delays[endpoint[0]] : undefined;
  if (ms) await new Promise((resolve) => setTimeout(resolve, ms));
  await next();
});

provider.use(async function rewriteBodies(ctx, next) {
  // userinfo: a JWT access token issued here stands for its opaque twin.
  const auth = ctx.get('authorization');
  if (ctx.path === '/me' && /^bearer /i.test(auth)) {
    const known = jwtToOpaque.get(auth.slice(7).trim());
    if (known) ctx.req.headers.authorization = `Bearer ${known.opaque}`;
  }

  // oidc-provider reads the body itself; when this middleware has read it first, it uses
  // ctx.req.body instead (the raw string, so parsing stays identical).
  const isForm = ctx.method === 'POST' && ctx.is('application/x-www-form-urlencoded');
  if (isForm && CLIENT_AUTH_PATHS.has(ctx.path)) {
    const raw = await readRawBody(ctx.req);
    const form = querystring.parse(raw);
    const refused = clientAuthMismatch(ctx, form);
    if (refused) {
      ctx.status = 401;
      ctx.body = { error: 'invalid_client', error_description: refused };
      return;
    }
    if (ctx.path !== '/token/introspection') {
      ctx.req.body = raw;
    } else if (looksLikeJwt(form.token)) {
      const known = jwtToOpaque.get(form.token);
      // A JWT this IdP did not issue is simply not active (RFC 7662), after client auth.
      form.token = known ? known.opaque : `unknown-${randomBytes(16).toString('hex')}`;
      ctx.req.body = querystring.stringify(form);
    } else {
      ctx.req.body = raw;
    }
  } else if (isForm && /^\/interaction\/[^/]+$/.test(ctx.path)) {
    // devInteractions accepts any login; check the password like a real IdP would.
    const raw = await readRawBody(ctx.req);
    const form = querystring.parse(raw);
    if (form.prompt === 'login') {
      const user = typeof form.login === 'string' ? users.get(form.login) : undefined;
      const ok = matchesAny([user ? user.password : '\u0000no-such-user'], String(form.password ?? ''));
      if (!user || !ok) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = `<!DOCTYPE html><html><body><h1>Invalid username or password</h1>
<p><a href="${ctx.path}">Try again</a></p></body></html>`;
        return;
      }
    }
    ctx.req.body = raw;
  }
  await next();
});

provider.use(async function testRoutes(ctx, next) {
  if (!ctx.path.startsWith('/_test/')) {
    await next();
    return;
  }
  ctx.set('Cache-Control', 'no-store');
  if (ctx.method === 'GET' && ctx.path === '/_test/stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.method === 'GET' && ctx.path === '/_test/sids') {
    ctx.body = { sids: sidsByUser.get(String(ctx.query.username ?? '')) ?? [] };
    return;
  }
  if (ctx.path === '/_test/delay' && ctx.method === 'GET') {
    ctx.body = delays;
    return;
  }
  if (ctx.path === '/_test/delay' && ctx.method === 'POST') {
    // The whole mapping is replaced: {"discovery": 2500, "token": 2500}; {} clears it.
    let body;
    try {
      body = JSON.parse((await readRawBody(ctx.req)) || '{}');
    } catch {
      body = undefined;
    }
    const names = new Set(ENDPOINTS.map(([name]) => name));
    const valid = body && typeof body === 'object' && !Array.isArray(body)
      && Object.entries(body).every(([k, v]) => names.has(k) && Number.isInteger(v) && v >= 0 && v <= 60000);
    if (!valid) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: `{endpoint: ms} with endpoints ${[...names].join(', ')}` };
      return;
    }
    delays = body;
    ctx.body = delays;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/_test/reset') {
    stats = zeroStats();
    ctx.body = stats;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/_test/mint') {
    let body;
    try {
      body = JSON.parse((await readRawBody(ctx.req)) || '{}');
    } catch {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'body must be JSON' };
      return;
    }
    const client = body.client_id ? await provider.Client.find(String(body.client_id)) : undefined;
    const user = users.get(String(body.username));
    const format = body.format ?? 'opaque';
    // `alg`: the JWT's signature, by default the client's (see accessTokenAlg).
    const alg = body.alg ?? (client ? accessTokenAlg(client) : 'RS256');
    if (!client || !user || !['opaque', 'jwt'].includes(format) || !ACCESS_TOKEN_ALGS.has(alg)) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'unknown client_id, username, format or alg' };
      return;
    }
    const scopes = grantScopes(body.scope ?? 'openid profile email ak_proxy');
    const { opaque, jwt } = await issueAccessTokens(client, user, scopes, 'test_mint', alg);
    ctx.body = { access_token: format === 'jwt' ? jwt : opaque, token_type: 'Bearer', expires_in: accessTokenTtl };
    return;
  }
  ctx.status = 404;
  ctx.body = { error: 'not_found' };
});

// ---------------------------------------------------------------------------------------
// Serve

// Tests bind loopback only; a container (docker-compose) sets "host": "0.0.0.0".
const listenHost = config.host || '127.0.0.1';
const server = provider.listen(port, listenHost, () => {
  process.stdout.write(`IDP READY ${issuer}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
