// End-to-end test of the web app in headless Chromium (Debian's package, driven by playwright-core):
// load a tiny model, load data (a bad file first), train a few steps and check the loss falls,
// evaluate, save an adapter, train and save a second, merge the two (each input and the merged one
// evaluated), then transfer from saved adapters (two Pfeiffer bottleneck sources trained and saved, a
// third added from a downloaded zip; ranked by LogME/LEEP/NCE, ScaLearn trained over them, evaluated and
// saved, a distillation run with unlabelled texts), reload and find them, download them and parse their
// files — and fail on any request that leaves the origin or on any request at all while data is
// loaded, training, evaluating, saving, merging, ranking, training ScaLearn or distilling.
// Screenshots go to test-output/browser/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = path.join(root, 'test-output/browser');
const bin =
  process.env.LOCALTUNE_BIN ||
  [path.join(root, 'target/release/localtune'), path.join(root, 'target/debug/localtune')].find((p) => fs.existsSync(p));
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

let server;
let url;
let browser;

function startServer() {
  return new Promise((resolve, reject) => {
    const args = ['serve', '--port', '0', '--tiny', '--www', path.join(root, 'www')];
    const model = path.join(root, '.cache/models/all-MiniLM-L6-v2');
    if (!fs.existsSync(path.join(model, 'model.safetensors'))) args.push('--no-default-model');
    else args.push('--model', model);
    server = spawn(bin, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    server.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(/http:\/\/127\.0\.0\.1:\d+\//);
      if (m) resolve(m[0]);
    });
    server.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
    setTimeout(() => reject(new Error('the server did not start')), 20000);
  });
}

before(async () => {
  assert.ok(bin, 'build the native tool first (cargo build)');
  assert.ok(fs.existsSync(path.join(root, 'www/pkg/localtune_bg.wasm')), 'build the wasm first (scripts/build-wasm.sh)');
  fs.mkdirSync(out, { recursive: true });
  url = await startServer();
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--no-sandbox',
      '--enable-unsafe-webgpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-features=Translate,OptimizationHints,MediaRouter',
    ],
  });
});

after(async () => {
  await browser?.close();
  server?.kill();
});

// The toy task the tiny model's vocabulary knows.
function toyCsv() {
  const pos = ['good', 'great', 'love', 'excellent', 'best'];
  const neg = ['bad', 'awful', 'hate', 'terrible', 'worst'];
  const things = ['movie', 'food', 'service', 'place', 'phone', 'film'];
  const rows = ['text,label'];
  things.forEach((t, i) => {
    for (let j = 0; j < 5; j++) {
      rows.push(`"the ${t} was really ${pos[(i + j) % 5]}",positive`);
      rows.push(`"this ${t} is ${neg[(i + 2 * j) % 5]} !",negative`);
    }
  });
  return rows.join('\n') + '\n';
}

// Reads the entries of a stored (uncompressed) zip.
function unzip(buf) {
  const files = {};
  let p = 0;
  while (buf.readUInt32LE(p) === 0x04034b50) {
    const size = buf.readUInt32LE(p + 18);
    const nameLen = buf.readUInt16LE(p + 26);
    const extra = buf.readUInt16LE(p + 28);
    const name = buf.subarray(p + 30, p + 30 + nameLen).toString('utf8');
    const start = p + 30 + nameLen + extra;
    files[name] = buf.subarray(start, start + size);
    p = start + size;
  }
  return files;
}

test('the served model names its hub id, for adapters to name as their base', async () => {
  const index = await (await fetch(`${url}index.json`)).json();
  const def = index.models.find((m) => m.id === 'default');
  if (!def) return; // served without the real model (not fetched)
  assert.equal(def.hub_id, 'sentence-transformers/all-MiniLM-L6-v2');
  assert.equal(index.models.find((m) => m.id === 'tiny').hub_id, null);
});

