// The benchmark page: same worker as the app; prints one JSON object (also on window.__benchResult).
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const worker = new Worker('worker.js', { type: 'module' });
let nextId = 1;
const pending = new Map();
worker.onmessage = (e) => {
  const p = pending.get(e.data.id);
  if (!p) return;
  pending.delete(e.data.id);
  e.data.ok ? p.resolve(e.data.result) : p.reject(new Error(e.data.error));
};
const call = (cmd, args) =>
  new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, cmd, args });
  });

const index = await (await fetch('index.json')).json();
$('model').replaceChildren(...index.models.map((m) => Object.assign(document.createElement('option'), { value: m.id, textContent: m.name })));
if (params.get('model')) $('model').value = params.get('model');
if (params.get('device')) $('device').value = params.get('device');
if (params.get('reps')) $('reps').value = params.get('reps');
if (params.get('train_batch')) $('train-batch').value = params.get('train_batch');

async function run() {
  $('out').textContent = 'running…';
  try {
    const dev = await call('init', { prefer: $('device').value });
    const id = $('model').value;
    const m = index.models.find((x) => x.id === id);
    await call('loadModel', { name: m.name, urls: { config: `models/${id}/config.json`, weights: `models/${id}/model.safetensors`, tokenizer: `models/${id}/tokenizer.json` } });
    const r = await call('benchmark', { reps: Number($('reps').value), trainBatch: Number($('train-batch').value) });
    const result = { browser: navigator.userAgent, adapter: dev.adapter ?? null, fallback_reason: dev.fallback_reason ?? null, ...r };
    window.__benchResult = result;
    $('out').textContent = JSON.stringify(result, null, 2);
  } catch (e) {
    window.__benchResult = { error: e.message };
    $('out').textContent = `error: ${e.message}`;
  }
}
$('run').addEventListener('click', run);
if (params.get('run') === '1') run();
