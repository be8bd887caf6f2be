#!/usr/bin/env node
// A real OpenID Connect identity provider for wsgate's tests, on loopback only.
//
// It wraps panva's oidc-provider (a certified OP) so that the Python providers are
// tested against a real implementation, not a mock of our own understanding:
// discovery, JWKS (RS256, a fresh key each start, so a restart is a key rotation),
// authorization code with PKCE S256 required, nonce, userinfo.
// What it adds: a plain HTML login form (no JavaScript, no password: type a login),
// automatic consent, users and clients from a JSON file, and a test-only control
// endpoint to change a user at runtime.
//
// usage: node idp.js --config idp.json --port 4567 [--host 127.0.0.1]
// idp.json: {"users": [{"login": "alice", "sub": "1001", "name": "...", "email": "...",
//             "email_verified": true, "picture": "...", "groups": ["acme"], "claims": {}}],
//            "clients": [{"client_id": "...", "client_secret": "...", "redirect_uris": ["..."]}],
//            "options": {"auth_methods": ["client_secret_post"], "conform_id_token_claims": true,
//                        "extra_claims": ["roles"], "id_token_ttl": 3600}}
// Prints {"event":"listening","port":N,"issuer":"http://127.0.0.1:N"} on stdout when ready.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    config: { type: 'string' },
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
  },
});
if (!args.config || !args.port) {
  console.error('usage: node idp.js --config FILE --port N [--host 127.0.0.1]');
  process.exit(2);
}

const config = JSON.parse(readFileSync(args.config, 'utf8'));
const options = config.options ?? {};
const port = Number(args.port);
const issuer = `http://${args.host}:${port}`;

// login -> user; `sub` defaults to the login.
const users = new Map();
for (const u of config.users ?? []) {
  users.set(u.login, { groups: [], email_verified: false, claims: {}, ...u, sub: String(u.sub ?? u.login) });
}
const bySub = (sub) => [...users.values()].find((u) => u.sub === sub);

const authMethods = options.auth_methods ?? ['client_secret_basic', 'client_secret_post'];
const clients = (config.clients ?? []).map((c) => ({
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: authMethods[0],
  ...c,
}));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `k-${randomBytes(6).toString('hex')}`,
  use: 'sig',
  alg: 'RS256',
};

const provider = new Provider(issuer, {
  clients,
  clientAuthMethods: authMethods,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'profile', 'email'],
  // `groups` comes with the default scopes `openid profile email`, as on GitLab; under `profile`
  // so that conform_id_token_claims leaves it out of the ID token (userinfo only, as on GitLab).
  claims: {
    openid: ['sub', ...(options.extra_claims ?? [])],
    profile: ['name', 'preferred_username', 'nickname', 'picture', 'groups'],
    email: ['email', 'email_verified'],
  },
  // false: the ID token carries the scopes' claims too (as GitLab's does); true: only userinfo has them.
  conformIdTokenClaims: Boolean(options.conform_id_token_claims),
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false }, userinfo: { enabled: true } },
  ttl: { IdToken: options.id_token_ttl ?? 3600, AccessToken: 3600, AuthorizationCode: 60 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    if (!bySub(sub)) return undefined;
    return {
      accountId: sub,
      // Read the user on every call, so /_control changes show in userinfo at once.
      async claims() {
        const u = bySub(sub);
        if (!u) return { sub };
        // `claims` come last so a test can override a standard claim (never `sub`).
        return {
          preferred_username: u.login,
          nickname: u.login,
          name: u.name ?? u.login,
          email: u.email ?? `${u.login}@example.test`,
          email_verified: u.email_verified,
          picture: u.picture ?? `http://${args.host}:${port}/avatars/${encodeURIComponent(u.login)}.png`,
          groups: u.groups,
          ...u.claims,
          sub: u.sub,
        };
      },
    };
  },
  // Automatic consent: grant every requested scope to every client.
  async loadExistingGrant(ctx) {
    const { accountId } = ctx.oidc.session;
    if (!accountId) return undefined;
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
    grant ??= new ctx.oidc.provider.Grant({ accountId, clientId: ctx.oidc.client.clientId });
    grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
    await grant.save();
    return grant;
  },
});

for (const event of ['server_error', 'grant.error', 'authorization.error', 'userinfo.error']) {
  provider.on(event, (ctx, err) => {
    console.error(JSON.stringify({ event, error: err.name, message: err.message, detail: err.error_description }));
  });
}

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, message = '') {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head>
<body>
<h1>Sign in to the test IdP</h1>
${message ? `<p id="error">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>Login <input name="login" autocomplete="username" autofocus></label>
<button type="submit">Sign in</button>
</form>
</body></html>`;
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch\n');
  if (req.method === 'GET' && !action) {
    return send(res, 200, 'text/html; charset=utf-8', loginPage(uid));
  }
  if (req.method === 'POST' && action === 'login') {
    const login = new URLSearchParams(await readBody(req)).get('login') ?? '';
    const user = users.get(login.trim());
    if (!user) return send(res, 403, 'text/html; charset=utf-8', loginPage(uid, `no such user: ${login}`));
    return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
  }
  return send(res, 405, 'text/plain', 'method not allowed\n');
}

// POST /_control/users/<login> {"groups": [...], ...}: changes a user at runtime (revocation tests).
async function control(req, res, login) {
  const user = users.get(login);
  if (req.method === 'GET' && user) return send(res, 200, 'application/json', JSON.stringify(user));
  if (req.method !== 'POST') return send(res, 405, 'text/plain', 'method not allowed\n');
  if (!user) return send(res, 404, 'application/json', '{"error":"no such user"}');
  const patch = JSON.parse(await readBody(req));
  for (const key of ['groups', 'name', 'email', 'email_verified', 'picture', 'claims']) {
    if (key in patch) user[key] = patch[key];
  }
  return send(res, 200, 'application/json', JSON.stringify(user));
}

const oidc = provider.callback();
const server = http.createServer(async (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  try {
    let m = pathname.match(/^\/interaction\/([^/]+)(?:\/(login))?$/);
    if (m) return await interaction(req, res, m[1], m[2]);
    m = pathname.match(/^\/_control\/users\/([^/]+)$/);
    if (m) return await control(req, res, decodeURIComponent(m[1]));
    return oidc(req, res);
  } catch (err) {
    console.error(JSON.stringify({ event: 'request_error', path: pathname, message: String(err?.message ?? err) }));
    if (!res.headersSent) send(res, 400, 'text/plain', `${err?.name ?? 'Error'}: ${err?.message ?? err}\n`);
    else res.end();
  }
});

server.on('error', (err) => {
  console.error(JSON.stringify({ event: 'listen_error', code: err.code, message: err.message }));
  process.exit(err.code === 'EADDRINUSE' ? 3 : 1);
});
server.listen(port, args.host, () => {
  console.log(JSON.stringify({ event: 'listening', port, issuer }));
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
