// A real OpenID Provider for Portico's tests and demo: the certified `oidc-provider` package,
// configured from environment variables, listening on 127.0.0.1.
//
//   OIDC_IDP_PORT     port to listen on (0 = any; the chosen one is printed)
//   OIDC_IDP_ISSUER   issuer (default http://127.0.0.1:<port>)
//   OIDC_IDP_CLIENTS  JSON array of {client_id, client_secret, redirect_uris}
//   OIDC_IDP_KID      key id of the signing key (default: random). The key itself is always
//                     freshly generated: oidc-provider's built-in development key is the same in
//                     every installation and would make key-separation tests meaningless.
//   OIDC_IDP_ALG      RS256 (default), PS256 or ES256; HS256 signs ID tokens with the client
//                     secret (for tests that relying parties refuse it)
//
// On start it prints one line of JSON: {"issuer": …, "port": …, "kid": …}.
//
// Sign-in is not a password form: GET /interaction/<uid>?login=<account> finishes the login as
// <account> (a browser without `login` gets a one-field form). Claims: sub = account,
// email = <account>@<OIDC_IDP_EMAIL_DOMAIN or example.test>, groups = as last set by
// POST /admin/groups {"account": …, "groups": […]} (directory changes between sign-ins).
import { randomBytes, generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_IDP_PORT || 0);
const alg = process.env.OIDC_IDP_ALG || 'RS256';
const kid = process.env.OIDC_IDP_KID || randomBytes(8).toString('hex');
const emailDomain = process.env.OIDC_IDP_EMAIL_DOMAIN || 'example.test';
const clients = JSON.parse(process.env.OIDC_IDP_CLIENTS || '[]').map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  redirect_uris: c.redirect_uris,
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: alg,
}));

function signingKey() {
  const keyAlg = alg === 'HS256' ? 'RS256' : alg;
  const { privateKey } = keyAlg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: keyAlg, use: 'sig' };
}

const groupsOf = new Map();
const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const actualPort = server.address().port;
const issuer = process.env.OIDC_IDP_ISSUER || `http://127.0.0.1:${actualPort}`;

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey()] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  pkce: { required: () => true },
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'HS256'] },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@${emailDomain}`, email_verified: true, groups: groupsOf.get(id) || [] };
      },
    };
  },
});
provider.proxy = false;

async function interaction(req, res, uid) {
  const url = new URL(req.url, issuer);
  const login = url.searchParams.get('login');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (details.prompt.name === 'login') {
    if (!login) {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      res.end(`<!doctype html><title>Test IdP</title><form method="get">
        <label>Account <input name="login" value="alice"></label><button>Sign in</button></form>`);
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  // consent: grant what the client asked for
  const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  grant.addOIDCScope(String(details.params.scope));
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.method === 'POST' && req.url === '/admin/groups') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const { account, groups } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      groupsOf.set(account, groups);
      res.end('{}');
    });
    return;
  }
  const match = /^\/interaction\/([^/?]+)/.exec(req.url);
  if (match) {
    interaction(req, res, match[1]).catch((err) => {
      res.statusCode = 400;
      res.end(String(err && err.message));
    });
    return;
  }
  callback(req, res);
});

console.log(JSON.stringify({ issuer, port: actualPort, kid }));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
