// Development OpenID provider for jupyter-offline-token tests. Loopback only, in memory, never
// for production. Configured by environment variables; see README.md.
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const LOOPBACK_REDIRECT_HOSTS = new Set(['127.0.0.1', 'localhost']);
const MAX_FORM_BYTES = 16 * 1024;

function intFromEnv(name, fallback, { min, max }) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') {
    if (fallback === undefined) fail(`${name} is required (an integer from ${min} to ${max})`);
    return fallback;
  }
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    fail(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

function fail(message) {
  process.stderr.write(`dev-idp: ${message}\n`);
  process.exit(2);
}

const port = intFromEnv('IDP_PORT', undefined, { min: 1, max: 65535 });
const accessTokenTTL = intFromEnv('IDP_ACCESS_TOKEN_TTL', 300, { min: 1, max: 86400 });
const clientId = process.env.IDP_CLIENT_ID || 'jupyter';
const clientSecret = process.env.IDP_CLIENT_SECRET || 'dev-secret-change-me';
const publicClientId = process.env.IDP_PUBLIC_CLIENT_ID || 'jupyter-public';
if (clientId === publicClientId) fail('IDP_CLIENT_ID and IDP_PUBLIC_CLIENT_ID must differ');
const issuer = `http://${HOST}:${port}`;

const ACCOUNTS = {
  alice: { password: 'alice', name: 'Alice Example', email: 'alice@example.org' },
  bob: { password: 'bob', name: 'Bob Example', email: 'bob@example.org' },
};

// Counters read by tests through GET /__dev/stats.
const STAT_NAMES = [
  'authorization_code_grants',
  'refresh_token_grants',
  'refresh_token_grant_errors',
  'revocations',
  'userinfo_calls',
];
const stats = Object.fromEntries(STAT_NAMES.map((name) => [name, 0]));

/** In-memory storage with expiry; plain Maps, so nothing is evicted while a test needs it. */
class DevAdapter {
  static models = new Map();

  constructor(name) {
    this.name = name;
    if (!DevAdapter.models.has(name)) DevAdapter.models.set(name, new Map());
    this.entries = DevAdapter.models.get(name);
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    this.entries.set(id, { payload, expiresAt });
  }

  async find(id) {
    const entry = this.entries.get(id);
    if (entry && entry.expiresAt <= Date.now()) this.entries.delete(id);
    else return entry?.payload;
    return undefined;
  }

  async findBy(field, value) {
    for (const [id, { payload }] of this.entries) {
      if (payload[field] === value) return this.find(id);
    }
    return undefined;
  }

  findByUid(uid) {
    return this.findBy('uid', uid);
  }

  findByUserCode(userCode) {
    return this.findBy('userCode', userCode);
  }

  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    this.entries.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const [id, { payload }] of this.entries) {
      if (payload.grantId === grantId) this.entries.delete(id);
    }
  }

  /** Destroys every grant of an account and every token issued under it; returns the count. */
  static revokeAccount(accountId) {
    const grants = [...(DevAdapter.models.get('Grant') ?? new Map())]
      .filter(([, { payload }]) => payload.accountId === accountId)
      .map(([grantId]) => grantId);
    for (const [name, entries] of DevAdapter.models) {
      for (const [id, { payload }] of entries) {
        if (grants.includes(payload.grantId) || (name === 'Grant' && grants.includes(id))) {
          entries.delete(id);
        }
      }
    }
    return grants.length;
  }
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

const confidentialMetadata = {
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  // Placeholder: any loopback redirect URI is accepted, see redirectUriAllowed below.
  redirect_uris: [`http://${HOST}/oauth/callback`],
};

const provider = new Provider(issuer, {
  adapter: DevAdapter,
  clients: [
    {
      ...confidentialMetadata,
      client_id: clientId,
      client_secret: clientSecret,
      // oidc-provider accepts client_secret_post too for a client registered with either.
      token_endpoint_auth_method: 'client_secret_basic',
    },
    { ...confidentialMetadata, client_id: publicClientId, token_endpoint_auth_method: 'none' },
  ],
  jwks: { keys: [signingKey()] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'profile', 'email', 'offline_access'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  responseTypes: ['code'],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    userinfo: { enabled: true },
  },
  ttl: {
    AccessToken: accessTokenTTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 30 * 24 * 3600,
    Session: 24 * 3600,
    Grant: 30 * 24 * 3600,
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  clientBasedCORS: () => false,
  async findAccount(ctx, sub) {
    const account = ACCOUNTS[sub];
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        const { name, email } = account;
        return { sub, name, preferred_username: sub, email, email_verified: true };
      },
    };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page(
      'Error',
      `<h1>Error</h1><dl id="error">${Object.entries(out)
        .map(([key, value]) => `<dt>${escape(key)}</dt><dd class="${escape(key)}">${escape(value)}</dd>`)
        .join('')}</dl>`,
    );
  },
});

