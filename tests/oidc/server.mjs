// Tiny real OAuth2 authorization server (oidc-provider) for token-agent's
// end-to-end tests. client_credentials grant only; JWT access tokens (RS256).
// Listens on 127.0.0.1 only; prints exactly one line `LISTENING <port>` on
// stdout once ready. Everything else (warnings, errors) goes to stderr.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

// Installed first, so a signal during startup is not lost (a background
// process in a non-interactive shell starts with SIGINT ignored).
let server;
let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  if (!server?.listening) process.exit(0);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// oidc-provider prints "quick start / development-only" warnings (in-memory
// adapter, devInteractions, and "Unsupported runtime" on Node < 22) through
// console.warn. Drop exactly those; every other warning and all errors pass.
const QUIET = [
  'oidc-provider WARNING: a quick start development-only in-memory adapter',
  'oidc-provider WARNING: a quick start development-only feature devInteractions',
  'oidc-provider WARNING: Unsupported runtime.',
];
const origWarn = console.warn.bind(console);
console.warn = (...args) => {
  const s = String(args[0] ?? '');
  if (QUIET.some((q) => s.includes(q))) return;
  origWarn(...args);
};

// Imported dynamically so the console.warn filter is in place before the
// module's top-level runtime check runs.
const { default: Provider, errors } = await import('oidc-provider');

const env = process.env;
const PORT = Number.parseInt(env.OIDC_PORT ?? '0', 10) || 0;
const CLIENT_ID = env.OIDC_CLIENT_ID || 'e2e-client';
const CLIENT_SECRET = env.OIDC_CLIENT_SECRET || 'e2e-secret';
const AUTH_METHOD = env.OIDC_AUTH_METHOD || 'client_secret_basic';
const RESOURCE = env.OIDC_RESOURCE || 'https://api.e2e.test';
const TTL = Number.parseInt(env.OIDC_TTL ?? '60', 10) || 60;
const SCOPE = 'orders.read orders.write';
// oidc-provider itself accepts client_secret_basic and client_secret_post
// interchangeably for a client registered with either. For the e2e tests we
// want the server to check that the agent used the configured one, so by
// default the /token request is rejected (401 invalid_client) when it uses
// the other method. OIDC_STRICT_AUTH_METHOD=0 turns that off.
const STRICT_AUTH = (env.OIDC_STRICT_AUTH_METHOD ?? '1') !== '0';

// Fresh RSA signing key per process.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `e2e-${randomUUID()}`,
  alg: 'RS256',
  use: 'sig',
};

// Listen first (port 0 = random) so the issuer can carry the real port.
let handler = (_req, res) => { res.statusCode = 503; res.end(); };
server = createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, '127.0.0.1', resolve);
});
const { port } = server.address();

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: AUTH_METHOD,
    scope: SCOPE,
  }],
  scopes: ['openid', 'offline_access', ...SCOPE.split(' ')],
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: SCOPE,
          audience: RESOURCE,
          accessTokenTTL: TTL,
          accessTokenFormat: 'jwt',
        };
      },
    },
  },
});

if (STRICT_AUTH && ['client_secret_basic', 'client_secret_post'].includes(AUTH_METHOD)) {
  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && ctx.path === '/token') {
      const hasBasic = /^basic /i.test(ctx.get('authorization'));
      if (hasBasic !== (AUTH_METHOD === 'client_secret_basic')) {
        ctx.status = 401;
        ctx.set('Cache-Control', 'no-store');
        ctx.body = {
          error: 'invalid_client',
          error_description: `client authentication must use ${AUTH_METHOD}`,
        };
        return;
      }
    }
    await next();
  });
}

provider.on('server_error', (_ctx, err) => console.error('oidc server_error:', err));
if (env.OIDC_DEBUG) {
  provider.on('grant.error', (_ctx, err) => console.error('oidc grant.error:', err));
  provider.on('grant.success', (ctx) => console.error('oidc grant.success:', ctx.oidc.client?.clientId));
}

handler = provider.callback();
process.stdout.write(`LISTENING ${port}\n`);
