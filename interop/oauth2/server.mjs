// OAuth 2.0 authorization server for the interop suite: panva's oidc-provider
// over HTTPS on 127.0.0.1, with the device grant, authorization code + PKCE,
// refresh tokens with rotation, client credentials, introspection and
// revocation, and opaque access tokens with a short lifetime.
//
// Usage: node server.mjs CONFIG.json; prints `READY <port>` once it listens.
// CONFIG: { port, cert, key, access_ttl, device_interval, admin_key, mailbox_for_app,
//           clients: [oidc-provider client metadata, plus optional "access_ttl"] }
//
// Beside the standard endpoints, two for the tests, guarded by the admin key
// (header `x-admin-key`): GET /_test/stats (request counts per endpoint, and
// introspections per resource server), GET /_test/issued (every token and code
// value issued, for checking that none reaches a log) and POST /_test/revoke?account=ID (revoke every grant of an account, as a user
// removing the app's consent does: its refresh tokens then get invalid_grant).
import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const tls = { cert: fs.readFileSync(config.cert), key: fs.readFileSync(config.key) };

// The mail scopes as the providers name them; offline_access asks for a refresh token.
const SCOPES = [
  'openid',
  'offline_access',
  'email',
  'https://mail.google.com/',
  'https://outlook.office.com/IMAP.AccessAsUser.All',
  'https://outlook.office.com/POP.AccessAsUser.All',
  'https://outlook.office.com/SMTP.Send',
  'https://outlook.office365.com/.default',
];

const accessTtlFor = new Map(config.clients.filter((c) => c.access_ttl).map((c) => [c.client_id, c.access_ttl]));
const clients = config.clients.map(({ access_ttl: _ttl, ...c }) => c);
const accessTtl = (_ctx, token, client) => accessTtlFor.get(client?.clientId ?? token.clientId) ?? config.access_ttl;

// accountId -> Set(grantId), for /_test/revoke; every credential issued, for /_test/issued.
const grantsByAccount = new Map();
const issued = [];
const stats = new Map();

const provider = new Provider(`https://127.0.0.1:${config.port}`, {
  clients,
  scopes: SCOPES,
  claims: { openid: ['sub'], email: ['email'] },
  findAccount: (_ctx, sub) => ({ accountId: sub, claims: () => ({ sub, email: sub }) }),
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { required: () => true },
  // A refresh token whenever the client may use one (not only with offline_access + prompt=consent).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Every refresh rotates: the presented refresh token is consumed and a new one issued.
  rotateRefreshToken: () => true,
  // The login a resource server (Dovecot, the SMTP sink) checks the mailbox name against:
  // the user who consented, or for app-only tokens the mailbox the admin granted.
  extraTokenClaims: async (_ctx, token) => ({
    username: token.accountId ?? config.mailbox_for_app?.[token.clientId],
  }),
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    DeviceCode: 600,
    AuthorizationCode: 60,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Interaction: 600,
    Session: 3600,
    IdToken: 3600,
  },
  // The interaction pages the test's "browser" fills in.
  cookies: { keys: ['interop-cookie-key-0123456789'] },
});

provider.on('grant.saved', (grant) => {
  if (!grant.accountId) return;
  if (!grantsByAccount.has(grant.accountId)) grantsByAccount.set(grant.accountId, new Set());
  grantsByAccount.get(grant.accountId).add(grant.jti);
});

// Opaque tokens and codes: the value is the model's jti.
for (const kind of ['access_token', 'client_credentials', 'refresh_token', 'authorization_code', 'device_code']) {
  provider.on(`${kind}.saved`, (token) => issued.push({ kind, value: token.jti }));
}

provider.on('server_error', (_ctx, err) => console.error('server_error', err));

provider.use(async (ctx, next) => {
  const route = ctx.path;
  stats.set(route, (stats.get(route) ?? 0) + 1);
  if (!route.startsWith('/_test/')) {
    await next();
    if (route === '/token/introspection' && ctx.oidc?.client) {
      const key = `introspection:${ctx.oidc.client.clientId}`;
      stats.set(key, (stats.get(key) ?? 0) + 1);
    }
    // oidc-provider sends no `interval` (clients then wait 5 s); tests poll faster.
    if (route === '/device/auth' && ctx.status === 200 && ctx.body?.device_code) {
      ctx.body = { ...ctx.body, interval: config.device_interval ?? 5 };
    }
    return;
  }
  if (ctx.get('x-admin-key') !== config.admin_key) {
    ctx.status = 403;
    return;
  }
  if (route === '/_test/stats' && ctx.method === 'GET') {
    ctx.body = Object.fromEntries(stats);
  } else if (route === '/_test/issued' && ctx.method === 'GET') {
    ctx.body = issued;
  } else if (route === '/_test/revoke' && ctx.method === 'POST') {
    const account = ctx.query.account;
    const ids = [...(grantsByAccount.get(account) ?? [])];
    await Promise.all(ids.map((id) => Promise.all([
      provider.AccessToken.revokeByGrantId(id),
      provider.RefreshToken.revokeByGrantId(id),
      provider.AuthorizationCode.revokeByGrantId(id),
      provider.DeviceCode.revokeByGrantId(id),
      provider.Grant.adapter.destroy(id),
    ])));
    grantsByAccount.delete(account);
    ctx.body = { revoked_grants: ids.length };
  } else {
    ctx.status = 404;
  }
});

const server = https.createServer(tls, provider.callback());
server.listen(config.port, '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