test('private on-device fine-tuning in the browser', { timeout: 20 * 60 * 1000 }, async () => {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  const origin = new URL(url).origin;
  let phase = 'load';
  const requests = [];
  context.on('request', (r) => requests.push({ url: r.url(), phase }));
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  const shot = (name) => page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });

  // ?device=gpu: use WebGPU even where the adapter is a software one (SwiftShader here).
  await page.goto(`${url}?model=tiny&device=gpu`);
  await page.waitForSelector('body[data-ready=yes]', { timeout: 120000 });
  const device = await page.textContent('#device');
  console.log(`device: ${device}`);

  // 1. model
  await page.click('#model-load');
  await page.waitForFunction(() => /parameters/.test(document.querySelector('#model-info').textContent), null, { timeout: 120000 });
  await shot('1-model');
  assert.match(await page.textContent('#model-info'), /bert, .*mean pooling, normalised/);

  // Sentence similarity under the model's own pooling (embed), with no request made.
  phase = 'embed';
  await page.fill('#sim-a', 'the food was great');
  await page.fill('#sim-b', 'the food was great');
  await page.click('#sim-run');
  await page.waitForFunction(() => document.querySelector('#sim-result').dataset.cosine, null, { timeout: 120000 });
  const same = Number(await page.getAttribute('#sim-result', 'data-cosine'));
  assert.ok(Math.abs(same - 1) < 1e-4, `a sentence is its own nearest: cosine ${same}`);
  await page.fill('#sim-b', 'i hate this awful phone');
  await page.click('#sim-run');
  await page.waitForFunction((c) => Number(document.querySelector('#sim-result').dataset.cosine) !== c, same, { timeout: 120000 });
  const other = Number(await page.getAttribute('#sim-result', 'data-cosine'));
  assert.ok(other < same, `another sentence is further: ${other}`);
  assert.match(await page.textContent('#sim-result'), /mean pooling, normalised/);

  // 2. data: a file that is not CSV/JSONL gets a clear message, then the real file
  phase = 'data';
  await page.setInputFiles('#data-file', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('just some words\nwithout a header\n') });
  await page.waitForSelector('#error:not([hidden])');
  const err = await page.textContent('#error');
  assert.match(err, /text/);
  assert.match(err, /label/);
  await shot('2-bad-data');
  await page.setInputFiles('#data-file', { name: 'toy.csv', mimeType: 'text/csv', buffer: Buffer.from(toyCsv()) });
  await page.waitForFunction(() => /60 rows/.test(document.querySelector('#data-info').textContent));
  assert.match(await page.textContent('#data-info'), /negative: 30, positive: 30/);
  assert.equal(await page.isHidden('#error'), true);
  // A broken file after a good one: its error names the checkbox, and the good data stays.
  await page.setInputFiles('#data-file', { name: 'broken.csv', mimeType: 'text/csv', buffer: Buffer.from('text,label\n"never closed,pos\n') });
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await page.textContent('#error'), /The data loaded before \(toy\.csv, 60 rows\) is kept/);
  assert.match(await page.textContent('#data-info'), /60 rows/);
  await page.uncheck('#skip-bad');
  await page.setInputFiles('#data-file', { name: 'broken2.csv', mimeType: 'text/csv', buffer: Buffer.from('text,label\nfine,pos\n"never closed,pos\n') });
  await page.waitForFunction(() => /skip rows that cannot be read/.test(document.querySelector('#error').textContent));
  assert.doesNotMatch(await page.textContent('#error'), /--skip-bad-rows/);
  await page.check('#skip-bad');
  // A semicolon-separated export reads as it is.
  await page.setInputFiles('#data-file', { name: 'semi.csv', mimeType: 'text/csv', buffer: Buffer.from('text;label\n"good; really";pos\nbad, sadly;neg\n') });
  await page.waitForFunction(() => /semi\.csv — 2 rows/.test(document.querySelector('#data-info').textContent));
  await page.setInputFiles('#data-file', { name: 'toy.csv', mimeType: 'text/csv', buffer: Buffer.from(toyCsv()) });
  await page.waitForFunction(() => /toy\.csv — 60 rows/.test(document.querySelector('#data-info').textContent));

  // 3. settings, 4. training
  await page.fill('#epochs', '4');
  await page.fill('#batch', '8');
  await page.fill('#lr', '0.02');
  await page.fill('#max-len', '32');
  phase = 'train';
  await page.click('#train-start');
  // The learning rate as typed, without float noise (it read 0.019999999552965164).
  await page.waitForFunction(() => /learning rate/.test(document.querySelector('#train-status').textContent), null, { timeout: 120000 });
  assert.match(await page.textContent('#train-status'), /learning rate 0\.02$/);
  await page.waitForSelector('body[data-trained=yes]', { timeout: 15 * 60 * 1000 });
  await shot('3-trained');
  const { losses, epochs } = await page.evaluate(() => ({ losses: window.__localtune.losses, epochs: window.__localtune.epochs }));
  console.log(`epoch train losses: ${epochs.map((e) => e.train_loss.toFixed(4)).join(' ')}`);
  assert.equal(epochs.length, 4);
  assert.ok(losses.length === 24, `24 steps, got ${losses.length}`);
  assert.ok(epochs[3].train_loss < epochs[0].train_loss * 0.9, `the loss must fall: ${epochs[0].train_loss} -> ${epochs[3].train_loss}`);

  // 5. evaluation and a sentence
  phase = 'eval';
  await page.click('#eval-run');
  await page.waitForFunction(() => /accuracy/.test(document.querySelector('#eval-result').textContent), null, { timeout: 120000 });
  await page.fill('#try-text', 'the food was great');
  await page.click('#try-run');
  await page.waitForFunction(() => /%/.test(document.querySelector('#try-result').textContent), null, { timeout: 120000 });
  await shot('4-evaluated');

  // 6. save in the browser's storage
  phase = 'save';
  await page.fill('#save-name', 'tiny-lora');
  await page.click('#save-run');
  await page.waitForSelector('#saved li[data-name="tiny-lora"]');

  // A second, shorter run with another seed, saved too: two adapters to merge.
  phase = 'train2';
  await page.fill('#epochs', '2');
  await page.fill('#seed', '1');
  await page.click('#train-start');
  await page.waitForFunction(() => /done: 12 steps/.test(document.querySelector('#train-status').textContent), null, { timeout: 15 * 60 * 1000 });
  await page.fill('#save-name', 'tiny-lora-2');
  await page.click('#save-run');
  await page.waitForSelector('#saved li[data-name="tiny-lora-2"]');

  // 7. merge the two in the page (TIES), on the device: each input and the merged adapter are
  // evaluated on the loaded data, and the merged one stays loaded for step 5.
  phase = 'merge';
  await page.check('#merge-list input[value="tiny-lora"]');
  await page.check('#merge-list input[value="tiny-lora-2"]');
  await page.selectOption('#merge-method', 'ties');
  assert.match(await page.textContent('#merge-help'), /sign/);
  await page.fill('#merge-density', '0.5');
  await page.click('#merge-run');
  await page.waitForSelector('body[data-merged=yes]', { timeout: 10 * 60 * 1000 });
  assert.equal(await page.isHidden('#error'), true, await page.textContent('#error'));
  await shot('4b-merged');
  const merged = await page.evaluate(() => {
    const m = window.__localtune.merge;
    const st = m.adapters[0].find((f) => f.name === 'adapter_model.safetensors').bytes;
    const len = Number(new DataView(st.buffer, st.byteOffset, 8).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(st.subarray(8, 8 + len)));
    return { report: m.report, results: m.results, files: m.adapters[0].map((f) => f.name), header };
  });
  console.log(`merge: ${JSON.stringify(merged.report)}; accuracy ${merged.results.map((r) => `${r.name} ${r.accuracy}`).join(', ')}`);
  assert.equal(merged.report.method, 'ties');
  assert.equal(merged.report.heads, 'merged');
  assert.deepEqual([...merged.report.inputs].sort(), ['tiny-lora', 'tiny-lora-2']);
  assert.ok(merged.report.svd_relative_error_max >= 0 && merged.report.svd_relative_error_max < 1, `SVD error ${merged.report.svd_relative_error_max}`);
  assert.deepEqual(merged.files.sort(), ['adapter_config.json', 'adapter_model.safetensors', 'localtune.json']);
  assert.deepEqual(merged.header['base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight'].shape, [8, 16]);
  assert.deepEqual(merged.results.map((r) => [r.name, r.merged]), [...merged.report.inputs.map((n) => [n, false]), ['merged', true]]);
  for (const r of merged.results) assert.ok(r.accuracy >= 0 && r.accuracy <= 1 && r.n === 60, `${r.name}: ${JSON.stringify(r)}`);
  assert.equal(await page.locator('#merge-result tr.merged .bar > span').count(), 1);
  // The existing evaluation path evaluates the merged adapter (now the active one).
  await page.click('#eval-run');
  await page.waitForFunction(() => /accuracy/.test(document.querySelector('#eval-result').textContent), null, { timeout: 120000 });
  const evalAcc = await page.evaluate(() => window.__localtune.lastEval.accuracy);
  assert.ok(Math.abs(evalAcc - merged.results[2].accuracy) < 1e-9, `step 5 on the merged adapter: ${evalAcc}`);
  // The worker API merges too (task arithmetic, rank 4), and refuses a single adapter with a clear message.
  const direct = await page.evaluate(async () => {
    const dec = (b) => new TextDecoder().decode(b);
    const read = (name) => new Promise((resolve, reject) => {
      const r = indexedDB.open('localtune', 1);
      r.onsuccess = () => {
        const g = r.result.transaction('adapters').objectStore('adapters').get(name);
        g.onsuccess = () => resolve(g.result);
        g.onerror = () => reject(g.error);
      };
    });
    const args = async (name) => {
      const it = await read(name);
      const f = (n) => it.files.find((x) => x.name === n).bytes;
      return { name, config: dec(f('adapter_config.json')), weights: f('adapter_model.safetensors'), meta: dec(f('localtune.json')) };
    };
    window.__storedAdapterArgs = args; // for the full fine-tunes' merge below
    const adapters = [await args('tiny-lora'), await args('tiny-lora-2')];
    const r = await window.__localtuneCall('merge', { adapters, method: 'task-arithmetic', settings: { weights: [0.5, 0.5], lambda: 1, rank: 4 } });
    const config = JSON.parse(dec(r.adapters[0].find((f) => f.name === 'adapter_config.json').bytes));
    let refused = null;
    try {
      await window.__localtuneCall('merge', { adapters: adapters.slice(0, 1), method: 'ties', settings: {} });
    } catch (e) {
      refused = e.message;
    }
    return { report: r.report, r: config.r, refused };
  });
  assert.equal(direct.report.method, 'task-arithmetic');
  assert.equal(direct.r, 4);
  assert.match(direct.refused, /at least two/);
  await page.fill('#merge-name', 'tiny-merged');
  await page.click('#merge-save');
  await page.waitForSelector('#saved li[data-name="tiny-merged"]');

  // 8. transfer from saved adapters. Two small sources: Pfeiffer bottleneck adapters, one epoch each.
  phase = 'sources';
  const runsDone = () => page.evaluate(() => window.__localtune.runsDone);
  const finishRun = async (click) => {
    const n = await runsDone();
    await page.click(click);
    // Done, or stopped with an error (then fail with its message).
    await page.waitForFunction(
      (k) => (window.__localtune.runsDone > k || !document.querySelector('#error').hidden) && !window.__localtune.training,
      n,
      { timeout: 10 * 60 * 1000 },
    );
    assert.equal(await page.isHidden('#error'), true, await page.textContent('#error'));
  };
  // Full fine-tunes (every weight), two seeds, merged by TIES as task vectors of the loaded model.
  phase = 'full';
  await page.selectOption('#method', 'full');
  await page.fill('#epochs', '1');
  for (const [seed, name] of [['0', 'tiny-full-a'], ['1', 'tiny-full-b']]) {
    await page.fill('#seed', seed);
    await finishRun('#train-start');
    await page.fill('#save-name', name);
    await page.click('#save-run');
    await page.waitForSelector(`#saved li[data-name="${name}"]`);
  }
  const full = await page.evaluate(async () => {
    const dec = (b) => new TextDecoder().decode(b);
    const args = window.__storedAdapterArgs;
    const header = (b) => {
      const st = b instanceof Uint8Array ? b : new Uint8Array(b);
      return JSON.parse(dec(st.subarray(8, 8 + Number(new DataView(st.buffer, st.byteOffset, 8).getBigUint64(0, true)))));
    };
    const adapters = [await args('tiny-full-a'), await args('tiny-full-b')];
    const r = await window.__localtuneCall('merge', { adapters, method: 'ties', settings: { density: 0.5 } });
    const st = r.adapters[0].find((f) => f.name === 'adapter_model.safetensors').bytes;
    return { report: r.report, peft: JSON.parse(adapters[0].config).peft_type, keys: Object.keys(header(st)).length, inKeys: Object.keys(header(adapters[0].weights)).length };
  });
  console.log(`full merge: ${JSON.stringify(full.report)}`);
  assert.equal(full.peft, 'LOCALTUNE_FULL');
  assert.equal(full.report.method, 'ties');
  assert.equal(full.report.heads, 'merged');
  assert.equal(full.keys, full.inKeys, 'the merged full fine-tune holds every weight of its inputs');

  await page.selectOption('#method', 'adapter');
  await page.selectOption('#placement', 'pfeiffer');
  await page.fill('#reduction', '4');
  await page.fill('#epochs', '1');
  await page.fill('#lr', '0.01');
  for (const [name, seed] of [['src-a', '2'], ['src-b', '3']]) {
    await page.fill('#seed', seed);
    await finishRun('#train-start');
    await page.fill('#save-name', name);
    await page.click('#save-run');
    await page.waitForSelector(`#transfer-list label[data-name="${name}"]`);
  }
  assert.match(await page.textContent('#transfer-list label[data-name="src-a"]'), /adapter \(pfeiffer\); labels negative, positive/);
  // A third source added from a file: src-b downloaded as a zip and read back (it becomes src-b-2).
  phase = 'sources-download';
  const [srcDownload] = await Promise.all([page.waitForEvent('download'), page.click('#saved li[data-name="src-b"] button:text("Download")')]);
  const srcZip = path.join(out, 'src-b.zip');
  await srcDownload.saveAs(srcZip);
  phase = 'sources';
  await page.setInputFiles('#transfer-files', srcZip);
  await page.waitForSelector('#transfer-list label[data-name="src-b-2"] input:checked');

  // Rank the three on the loaded data: one bar per source, best first, finite numbers, for each score.
  phase = 'rank';
  await page.check('#transfer-list input[value="src-a"]');
  await page.check('#transfer-list input[value="src-b"]');
  await page.click('#rank-run');
  await page.waitForSelector('body[data-ranked="1"]', { timeout: 5 * 60 * 1000 });
  assert.equal(await page.isHidden('#error'), true, await page.textContent('#error'));
  const bars = () =>
    page.$$eval('#rank-result tr.rank-row', (rows) =>
      rows.map((r) => ({ name: r.dataset.name, value: Number(r.dataset.value), shown: Number(r.querySelector('td.value').textContent), width: parseFloat(r.querySelector('.bar > span').style.width) })),
    );
  const ranked = {};
  for (const score of ['logme', 'leep', 'nce']) {
    await page.selectOption('#rank-score', score);
    const b = await bars();
    ranked[score] = b;
    assert.equal(b.length, 3, `${score}: one bar per source`);
    assert.deepEqual(b.map((x) => x.name).sort(), ['src-a', 'src-b', 'src-b-2']);
    for (const x of b) {
      assert.ok(Number.isFinite(x.value) && Number.isFinite(x.shown) && Math.abs(x.shown - x.value) < 1e-4, `${score} ${x.name}: ${JSON.stringify(x)}`);
      assert.ok(x.width > 0 && x.width <= 100, `${score} ${x.name}: bar width ${x.width}`);
    }
    for (let i = 1; i < b.length; i++) assert.ok(b[i - 1].value >= b[i].value, `${score}: best first`);
    // The copy read from the zip scores as its original does.
    const v = (n) => b.find((x) => x.name === n).value;
    assert.ok(Math.abs(v('src-b') - v('src-b-2')) <= 1e-6 * (1 + Math.abs(v('src-b'))), `${score}: src-b ${v('src-b')} vs its copy ${v('src-b-2')}`);
  }
  console.log(`rank: ${Object.entries(ranked).map(([k, b]) => `${k} ${b.map((x) => `${x.name} ${x.value.toFixed(4)}`).join(', ')}`).join('; ')}`);
  assert.match(await page.textContent('#rank-help'), /label sets differ/);
  await page.selectOption('#rank-score', 'logme');
  assert.match(await page.textContent('#rank-help'), /linear model/);
  await shot('7-ranked');

  // ScaLearn over src-a and src-b: refused without a source, then a few steps with a tiny trainable count.
  phase = 'scalearn';
  for (const n of ['src-a', 'src-b', 'src-b-2']) await page.uncheck(`#transfer-list input[value="${n}"]`);
  await page.click('#scalearn-run');
  await page.waitForSelector('#transfer-error:not([hidden])');
  assert.match(await page.textContent('#transfer-error'), /choose at least one source adapter/);
  await page.check('#transfer-list input[value="src-a"]');
  await page.check('#transfer-list input[value="src-b"]');
  await page.selectOption('#scalearn-variant', 'scalearn');
  assert.match(await page.textContent('#scalearn-help'), /vector of scales per source in every layer/);
  await finishRun('#scalearn-run');
  const sl = await page.evaluate(() => ({ run: window.__localtune.run, losses: window.__localtune.losses }));
  console.log(`scalearn: ${sl.run.trainable} trainable values (${sl.run.frozen_source_values} frozen in the sources), losses ${sl.losses.map((l) => l.toFixed(4)).join(' ')}`);
  assert.equal(sl.run.method, 'scalearn');
  assert.deepEqual([...sl.run.sources].sort(), ['src-a', 'src-b']);
  assert.ok(sl.run.trainable > 0 && sl.run.trainable < 5000, `ScaLearn trains few values: ${sl.run.trainable}`);
  assert.ok(sl.run.trainable < sl.run.frozen_source_values, 'fewer than its sources hold');
  assert.equal(Number(await page.getAttribute('#scalearn-info', 'data-trainable')), sl.run.trainable);
  assert.match(await page.textContent('#scalearn-info'), /trainable values/);
  assert.ok(sl.losses.length > 0 && sl.losses.every(Number.isFinite), `finite losses: ${sl.losses}`);
  await page.click('#eval-run');
  await page.waitForFunction(() => /accuracy/.test(document.querySelector('#eval-result').textContent), null, { timeout: 120000 });
  const slEval = await page.evaluate(() => window.__localtune.lastEval);
  assert.ok(slEval.accuracy >= 0 && slEval.accuracy <= 1 && slEval.n === 12, `ScaLearn evaluation: ${JSON.stringify(slEval)}`);
  await page.fill('#save-name', 'tiny-scalearn');
  await page.click('#save-run');
  await page.waitForSelector('#saved li[data-name="tiny-scalearn"]');
  assert.match(await page.textContent('#saved li[data-name="tiny-scalearn"]'), /scalearn over (src-a \+ src-b|src-b \+ src-a)/);
  const slFiles = await page.evaluate(async () => {
    const it = await new Promise((resolve, reject) => {
      const r = indexedDB.open('localtune', 1);
      r.onsuccess = () => {
        const g = r.result.transaction('adapters').objectStore('adapters').get('tiny-scalearn');
        g.onsuccess = () => resolve(g.result);
        g.onerror = () => reject(g.error);
      };
    });
    const f = (n) => new Uint8Array(it.files.find((x) => x.name === n).bytes);
    const st = f('adapter_model.safetensors');
    const len = Number(new DataView(st.buffer, st.byteOffset, 8).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(st.subarray(8, 8 + len)));
    return { meta: JSON.parse(new TextDecoder().decode(f('localtune.json'))), shapes: Object.fromEntries(Object.entries(header).filter(([k]) => k !== '__metadata__').map(([k, v]) => [k, v.shape])) };
  });
  assert.equal(slFiles.meta.method, 'scalearn');
  assert.deepEqual(slFiles.meta.sources.map((x) => x.name).sort(), ['src-a', 'src-b']);
  const omegas = Object.entries(slFiles.shapes).filter(([k]) => k.endsWith('scalearn.omega'));
  assert.ok(omegas.length > 0 && omegas.every(([, sh]) => sh[0] === 2), `ω per source: ${JSON.stringify(omegas)}`);
  assert.ok(Object.keys(slFiles.shapes).some((k) => k.startsWith('localtune.scalearn.source.1.')), 'the sources travel in the file');
  await shot('8-scalearn');

  // Distillation into a LoRA student from the three sources (weighted), with unlabelled texts.
  phase = 'distill';
  await page.selectOption('#method', 'lora');
  await page.fill('#lr', '0.02');
  const unlabelled = ['the film was so good', 'i love this place', 'the service was awful', 'worst phone i hate it', 'really great food', 'this movie is bad', 'excellent service', 'terrible film', 'the best place', 'awful awful food'];
  await page.setInputFiles('#unlabelled-file', { name: 'unlabelled.txt', mimeType: 'text/plain', buffer: Buffer.from(unlabelled.join('\n') + '\n') });
  await page.waitForFunction(() => /10 unlabelled texts/.test(document.querySelector('#unlabelled-info').textContent));
  await page.check('#transfer-list input[value="src-b-2"]');
  await page.selectOption('#distill-weighting', 'weighted');
  await page.fill('#distill-alpha', '0.5');
  await finishRun('#distill-run');
  const ds = await page.evaluate(() => ({ run: window.__localtune.run, losses: window.__localtune.losses }));
  console.log(`distill: teachers ${ds.run.teachers.map((t) => `${t.name} ${t.score.toFixed(4)} w ${t.weight.toFixed(3)}`).join(', ')}; losses ${ds.losses.map((l) => l.toFixed(4)).join(' ')}`);
  assert.equal(ds.run.method, 'lora');
  assert.equal(ds.run.unlabelled, 10);
  assert.equal(ds.run.train, ds.run.labelled + 10);
  assert.deepEqual(ds.run.teachers.map((t) => t.name).sort(), ['src-a', 'src-b', 'src-b-2']);
  assert.ok(Math.abs(ds.run.teachers.reduce((a, t) => a + t.weight, 0) - 1) < 1e-6, 'weights sum to 1');
  assert.ok(ds.run.teachers.every((t) => Number.isFinite(t.score)));
  assert.equal(await page.locator('#distill-info table.teachers tr[data-name]').count(), 3);
  assert.ok(ds.losses.length === Math.ceil(ds.run.train / 8) && ds.losses.every(Number.isFinite), `finite losses: ${ds.losses}`);
  await page.click('#eval-run');
  await page.waitForFunction(() => /accuracy/.test(document.querySelector('#eval-result').textContent), null, { timeout: 120000 });
  await shot('9-distilled');
  await page.locator('#step-transfer').screenshot({ path: path.join(out, '9b-transfer-step.png') });

  // No request at all while loading data, training, evaluating, saving, merging, ranking, training
  // ScaLearn or distilling.
  const quiet = ['embed', 'data', 'train', 'eval', 'save', 'train2', 'merge', 'sources', 'rank', 'scalearn', 'distill'];
  const during = requests.filter((r) => quiet.includes(r.phase));
  assert.deepEqual(during, [], `requests during ${quiet.join('/')}`);

  // The merged adapter downloads as PEFT files.
  phase = 'merge-download';
  await page.fill('#merge-name', 'tiny-merged');
  const [mergedDownload] = await Promise.all([page.waitForEvent('download'), page.click('#merge-download')]);
  const mergedZip = path.join(out, 'tiny-merged.zip');
  await mergedDownload.saveAs(mergedZip);
  const mergedFiles = unzip(fs.readFileSync(mergedZip));
  assert.equal(JSON.parse(mergedFiles['tiny-merged/adapter_config.json'].toString()).peft_type, 'LORA');
  assert.ok(mergedFiles['tiny-merged/adapter_model.safetensors'].length > 0);

  // Phone width, with every step's results on the page: nothing wider than the screen (tables and
  // charts scroll or shrink inside their sections).
  await page.setViewportSize({ width: 390, height: 844 });
  const wide = await page.evaluate(() => {
    const w = document.documentElement.clientWidth;
    const over = [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > w + 1 && e.offsetParent !== null)
      .slice(0, 6)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}${e.className ? '.' + e.className : ''} ${Math.round(e.getBoundingClientRect().right)}px`);
    return { scroll: document.documentElement.scrollWidth, w, over };
  });
  await shot('phone');
  assert.ok(wide.scroll <= wide.w, `at 390 px the page is ${wide.scroll} px wide: ${wide.over.join('; ')}`);
  await page.setViewportSize({ width: 1280, height: 720 });

  // Reload: the adapter is still there, and downloads as PEFT files.
  phase = 'reload';
  await page.reload();
  await page.waitForSelector('body[data-ready=yes]', { timeout: 120000 });
  await page.waitForSelector('#saved li[data-name="tiny-lora"]');
  await page.waitForSelector('#saved li[data-name="autosave"]');
  // Delete asks first; dismissed, the adapter stays.
  const asked = [];
  const dismiss = (d) => {
    asked.push(d.message());
    d.dismiss();
  };
  page.on('dialog', dismiss);
  await page.click('#saved li[data-name="autosave"] button:text("Delete")');
  await page.waitForTimeout(300);
  page.off('dialog', dismiss);
  assert.equal(asked.length, 1);
  assert.match(asked[0], /Delete “autosave”\?/);
  assert.ok(await page.isVisible('#saved li[data-name="autosave"]'), 'a dismissed delete removed the adapter');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('#saved li[data-name="tiny-lora"] button:text("Download")'),
  ]);
  const zipPath = path.join(out, 'tiny-lora.zip');
  await download.saveAs(zipPath);
  const files = unzip(fs.readFileSync(zipPath));
  const config = JSON.parse(files['tiny-lora/adapter_config.json'].toString());
  assert.equal(config.peft_type, 'LORA');
  assert.equal(config.task_type, 'SEQ_CLS');
  assert.equal(config.r, 8);
  const st = files['tiny-lora/adapter_model.safetensors'];
  const headerLen = Number(st.readBigUInt64LE(0));
  const header = JSON.parse(st.subarray(8, 8 + headerLen).toString());
  assert.deepEqual(header['base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight'].shape, [8, 16]);
  assert.deepEqual(header['base_model.model.classifier.weight'].shape, [2, 16]);
  const meta = JSON.parse(files['tiny-lora/localtune.json'].toString());
  assert.deepEqual(meta.labels, ['negative', 'positive']);
  // The zip says how to load it, with the labels as id2label, and its entries carry real dates.
  const readme = files['tiny-lora/README.md'].toString();
  assert.match(readme, /PeftModel\.from_pretrained\(model, "tiny-lora"\)/);
  assert.match(readme, /id2label=\{0: "negative", 1: "positive"\}/);
  const zipBytes = fs.readFileSync(zipPath);
  const dosDate = zipBytes.readUInt16LE(12);
  const [year, month, day] = [(dosDate >> 9) + 1980, (dosDate >> 5) & 15, dosDate & 31];
  assert.ok(year >= 2024 && month >= 1 && month <= 12 && day >= 1, `zip date ${year}-${month}-${day}`);

  // The saved adapter loads again and classifies.
  await page.click('#model-load');
  await page.waitForFunction(() => /parameters/.test(document.querySelector('#model-info').textContent), null, { timeout: 120000 });
  await page.click('#saved li[data-name="tiny-lora"] button:text("Load")');
  await page.waitForFunction(() => /Loaded/.test(document.querySelector('#try-result').textContent));
  await shot('5-reloaded');

  // Offline: with the network gone the page, the wasm and the model still load (service worker).
  await context.setOffline(true);
  await page.reload();
  await page.waitForSelector('body[data-ready=yes]', { timeout: 120000 });
  await page.click('#model-load');
  await page.waitForFunction(() => /parameters/.test(document.querySelector('#model-info').textContent), null, { timeout: 120000 });
  await context.setOffline(false);
  await shot('6-offline');

  // Every request stayed on the origin.
  const outside = requests.filter((r) => !r.url.startsWith(origin) && !r.url.startsWith('blob:') && !r.url.startsWith('data:'));
  assert.deepEqual(outside, [], 'requests that left the origin');
  assert.deepEqual(consoleErrors, [], 'errors in the console');
  await context.close();
});

test('the CPU fallback is announced', { timeout: 5 * 60 * 1000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${url}?device=cpu&model=tiny`);
  await page.waitForSelector('body[data-ready=yes]', { timeout: 120000 });
  assert.match(await page.textContent('#device'), /CPU/);
  assert.equal(await page.isVisible('#notice'), true);
  assert.match(await page.textContent('#notice'), /CPU/);
  await page.screenshot({ path: path.join(out, 'cpu-fallback.png'), fullPage: true });
  await context.close();
});

