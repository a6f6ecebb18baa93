// The console in Chromium, as an operator uses it: log in, read the overview, find an
// operation by key, retry a FAILED one and watch it complete, retry the rest in bulk by
// filter, cancel a waiting one, log out. Run by ../console.rs, which starts the service and
// leaves FAILED, COMPLETED and waiting payments behind; exits non-zero on the first miss.
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const base = env('ONCELY_BASE');
const apiKey = env('ONCELY_KEY');
const keyId = env('ONCELY_KEY_ID');
const failed = env('ONCELY_FAILED_KEYS').split(',');
const completed = env('ONCELY_COMPLETED_KEYS').split(',');
const waiting = env('ONCELY_WAITING_KEY');
const shots = process.env.ONCELY_SCREENSHOTS;
const TIMEOUT_MS = 30_000;

function step(name) {
  console.log(`-- ${name}`);
}

async function until(what, check, timeout = TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last === true) return;
    } catch (error) {
      last = error.message;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  page.on('console', (line) => {
    // The browser reports every 4xx it was answered as an error; the refusals below are
    // meant.
    if (line.type() === 'error' && !line.text().startsWith('Failed to load resource')) {
      errors.push(line.text());
    }
  });
  const text = async (selector) => ((await page.locator(selector).first().textContent()) || '').trim();
  const count = (state) => text(`[data-test="count-payments-${state}"]`);
  const opState = () => text('.op-head [data-test="state"]');

  step('the console asks for a key and refuses a wrong one');
  await page.goto(`${base}/console`);
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#api-key', `oncely_0000000000000000_${'A'.repeat(43)}`);
  await page.click('#login-form button');
  await until('the refusal', async () => (await text('#login-error')).includes('unknown API key'));

  step('log in');
  await page.fill('#api-key', apiKey);
  await page.click('#login-form button');
  await page.locator('[data-test="overview"]').waitFor();
  const cookie = (await context.cookies()).find((c) => c.name === 'oncely_session');
  assert.ok(cookie, 'a session cookie');
  assert.equal(cookie.httpOnly, true, 'HttpOnly');
  assert.equal(cookie.sameSite, 'Strict', 'SameSite=Strict');
  assert.ok(!cookie.value.includes(apiKey.slice('oncely_'.length + 17)), 'the key secret is not in the cookie');
  assert.equal(await page.evaluate(() => document.cookie.includes('oncely_session')), false,
    'scripts cannot read the cookie');
  assert.match(await text('#who'), new RegExp(`key ${keyId}`));

  step('the overview counts the payments');
  await until('the counts', async () => (await count('FAILED')) === String(failed.length)
    && (await count('COMPLETED')) === String(completed.length)
    && (await count('ACCEPTED')) === '1');
  assert.equal(await text('[data-test="retrying-payments"]'), '1', 'the waiting one is retrying');
  assert.equal(await text('[data-test="stuck-payments"]'), '0');
  if (shots) await page.screenshot({ path: `${shots}/console-overview.png` });

  step('search a key and open its operation');
  await page.selectOption('#search-resource', 'payments');
  await page.fill('#search-key', failed[0]);
  await page.click('#search button');
  await until('the FAILED operation', async () => (await text('[data-test="op-key"]')) === failed[0]
    && (await opState()) === 'FAILED');
  const kinds = await page.locator('[data-test="timeline"] [data-kind]')
    .evaluateAll((nodes) => nodes.map((node) => node.dataset.kind));
  assert.equal(kinds[0], 'ACCEPTED', kinds.join());
  assert.ok(kinds.includes('OUTCOME_RECORDED'), kinds.join());
  assert.match(await text('.fields'), /card_declined/);

  step('retry it and watch it complete');
  await page.click('[data-test="retry"]');
  await until('COMPLETED', async () => (await opState()) === 'COMPLETED');
  await until('the retry in the log, with the key id',
    async () => (await text('[data-kind="OPERATOR_RETRIED"]')).includes(`by ${keyId}`));
  if (shots) await page.screenshot({ path: `${shots}/console-operation.png`, fullPage: true });

  step('filter the FAILED ones and retry them all');
  await page.goto(`${base}/console#/operations?resource=payments&state=FAILED`);
  await until('the FAILED ones listed', async () => (await page
    .locator('[data-test="operations"] tbody tr[data-key]').count()) === failed.length - 1);
  await page.click('[data-test="bulk-retry"]');
  await page.click('[data-test="bulk-confirm"]');
  await until('the bulk retry to finish', async () => (await text('[data-test="bulk-progress"]')).includes('finished'));
  const rest = failed.length - 1;
  assert.match(await text('[data-test="bulk-progress"]'), new RegExp(`${rest} matched, ${rest} done, 0 not done`));
  await page.goto(`${base}/console#/overview`);
  await until('every payment COMPLETED but the waiting one', async () => (await count('FAILED')) === '0'
    && (await count('COMPLETED')) === String(completed.length + failed.length));

  step('cancel the waiting one');
  await page.goto(`${base}/console#/operation/payments/${encodeURIComponent(waiting)}`);
  await until('it waits', async () => (await opState()) === 'ACCEPTED');
  await page.click('[data-test="cancel"]');
  await until('CANCELLED', async () => (await opState()) === 'CANCELLED');
  assert.match(await text('[data-kind="OPERATOR_CANCELLED"]'), new RegExp(`by ${keyId}`));

  step('an action without the CSRF token is refused');
  const refused = await page.evaluate(async (key) => (await fetch(
    `/v1/payments/${encodeURIComponent(key)}/cancel`, { method: 'POST', credentials: 'same-origin' },
  )).status, completed[0]);
  assert.equal(refused, 403);

  step('log out');
  await page.click('#logout');
  await page.locator('#login').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(async () => (await fetch('/console/session')).status), 401);
  assert.deepEqual(errors, [], 'no script errors');
  console.log('console: every step passed');
} finally {
  await browser.close();
}
