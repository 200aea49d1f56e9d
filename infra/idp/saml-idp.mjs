// A real SAML 2.0 identity provider for Portico's tests and demo: the `samlify` package used as
// an IdP (its response builder and its xml-crypto signer), listening on 127.0.0.1.
//
//   SAML_IDP_PORT   port to listen on (0 = any; the chosen one is printed)
//
// Every instance generates its own RSA key and self-signed certificate with `openssl` at start
// (and a second, "rogue" pair it can be told to sign with). On start it prints one line of JSON:
// {"entity_id": …, "port": …, "metadata_url": …}.
//
// Endpoints:
//   GET  /metadata            IdP metadata (?nosigning=1: the same without any KeyDescriptor)
//   POST /sp                  register a service provider by its metadata (XML body)
//   GET  /sso?SAMLRequest=…&RelayState=…&login=alice[&groups=a,b][&<override>=…]
//                             HTTP-Redirect AuthnRequest → an auto-posting HTML form to the ACS
//                             (overrides as for /issue, for tests of wrong responses)
//   POST /issue               JSON → {"SAMLResponse": base64} for IdP-initiated logins and for
//                             tests that need a particular (possibly wrong) response:
//                             {sp_entity_id, login, groups, in_response_to, sign:
//                             "assertion"|"response"|"both", alg: "sha256"|"sha1", key:
//                             "own"|"rogue", audience, destination, recipient, issuer,
//                             not_before_s, not_on_or_after_s, issue_instant_s}
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import { randomUUID } from 'node:crypto';
import * as samlify from 'samlify';
import * as validator from '@authenio/samlify-node-xmllint';

samlify.setSchemaValidator(validator);

const ALGS = {
  sha256: 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',
  sha1: 'http://www.w3.org/2000/09/xmldsig#rsa-sha1',
};

function keyPair(dir, name) {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', `/CN=portico-test-idp-${name}`], { stdio: 'ignore' });
  return { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') };
}

const dir = mkdtempSync(join(tmpdir(), 'saml-idp-'));
const own = keyPair(dir, 'own');
const rogue = keyPair(dir, 'rogue');
rmSync(dir, { recursive: true, force: true });

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.SAML_IDP_PORT || 0), '127.0.0.1', resolve));
const port = server.address().port;
const base = `http://127.0.0.1:${port}`;
const entityId = `${base}/metadata`;
const sps = new Map(); // entity id -> metadata XML

function idp({ key = 'own', alg = 'sha256' } = {}) {
  const pair = key === 'rogue' ? rogue : own;
  return samlify.IdentityProvider({
    entityID: entityId,
    privateKey: pair.key,
    signingCert: own.cert, // the metadata always advertises the instance's own certificate
    requestSignatureAlgorithm: ALGS[alg],
    nameIDFormat: ['urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress'],
    singleSignOnService: [{ Binding: 'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect', Location: `${base}/sso` }],
  });
}

function sp(entity, sign) {
  const xml = sps.get(entity);
  if (!xml) throw new Error(`unknown service provider ${entity}`);
  const wantAssertions = sign === 'assertion' || sign === 'both';
  const metadata = xml.replace(/WantAssertionsSigned="[^"]*"/, '')
    .replace(/<(\w+:)?SPSSODescriptor/, (m) => `${m} WantAssertionsSigned="${wantAssertions}"`);
  return samlify.ServiceProvider({ metadata, wantMessageSigned: sign === 'response' || sign === 'both' });
}

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const iso = (offsetSeconds) => new Date(Date.now() + offsetSeconds * 1000).toISOString();

const TEMPLATE = '<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{ID}" Version="2.0" IssueInstant="{IssueInstant}" Destination="{Destination}"{InResponseToAttr}><saml:Issuer>{Issuer}</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status><saml:Assertion ID="{AssertionID}" Version="2.0" IssueInstant="{IssueInstant}"><saml:Issuer>{Issuer}</saml:Issuer><saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">{NameID}</saml:NameID><saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData NotOnOrAfter="{NotOnOrAfter}" Recipient="{Recipient}"{InResponseToAttr}/></saml:SubjectConfirmation></saml:Subject><saml:Conditions NotBefore="{NotBefore}" NotOnOrAfter="{NotOnOrAfter}"><saml:AudienceRestriction><saml:Audience>{Audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions><saml:AuthnStatement AuthnInstant="{IssueInstant}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement><saml:AttributeStatement><saml:Attribute Name="email"><saml:AttributeValue>{Email}</saml:AttributeValue></saml:Attribute><saml:Attribute Name="groups">{Groups}</saml:Attribute></saml:AttributeStatement></saml:Assertion></samlp:Response>';

