// Runs the web app's benchmark page (www/bench.html) in headless Chromium on the default model and
// prints its JSON. Usage: node scripts/bench-web.mjs [--device gpu|cpu] [--reps N] [--train-batch N]
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const bin = process.env.LOCALTUNE_BIN || path.join(root, 'target/release/localtune');
const server = spawn(bin, ['serve', '--port', '0', '--www', path.join(root, 'www')], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolve, reject) => {
  let buf = '';
  server.stdout.on('data', (d) => {
    buf += d;
    const m = buf.match(/http:\/\/127\.0\.0\.1:\d+\//);
    if (m) resolve(m[0]);
  });
  server.on('exit', (c) => reject(new Error(`server exited ${c}`)));
});
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  const q = `model=default&run=1&device=${arg('device', 'gpu')}&reps=${arg('reps', '2')}&train_batch=${arg('train-batch', '16')}`;
  await page.goto(`${url}bench.html?${q}`);
  await page.waitForFunction(() => window.__benchResult, null, { timeout: 60 * 60 * 1000, polling: 1000 });
  console.log(JSON.stringify(await page.evaluate(() => window.__benchResult)));
} finally {
  await browser.close();
  server.kill();
}