// Tests run the Jupyter server on a new port each time: accept any loopback http redirect URI,
// whatever its port and path, and nothing else.
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  return url.protocol === 'http:' && LOOPBACK_REDIRECT_HOSTS.has(url.hostname)
    && !url.username && !url.password && !url.hash;
};

provider.on('grant.success', (ctx) => {
  const grantType = ctx.oidc.params?.grant_type;
  if (grantType === 'authorization_code') stats.authorization_code_grants += 1;
  if (grantType === 'refresh_token') stats.refresh_token_grants += 1;
});
provider.on('grant.error', (ctx) => {
  if (ctx.oidc?.params?.grant_type === 'refresh_token') stats.refresh_token_grant_errors += 1;
});
provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route === 'userinfo') stats.userinfo_calls += 1;
  if (route === 'revocation' && ctx.status === 200) stats.revocations += 1;
});

function escape(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)} - dev IdP</title></head>
<body>${body}</body></html>
`;
}

function loginPage(uid, { login = '', error } = {}) {
  return page('Sign in', `<h1>Sign in</h1>
${error ? `<p id="error" role="alert">${escape(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${escape(uid)}/login">
  <label>Username <input name="login" value="${escape(login)}" autofocus required></label>
  <label>Password <input name="password" type="password" required></label>
  <button type="submit">Sign in</button>
</form>`);
}

function consentPage(uid, clientId, scopes) {
  const items = scopes.map((scope) => `<li>${escape(scope)}</li>`).join('');
  return page('Consent', `<h1>Allow ${escape(clientId)} access?</h1>
<ul id="scopes">${items}</ul>
<form id="consent" method="post" action="/interaction/${escape(uid)}/confirm">
  <button type="submit" name="decision" value="allow">Allow</button>
  <button type="submit" name="decision" value="deny">Deny</button>
</form>`);
}

function send(res, status, type, body) {
  res.writeHead(status, {
    'Content-Type': type,
    'Cache-Control': 'no-store',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

const sendJson = (res, status, value) => send(res, status, 'application/json', JSON.stringify(value));
const sendHtml = (res, status, html) => send(res, status, 'text/html; charset=utf-8', html);

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) throw Object.assign(new Error('form too large'), { status: 413 });
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function handleInteraction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return sendHtml(res, 400, page('Error', '<p>interaction mismatch</p>'));
  const { prompt, params } = details;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return sendHtml(res, 200, loginPage(uid));
    return sendHtml(res, 200, consentPage(uid, params.client_id, String(params.scope).split(' ')));
  }

  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const account = Object.hasOwn(ACCOUNTS, login) ? ACCOUNTS[login] : undefined;
    if (!account || account.password !== form.get('password')) {
      return sendHtml(res, 200, loginPage(uid, { login, error: 'Invalid username or password.' }));
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
  }

  if (req.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
    const form = await readForm(req);
    if (form.get('decision') !== 'allow') {
      return provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User denied the authorization request',
      }, { mergeWithLastSubmission: false });
    }
    const existing = details.grantId && await provider.Grant.find(details.grantId);
    const grant = existing
      || new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
  }

  return sendHtml(res, 400, page('Error', '<p>unexpected request for this interaction</p>'));
}

function handleDev(req, res, path) {
  if (req.method === 'GET' && path === '/__dev/stats') return sendJson(res, 200, stats);
  if (req.method === 'POST' && path === '/__dev/stats/reset') {
    for (const name of STAT_NAMES) stats[name] = 0;
    return sendJson(res, 200, stats);
  }
  const revoke = /^\/__dev\/accounts\/([^/]+)\/revoke-grants$/.exec(path);
  if (req.method === 'POST' && revoke) {
    let accountId;
    try {
      accountId = decodeURIComponent(revoke[1]);
    } catch {
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'bad account id' });
    }
    return sendJson(res, 200, { account: accountId, revoked_grants: DevAdapter.revokeAccount(accountId) });
  }
  return sendJson(res, 404, { error: 'not_found' });
}

const providerCallback = provider.callback();

const server = createServer(async (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  try {
    if (pathname.startsWith('/__dev/')) return handleDev(req, res, pathname);
    const interaction = /^\/interaction\/([\w-]+)(?:\/(login|confirm))?$/.exec(pathname);
    if (interaction) return await handleInteraction(req, res, interaction[1], interaction[2]);
    return providerCallback(req, res);
  } catch (err) {
    // Expired or unknown interactions land here (SessionNotFound and the like).
    if (res.headersSent) return res.destroy();
    const status = err.status && err.status < 500 ? err.status : 500;
    if (status === 500) process.stderr.write(`dev-idp: ${err.stack}\n`);
    const message = err.error_description ?? err.message;
    return sendHtml(res, status, page('Error', `<p id="error">${escape(message)}</p>`));
  }
});

server.listen(port, HOST, () => {
  process.stdout.write(`READY ${issuer}\n`);
});
server.on('error', (err) => fail(`cannot listen on ${HOST}:${port}: ${err.message}`));

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