async function issue(o) {
  const target = sp(o.sp_entity_id, o.sign || 'assertion');
  const acs = target.entityMeta.getAssertionConsumerService('post');
  const login = o.login || 'alice';
  const groups = (o.groups || []).map((g) => `<saml:AttributeValue>${esc(g)}</saml:AttributeValue>`).join('');
  const id = `_${randomUUID()}`;
  const values = {
    ID: id,
    AssertionID: `_${randomUUID()}`,
    IssueInstant: iso(o.issue_instant_s || 0),
    Destination: o.destination ?? acs,
    Recipient: o.recipient ?? acs,
    Audience: o.audience ?? o.sp_entity_id,
    Issuer: o.issuer ?? entityId,
    NameID: `${login}@example.test`,
    Email: o.email ?? `${login}@example.test`,
    NotBefore: iso(o.not_before_s ?? -5),
    NotOnOrAfter: iso(o.not_on_or_after_s ?? 300),
    InResponseToAttr: o.in_response_to ? ` InResponseTo="${esc(o.in_response_to)}"` : '',
  };
  const { context } = await idp(o).createLoginResponse(target, null, 'post', {}, {
    customTagReplacement: () => ({
      id,
      context: TEMPLATE.replace(/\{(\w+)\}/g, (m, k) => (k === 'Groups' ? groups
        : k === 'InResponseToAttr' ? values[k] : esc(values[k]))),
    }),
  });
  return { SAMLResponse: context, acs };
}

function body(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function handle(req, res) {
  const url = new URL(req.url, base);
  if (req.method === 'GET' && url.pathname === '/metadata') {
    let xml = idp().getMetadata();
    if (url.searchParams.get('nosigning')) xml = xml.replace(/<(\w+:)?KeyDescriptor[\s\S]*?<\/(\w+:)?KeyDescriptor>/g, '');
    res.setHeader('content-type', 'application/samlmetadata+xml');
    return res.end(xml);
  }
  if (req.method === 'POST' && url.pathname === '/sp') {
    const xml = await body(req);
    const entity = samlify.ServiceProvider({ metadata: xml }).entityMeta.getEntityID();
    sps.set(entity, xml);
    return res.end(JSON.stringify({ entity_id: entity }));
  }
  if (req.method === 'GET' && url.pathname === '/sso') {
    const request = inflateRawSync(Buffer.from(url.searchParams.get('SAMLRequest') || '', 'base64')).toString('utf8');
    const issuer = /<(?:\w+:)?Issuer[^>]*>([^<]+)</.exec(request)?.[1];
    const parsed = await idp().parseLoginRequest(sp(issuer, 'assertion'), 'redirect', { query: Object.fromEntries(url.searchParams) });
    const groups = (url.searchParams.get('groups') || '').split(',').filter(Boolean);
    // Tests may ask for a particular (possibly wrong) response to this very request.
    const overrides = {};
    for (const k of ['sign', 'alg', 'key', 'audience', 'destination', 'recipient', 'issuer']) {
      if (url.searchParams.has(k)) overrides[k] = url.searchParams.get(k);
    }
    for (const k of ['not_before_s', 'not_on_or_after_s', 'issue_instant_s']) {
      if (url.searchParams.has(k)) overrides[k] = Number(url.searchParams.get(k));
    }
    const { SAMLResponse, acs } = await issue({
      ...overrides,
      sp_entity_id: issuer, login: url.searchParams.get('login') || 'alice', groups,
      in_response_to: parsed.extract.request.id,
    });
    res.setHeader('content-type', 'text/html; charset=utf-8');
    const relay = url.searchParams.get('RelayState');
    return res.end(`<!doctype html><title>Test SAML IdP</title><body onload="document.forms[0].submit()">
<form method="post" action="${esc(acs)}"><input type="hidden" name="SAMLResponse" value="${esc(SAMLResponse)}">${
  relay ? `<input type="hidden" name="RelayState" value="${esc(relay)}">` : ''}<button>Continue</button></form>`);
  }
  if (req.method === 'POST' && url.pathname === '/issue') {
    const out = await issue(JSON.parse(await body(req)));
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify(out));
  }
  res.statusCode = 404;
  res.end('not found');
}

server.on('request', (req, res) => {
  handle(req, res).catch((err) => {
    res.statusCode = 400;
    res.end(String(err && err.message));
  });
});
console.log(JSON.stringify({ entity_id: entityId, port, metadata_url: entityId }));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
