// Drives Debian's chromium (never a downloaded browser) through the relay's
// web pages, for tests/browser.rs: sign-in by mailed link, the dashboard (key
// made and revoked, machine renamed), a cross-site POST refused, the OAuth
// consent continuing to the client, and that app revoked on the dashboard. Screenshots at desktop and phone
// widths go to SHOTS. Prints one line per step done; exits non-zero on a failure.
import { createRequire } from 'node:module';
import { readFileSync, readdirSync, mkdirSync } from 'node:fs';
import http from 'node:http';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const RELAY = env('RELAY');
const MAIL_DIR = env('MAIL_DIR');
const CODE = env('CODE');
const AUTHORIZE_URL = env('AUTHORIZE_URL');
const SHOTS = env('SHOTS');
const { chromium } = createRequire(`${env('MODULES')}/`)('playwright-core');

mkdirSync(SHOTS, { recursive: true });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const check = (ok, what) => {
  if (!ok) throw new Error(`failed: ${what}`);
  console.log(`ok ${what}`);
};

/** Serves `handler` on a loopback port of its own; resolves to [server, port]. */
function serve(handler) {
  const server = http.createServer(handler);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve([server, server.address().port])));
}

async function mailedLink() {
  for (let i = 0; i < 300; i++) {
    const files = readdirSync(MAIL_DIR).filter((f) => f.endsWith('.txt'));
    if (files.length > 0) {
      const text = readFileSync(`${MAIL_DIR}/${files[0]}`, 'utf8');
      return text.split(/\s+/).find((w) => w.includes('/login/link?t='));
    }
    await sleep(100);
  }
  throw new Error('no sign-in mail arrived');
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const violations = [];
page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) violations.push(m.text()); });

async function shot(name) {
  for (const [width, height, tag] of [[1280, 800, 'desktop'], [390, 844, 'phone']]) {
    await page.setViewportSize({ width, height });
    await page.screenshot({ path: `${SHOTS}/${name}-${tag}.png`, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

try {
  await page.goto(`${RELAY}/login`);
  await shot('01-login');
  await page.fill('#email', 'web@example.com');
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check((await page.textContent('h1')) === 'Check your mail', 'asked for a link');
  await shot('02-check-mail');

  await page.goto(await mailedLink());
  await shot('03-link');
  await Promise.all([page.waitForURL(`${RELAY}/dashboard`), page.click('button:has-text("Sign in")')]);
  check((await page.content()).includes('web@example.com'), 'signed in by the mailed link');
  await shot('04-dashboard-empty');

  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Create a key")')]);
  const key = (await page.textContent('#new-key')).trim();
  check(key.startsWith('aic_'), 'key shown once');
  await shot('05-new-key');
  const ran = await fetch(`${RELAY}/api/v1/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ code: CODE, command: 'echo linked' }),
  });
  check(ran.status === 200, 'the key ran a command and linked the machine');

  await page.goto(`${RELAY}/dashboard`);
  await page.fill('form.rename input[name=alias]', 'box');
  await Promise.all([page.waitForNavigation(), page.click('form.rename button')]);
  check((await page.content()).includes('Machine renamed.'), 'machine renamed');
  check(await page.inputValue('form.rename input[name=alias]') === 'box', 'the new alias is shown');
  await shot('06-dashboard-machine');
  await Promise.all([page.waitForNavigation(), page.click('button:has-text("Revoke")')]);
  check((await page.content()).includes('Key revoked'), 'key revoked');
  await shot('07-key-revoked');

  const [evil, evilPort] = await serve((_, res) => {
    res.setHeader('content-type', 'text/html');
    res.end(`<form method="post" action="${RELAY}/dashboard/keys"><button id="go">Win a prize</button></form>`);
  });
  await page.goto(`http://127.0.0.1:${evilPort}/`);
  const [answer] = await Promise.all([page.waitForNavigation(), page.click('#go')]);
  check(answer.status() === 403 && (await page.content()).includes('sent from another site'), 'cross-site POST refused');
  await shot('08-cross-site-refused');
  evil.close();

  let callback = null;
  const [client, clientPort] = await serve((req, res) => {
    // Chromium asks this server for /favicon.ico too, after the page: only
    // the redirect itself is the callback.
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname !== '/favicon.ico') callback = url;
    res.end('the app got its code');
  });
  const authorize = new URL(AUTHORIZE_URL);
  const redirect = new URL(authorize.searchParams.get('redirect_uri'));
  redirect.port = String(clientPort);
  authorize.searchParams.set('redirect_uri', redirect.toString());
  await page.goto(authorize.toString());
  check((await page.content()).includes('asks to act as'), 'consent page shown');
  await shot('09-consent');
  await page.click('button[value=allow]');
  await page.waitForURL((url) => url.port === String(clientPort));
  check(callback && callback.searchParams.get('code') && callback.searchParams.get('iss') === RELAY
    && callback.searchParams.get('state') === 'xyz', 'consent continued to the client with code, state and iss');
  client.close();

  // The app trades its code (RFC 7636's example verifier matches the
  // challenge), then the account revokes it on the dashboard.
  const traded = await fetch(`${RELAY}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code: callback.searchParams.get('code'), redirect_uri: redirect.toString(),
      client_id: authorize.searchParams.get('client_id'), code_verifier: 'dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk',
    }),
  });
  check(traded.status === 200, 'the app traded its code for tokens');
  const { access_token: access } = await traded.json();
  const mcp = () => fetch(`${RELAY}/mcp/oauth`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream',
      authorization: `Bearer ${access}` },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
  });
  check((await mcp()).status === 200, 'the app acts with its token');
  await page.goto(`${RELAY}/dashboard`);
  check((await page.textContent('#apps')).includes('Browser Test App'), 'the dashboard lists the connected app');
  await shot('10-connected-app');
  await Promise.all([page.waitForNavigation(), page.click('#apps button:has-text("Revoke")')]);
  check((await page.content()).includes('App disconnected')
    && !(await page.textContent('#apps')).includes('Browser Test App'), 'app revoked on the dashboard');
  await shot('11-app-revoked');
  const refused = await mcp();
  check(refused.status === 401 && (refused.headers.get('www-authenticate') || '').startsWith('Bearer resource_metadata='),
    'the revoked token is refused with a sign-in challenge');
  check(violations.length === 0, `no CSP violations ${violations.join(' | ')}`);
} finally {
  await browser.close();
}