// A sentence-transformers folder picked whole brings its own pooling (here max pooling, no
// Normalize), and the page's embeddings follow it: the same vectors sentence-transformers gives.
test('a sentence-transformers folder pools as its files say', { timeout: 5 * 60 * 1000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${url}?device=cpu&model=tiny`);
  await page.waitForSelector('body[data-ready=yes]', { timeout: 120000 });
  const folder = path.join(root, 'tests/fixtures/arch/st/max');
  await page.setInputFiles('#model-folder', folder);
  await page.waitForFunction(() => /parameters/.test(document.querySelector('#model-info').textContent), null, { timeout: 120000 });
  assert.match(await page.textContent('#model-info'), /max pooling/);
  assert.doesNotMatch(await page.textContent('#model-info'), /normalised/);
  const meta = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/arch/st/meta.json'), 'utf8'));
  const sentences = meta.sentences;
  const got = await page.evaluate(async (texts) => {
    const { embeddings } = await window.__localtuneCall('embed', { texts, maxLen: 40 });
    return embeddings;
  }, sentences);
  // Reference: st/expected.safetensors, embedding_max (sentence-transformers encode()).
  const st = fs.readFileSync(path.join(root, 'tests/fixtures/arch/st/expected.safetensors'));
  const headerLen = Number(st.readBigUInt64LE(0));
  const header = JSON.parse(st.subarray(8, 8 + headerLen).toString());
  const { data_offsets: [a, b], shape } = header.embedding_max;
  const ref = new Float32Array(st.buffer.slice(st.byteOffset + 8 + headerLen + a, st.byteOffset + 8 + headerLen + b));
  assert.equal(got.length, shape[0]);
  got.flat().forEach((x, i) => assert.ok(Math.abs(x - ref[i]) <= 1e-5 + 1e-4 * Math.abs(ref[i]), `embedding value ${i}: ${x} vs ${ref[i]}`));
  await context.close();
});

// The chat model mode on the tiny random Llama (GGUF, Q8_0 linears, written by `localtune tiny-llama`
// inside `serve --tiny`): a streamed reply, a bad chat file refused by line, QLoRA steps on a chat file
// with the loss falling, a reply with the adapter that differs, the adapter downloaded as a PEFT
// folder, loaded back; no request at all while the chats are loaded, replying or fine-tuning, and none
// off the origin.
for (const dev of ['cpu', 'gpu'])
test(`a chat model: reply, fine-tune on private chats, reply with the adapter (${dev})`, { timeout: 15 * 60 * 1000 }, async () => {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  const origin = new URL(url).origin;
  let phase = 'load';
  const requests = [];
  context.on('request', (r) => requests.push({ url: r.url(), phase }));
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  const shot = (name) => page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });
  await page.goto(`${url}?mode=chat&chat_model=tiny&device=${dev}`);
  await page.waitForSelector('body[data-ready=yes]', { timeout: 120000 });
  assert.equal(await page.isVisible('#chat-mode'), true);
  assert.equal(await page.isVisible('#classify-mode'), false);
  await page.click('#chat-model-load');
  await page.waitForFunction(() => /layers/.test(document.querySelector('#chat-model-info').textContent), null, { timeout: 120000 });
  assert.match(await page.textContent('#chat-model-info'), /2 layers, hidden 64, 4 heads \(2 key\/value\)/);
  assert.match(await page.textContent('#chat-model-info'), dev === 'gpu' ? /on (?!cpu)/i : /on cpu/i);

  // A streamed greedy reply: the text grows token by token (chat-text events), then the turn ends.
  phase = 'reply';
  // One user turn in a new chat each time, so that replies compare.
  const reply = async () => {
    await page.click('#chat-clear');
    await page.fill('#chat-input', 'is item 99 good');
    await page.click('#chat-send');
    await page.waitForFunction(() => window.__localtuneChat.messages.length === 2, null, { timeout: 120000 });
    return page.evaluate(() => window.__localtuneChat.lastReply);
  };
  await page.fill('#chat-max-new', '12');
  const base = await reply();
  assert.equal(base.ids.length, 12, `12 tokens (the random model never ends its turn): ${JSON.stringify(base)}`);
  assert.equal(await page.evaluate(() => window.__localtuneChat.textEvents), 12, 'one streamed update per token');
  assert.equal(base.adapter, false);
  assert.match(await page.textContent('#chat-status'), /12 tokens in/);
  assert.equal((await page.$$('#chat-log .msg')).length, 2);
  await shot('chat-1-reply');

  // A chat file with a message missing its role: refused, naming the line.
  phase = 'data';
  await page.setInputFiles('#chat-data-file', { name: 'bad.jsonl', mimeType: 'application/x-ndjson', buffer: Buffer.from('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}\n{"messages": [{"content": "no role"}]}\n') });
  await page.waitForSelector('#chat-train-error:not([hidden])');
  assert.match(await page.textContent('#chat-train-error'), /bad\.jsonl.*line 2.*role/);
  // 24 chats that answer every question with one of two words.
  const lines = [];
  for (let i = 0; i < 24; i++) {
    const [q, a] = i % 2 ? [`is item ${i} good`, 'yes'] : [`is item ${i} bad`, 'no'];
    lines.push(JSON.stringify({ messages: [{ role: 'user', content: q }, { role: 'assistant', content: a }] }));
  }
  await page.fill('#chat-valid', '0.25');
  await page.setInputFiles('#chat-data-file', { name: 'chats.jsonl', mimeType: 'application/x-ndjson', buffer: Buffer.from(lines.join('\n') + '\n') });
  await page.waitForFunction(() => /24 chats, 18 to train on/.test(document.querySelector('#chat-data-info').textContent));
  assert.equal(await page.isHidden('#chat-train-error'), true);

  phase = 'train';
  await page.fill('#chat-epochs', '4');
  await page.fill('#chat-batch', '6');
  await page.fill('#chat-lr', '0.01');
  await page.click('#chat-train');
  await page.waitForFunction(() => /Done: 12 steps/.test(document.querySelector('#chat-train-status').textContent), null, { timeout: 10 * 60 * 1000 });
  const steps = await page.evaluate(() => window.__localtuneChat.steps);
  const ends = steps.filter((s) => s.epoch_end).map((s) => s.epoch_end);
  console.log(`chat epochs: ${ends.map((e) => `${e.train_loss.toFixed(3)}/${e.valid_loss.toFixed(3)}`).join(' ')}`);
  assert.equal(steps.length, 12);
  assert.equal(ends.length, 4);
  assert.ok(ends[3].train_loss < ends[0].train_loss * 0.8, `the training loss must fall: ${ends[0].train_loss} -> ${ends[3].train_loss}`);
  assert.ok(ends[3].valid_loss < ends[0].valid_loss, `the held-out loss must fall: ${ends[0].valid_loss} -> ${ends[3].valid_loss}`);
  assert.equal(await page.isChecked('#chat-use-adapter'), true);
  await shot('chat-2-trained');

  phase = 'reply-adapter';
  const tuned = await reply();
  assert.equal(tuned.adapter, true);
  assert.notDeepEqual(tuned.ids, base.ids, 'the adapter changed nothing');
  await shot('chat-3-adapter-reply');
  phase = 'save';
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#chat-download')]);
  const zipPath = path.join(out, 'chat-lora.zip');
  await dl.saveAs(zipPath);
  const files = unzip(fs.readFileSync(zipPath));
  const cfg = JSON.parse(files['chat-lora/adapter_config.json'].toString());
  assert.equal(cfg.peft_type, 'LORA');
  assert.equal(cfg.task_type, 'CAUSAL_LM');
  assert.deepEqual(cfg.target_modules, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
  const st = files['chat-lora/adapter_model.safetensors'];
  const header = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString());
  assert.deepEqual(header['base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'].shape, [64, 8]);

  // The downloaded files load back; with the same settings the reply is the tuned one.
  phase = 'reload-adapter';
  await page.click('#chat-model-load');
  await page.waitForFunction(() => /layers/.test(document.querySelector('#chat-model-info').textContent) && !window.__localtuneChat.trained, null, { timeout: 120000 });
  await page.setInputFiles('#chat-adapter-files', [
    { name: 'adapter_config.json', mimeType: 'application/json', buffer: files['chat-lora/adapter_config.json'] },
    { name: 'adapter_model.safetensors', mimeType: 'application/octet-stream', buffer: files['chat-lora/adapter_model.safetensors'] },
  ]);
  await page.waitForFunction(() => /Loaded a LoRA adapter of rank 8/.test(document.querySelector('#chat-save-info').textContent));
  phase = 'reply-loaded';
  await page.fill('#chat-max-new', '12');
  const loaded = await reply();
  assert.deepEqual(loaded.ids, tuned.ids, 'the reloaded adapter gives the tuned reply');

  const quiet = ['data', 'train', 'reply', 'reply-adapter', 'reply-loaded', 'save'];
  const during = requests.filter((r) => quiet.includes(r.phase));
  assert.deepEqual(during, [], `requests during ${quiet.join('/')}`);
  const outside = requests.filter((r) => !r.url.startsWith(origin) && !r.url.startsWith('blob:') && !r.url.startsWith('data:'));
  assert.deepEqual(outside, [], 'requests that left the origin');
  assert.deepEqual(consoleErrors, [], 'errors in the console');
  await context.close();
});
