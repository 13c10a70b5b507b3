// The page: UI on the main thread; all model work happens in worker.js.
import { makeZip } from './zip.js';
import { initChat } from './chat.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// ---------------------------------------------------------------------------------------------
// worker RPC

const worker = new Worker('worker.js', { type: 'module' });
let nextId = 1;
const pending = new Map();
const listeners = [];
worker.onmessage = (e) => {
  const m = e.data;
  if (m.event) {
    listeners.forEach((f) => f(m));
    return;
  }
  const p = pending.get(m.id);
  if (!p) return;
  pending.delete(m.id);
  m.ok ? p.resolve(m.result) : p.reject(new Error(m.error));
};
worker.onerror = (e) => showError(`The worker stopped: ${e.message || 'unknown error'}. Reload the page to start again.`);
listeners.push((m) => m.event === 'fatal' && showError(`An internal error stopped the worker: ${m.error}. Reload the page to start again; your saved adapters are kept.`));
function call(cmd, args, transfer) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, cmd, args }, transfer || []);
  });
}

// ---------------------------------------------------------------------------------------------
// state and messages

const state = {
  device: null,
  model: null,
  data: null,
  trained: false,
  training: false,
  losses: [],
  epochs: [],
  totalSteps: 0,
  lastAutosave: null,
  merging: false,
  merge: null, // {method, inputs, report, adapters, results}
  run: null, // the current run's summary from the worker, with `from`: train | scalearn | distill
  runFrom: 'train', // the step that started the current run
  runsDone: 0, // runs finished (for tests)
  transferBusy: false, // ranking sources
  rank: null, // {examples, labels, sources: [{name, logme, leep, nce, labels, method}], ensemble}
  unlabelled: null, // {name, texts, preview}
};
window.__localtune = state; // for tests and the curious
window.__localtuneCall = (cmd, args) => call(cmd, args); // the worker API, for tests

function showError(msg) {
  const el = $('error');
  el.textContent = msg;
  el.hidden = !msg;
}
// An error of step 8: shown at the top as the page's others are, and next to the step.
function showTransferError(msg) {
  showError(msg);
  const e = $('transfer-error');
  e.textContent = msg;
  e.hidden = !msg;
}
function clearError() {
  showError('');
  $('transfer-error').textContent = '';
  $('transfer-error').hidden = true;
}
function showNotice(msg) {
  const el = $('notice');
  el.textContent = msg;
  el.hidden = !msg;
}
function fmtBytes(n) {
  if (n > 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n > 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}
function fmtSecs(s) {
  s = Math.max(0, Math.round(s));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function refreshButtons() {
  const ready = !!state.model && !state.training && !state.transferBusy;
  $('train-start').disabled = !(ready && state.data);
  $('train-stop').disabled = !state.training;
  $('eval-run').disabled = !(ready && state.trained);
  $('try-run').disabled = !(ready && state.trained);
  $('sim-run').disabled = !ready;
  $('save-run').disabled = !(ready && state.trained);
  const picked = document.querySelectorAll('#merge-list input:checked').length;
  $('merge-run').disabled = !(ready && !state.merging && picked >= 2);
  $('merge-save').disabled = !(state.merge && !state.merging);
  $('merge-download').disabled = !(state.merge && !state.merging);
  for (const id of ['rank-run', 'scalearn-run', 'distill-run']) $(id).disabled = !(ready && state.data);
  $('transfer-stop').disabled = !(state.training && state.runFrom !== 'train');
  // Nothing may change the model, the data or the settings under a running training.
  for (const id of ['model-load', 'model-files', 'model-folder', 'data-file', 'skip-bad']) $(id).disabled = state.training;
  document.querySelectorAll('#examples button, #saved button, #merge-list input, #step-settings input, #step-settings select, #step-transfer input, #step-transfer select, #unlabelled-clear').forEach((b) => {
    b.disabled = state.training;
  });
  $('drop').classList.toggle('disabled', state.training);
}

// ---------------------------------------------------------------------------------------------
// 0. device

async function startDevice() {
  // ?device=gpu forces WebGPU, ?device=cpu the CPU; by default a software WebGPU adapter gives way to
  // the (faster) WebAssembly CPU path.
  const prefer = ['gpu', 'cpu'].includes(params.get('device')) ? params.get('device') : 'auto';
  const badge = $('device');
  try {
    const info = await call('init', { prefer });
    state.device = info;
    if (info.device === 'gpu') {
      badge.textContent = `WebGPU: ${info.adapter.name || 'adapter'} (${info.adapter.device_type})`;
      badge.dataset.state = 'gpu';
    } else {
      badge.textContent = 'CPU (WebAssembly)';
      badge.dataset.state = 'cpu';
      showNotice(`Running on the CPU (WebAssembly), not WebGPU: ${info.fallback_reason}.`);
    }
  } catch (e) {
    badge.textContent = 'Failed to start';
    badge.dataset.state = 'error';
    showError(`Could not start: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// 1. model

let index = { models: [], data: [] };

async function loadIndex() {
  try {
    const r = await fetch('index.json');
    index = await r.json();
  } catch {
    index = { models: [], data: [] };
  }
  const sel = $('model-select');
  sel.replaceChildren(...index.models.map((m) => el('option', { value: m.id }, `${m.name} (${fmtBytes(m.bytes)})`)));
  const wanted = params.get('model');
  if (wanted && index.models.some((m) => m.id === wanted)) sel.value = wanted;
  $('examples').replaceChildren(
    ...index.data.map((d) => el('button', { class: 'small', 'data-url': d.url, onclick: () => loadExample(d) }, d.name.replace(/\.jsonl$/, ''))),
  );
}

function showModel(info) {
  state.model = info;
  $('model-info').replaceChildren(
    el('strong', {}, info.name),
    ` — ${info.architecture}, ${info.parameters >= 1e6 ? `${(info.parameters / 1e6).toFixed(1)}M` : info.parameters.toLocaleString()} parameters, ${info.layers} layers, hidden ${info.hidden}, ${fmtBytes(info.bytes)}, on ${info.device}; sentence embeddings: ${info.pooling.mode} pooling${info.pooling.normalize ? ', normalised' : ''}`,
  );
  state.trained = false;
  refreshButtons();
}

async function loadServedModel() {
  clearError();
  const id = $('model-select').value;
  const m = index.models.find((x) => x.id === id);
  if (!m) return showError('No model is served with this page; pick a model folder from your computer.');
  $('model-info').textContent = `Loading ${m.name} (${fmtBytes(m.bytes)})…`;
  try {
    const info = await call('loadModel', {
      // Adapters name their base by its hub id where the model's card gives one (PEFT's
      // AutoPeftModel then finds it), else by the served folder's name.
      name: m.hub_id || m.name,
      urls: {
        config: `models/${id}/config.json`,
        weights: `models/${id}/model.safetensors`,
        tokenizer: `models/${id}/tokenizer.json`,
        modules: m.pooling?.['modules.json'],
        pooling: m.pooling?.['1_Pooling/config.json'],
      },
    });
    showModel(info);
  } catch (e) {
    $('model-info').textContent = '';
    showError(`The model could not be loaded: ${e.message}`);
  }
}

async function loadLocalModel(files) {
  clearError();
  // Files of a picked folder carry their path: the model's own files sit at its top.
  const top = [...files].filter((f) => (f.webkitRelativePath || f.name).split('/').length <= 2);
  const byName = Object.fromEntries(top.map((f) => [f.name, f]));
  // A sentence-transformers folder picked whole: its pooling config sits in 1_Pooling/.
  const pooling = [...files].find((f) => (f.webkitRelativePath || '').endsWith('1_Pooling/config.json'));
  const missing = ['config.json', 'model.safetensors', 'tokenizer.json'].filter((n) => !byName[n]);
  if (missing.length) {
    return showError(`A model folder needs config.json, model.safetensors and tokenizer.json; missing: ${missing.join(', ')}. Select all three files.`);
  }
  $('model-info').textContent = `Reading ${fmtBytes(byName['model.safetensors'].size)} from your disk…`;
  try {
    const weights = await byName['model.safetensors'].arrayBuffer();
    const info = await call(
      'loadModel',
      {
        name: 'local model',
        config: await byName['config.json'].text(),
        weights,
        tokenizer: await byName['tokenizer.json'].text(),
        // The pooling comes with the folder picker (modules.json names 1_Pooling/config.json).
        modules: byName['modules.json'] && pooling ? await byName['modules.json'].text() : null,
        pooling: pooling ? await pooling.text() : null,
      },
      [weights],
    );
    showModel(info);
  } catch (e) {
    $('model-info').textContent = '';
    showError(`The model could not be loaded: ${e.message}`);
  }
}

// Cosine similarity of two sentence embeddings, pooled as the model's folder says.
async function compareSentences() {
  clearError();
  const texts = [$('sim-a').value, $('sim-b').value];
  try {
    const r = await call('embed', { texts, maxLen: 128 });
    const [a, b] = r.embeddings;
    const dot = a.reduce((s, x, i) => s + x * b[i], 0);
    const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    const cos = dot / (norm(a) * norm(b) || 1);
    $('sim-result').textContent = `cosine similarity ${cos.toFixed(3)} (${r.pooling.mode} pooling${r.pooling.normalize ? ', normalised' : ''})`;
    $('sim-result').dataset.cosine = String(cos);
  } catch (e) {
    showError(`The sentences could not be compared: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// 2. data

async function loadDataBytes(bytes, name) {
  clearError();
  try {
    const info = await call('loadData', { bytes, name, skipBad: $('skip-bad').checked }, [bytes]);
    state.data = info;
    const counts = info.labels.map(([l, n]) => `${l}: ${n}`).join(', ');
    const parts = [el('strong', {}, name), ` — ${info.rows} rows; labels ${counts}`];
    if (info.bad_row_count) parts.push(el('div', { class: 'warn' }, `${info.bad_row_count} row(s) could not be read and were skipped: `, ...info.bad_rows.slice(0, 5).map((b) => el('div', {}, `line ${b.line}: ${b.reason}`))));
    $('data-info').replaceChildren(...parts);
    const table = el('table', {}, el('tr', {}, el('th', {}, 'text'), el('th', {}, 'label')));
    for (const r of info.preview) table.append(el('tr', {}, el('td', {}, r.text), el('td', {}, r.label)));
    $('data-preview').replaceChildren(el('div', { class: 'hint' }, `First ${info.preview.length} rows:`), table);
  } catch (e) {
    // The data loaded before stays (the wasm keeps it too): a bad file costs nothing.
    const kept = state.data ? ` The data loaded before (${state.data.name}, ${state.data.rows} rows) is kept.` : '';
    if (!state.data) {
      $('data-info').textContent = '';
      $('data-preview').textContent = '';
    }
    showError(`${e.message}. A data file is a CSV with a header naming "text" and "label" columns (separated by commas, semicolons, tabs or |), or JSONL with one {"text": …, "label": …} object per line.${kept}`);
  }
  refreshButtons();
}

async function loadFile(file) {
  const bytes = await file.arrayBuffer();
  await loadDataBytes(bytes, file.name);
}

async function loadExample(d) {
  try {
    const r = await fetch(d.url);
    if (!r.ok) throw new Error(`${d.url}: ${r.status}`);
    await loadDataBytes(await r.arrayBuffer(), d.name);
  } catch (e) {
    showError(`The example could not be loaded: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// 3. settings

function settings() {
  const num = (id) => Number($(id).value);
  const lr = $('lr').value.trim();
  return {
    method: $('method').value,
    epochs: num('epochs'),
    batch: num('batch'),
    lr: lr === '' ? null : Number(lr),
    max_len: num('max-len'),
    valid_fraction: num('valid'),
    seed: num('seed'),
    head: $('head').value,
    r: num('lora-r'),
    alpha: num('lora-alpha'),
    rslora: $('lora-rs').checked,
    targets: [...document.querySelectorAll('input[name=target]:checked')].map((x) => x.value),
    reduction_factor: num('reduction'),
    adapter_activation: $('activation').value,
    adapter_placement: $('placement').value,
    prefix_length: num('prefix-len'),
  };
}

function showMethodOptions() {
  const m = $('method').value;
  document.querySelectorAll('.method-opts').forEach((d) => {
    d.hidden = !d.dataset.for.split(' ').includes(m);
  });
}

// ---------------------------------------------------------------------------------------------
// 4. training

function drawChart() {
  const c = $('chart');
  const g = c.getContext('2d');
  const W = c.width;
  const H = c.height;
  g.clearRect(0, 0, W, H);
  g.fillStyle = '#fff';
  g.fillRect(0, 0, W, H);
  const pad = 36;
  g.strokeStyle = '#999';
  g.strokeRect(pad, 8, W - pad * 2, H - pad);
  g.fillStyle = '#555';
  g.font = '11px sans-serif';
  g.fillText('loss', 4, 16);
  g.fillText('val acc', W - pad + 2, 16);
  const n = Math.max(state.totalSteps, state.losses.length, 1);
  const maxLoss = Math.max(1e-6, ...state.losses);
  const x = (i) => pad + ((W - pad * 2) * i) / n;
  const yl = (v) => 8 + (H - pad) * (1 - v / maxLoss);
  const ya = (v) => 8 + (H - pad) * (1 - v);
  g.fillText(maxLoss.toFixed(2), 4, 28);
  g.strokeStyle = '#2a6fdb';
  g.beginPath();
  state.losses.forEach((v, i) => (i ? g.lineTo(x(i + 1), yl(v)) : g.moveTo(x(1), yl(v))));
  g.stroke();
  g.strokeStyle = '#d2691e';
  g.fillStyle = '#d2691e';
  g.beginPath();
  state.epochs.forEach((e, i) => {
    if (e.valid_accuracy == null) return;
    const px = x(e.step);
    const py = ya(e.valid_accuracy);
    i ? g.lineTo(px, py) : g.moveTo(px, py);
    g.fillRect(px - 2, py - 2, 4, 4);
  });
  g.stroke();
  g.fillStyle = '#555';
  g.fillText('step', W / 2, H - 6);
}

function showEpochs() {
  const t = el('table', {}, el('tr', {}, ...['epoch', 'train loss', 'validation loss', 'accuracy', 'macro-F1'].map((h) => el('th', {}, h))));
  const f = (v) => (v == null ? '–' : v.toFixed(4));
  for (const e of state.epochs) t.append(el('tr', {}, el('td', {}, e.epoch), el('td', {}, f(e.train_loss)), el('td', {}, f(e.valid_loss)), el('td', {}, f(e.valid_accuracy)), el('td', {}, f(e.valid_macro_f1))));
  $('epochs-table').replaceChildren(t);
}

listeners.push((m) => {
  if (m.event !== 'progress') return;
  state.losses.push(m.loss);
  const eta = (m.elapsed / m.step) * (m.total - m.step);
  $('train-progress').value = m.step / m.total;
  $('train-status').textContent = `step ${m.step}/${m.total} · epoch ${m.epoch + 1} · loss ${m.loss.toFixed(4)} · ETA ${fmtSecs(eta)}`;
  if (state.runFrom !== 'train') {
    $('transfer-progress').value = m.step / m.total;
    $(`${state.runFrom}-status`).textContent = $('train-status').textContent;
  }
  if (m.epoch_end) {
    state.epochs.push({ ...m.epoch_end, step: m.step });
    showEpochs();
  }
  drawChart();
});

// A run from start to end: `start` asks the worker for the run (its summary back), `describe` says
// what it is; progress, the chart and the epochs table are step 4's, whichever step started it.
async function runTraining(from, start, describe) {
  if (state.training) return;
  clearError();
  state.losses = [];
  state.epochs = [];
  state.trained = false;
  state.training = true; // before the first await: a second click must find the run started
  state.runFrom = from;
  refreshButtons();
  const status = from === 'train' ? null : $(`${from}-status`);
  if (status) {
    status.textContent = 'starting…';
    $('transfer-progress').value = 0;
  }
  try {
    const info = await start();
    state.totalSteps = info.total_steps;
    state.run = { ...info, from };
    $('train-status').textContent = describe(info);
    if (status) status.textContent = describe(info);
    drawChart();
    const r = await call('train');
    state.trained = true;
    $('train-status').textContent = r.stopped ? `stopped after ${state.losses.length} steps` : `done: ${state.losses.length} steps`;
    if (status) status.textContent = $('train-status').textContent;
    document.body.dataset.trained = 'yes';
    state.runsDone += 1;
  } catch (e) {
    const lost = /device (was |is )?lost|lost the device/i.test(e.message);
    const msg = lost
      ? `The GPU stopped working during training (${e.message}). Your last saved state is kept under “autosave” below; reload the page to continue on the CPU.`
      : `Training stopped: ${e.message}`;
    if (status) {
      status.textContent = '';
      showTransferError(msg);
    } else showError(msg);
    state.trained = state.losses.length > 0;
  } finally {
    state.training = false;
    refreshButtons();
  }
}

const describeRun = (info) =>
  `training on ${info.train} examples (${info.valid} held out), ${info.trainable.toLocaleString()} trainable values, learning rate ${info.lr}`;

function startTraining() {
  return runTraining('train', () => call('startTraining', { settings: settings() }), describeRun);
}

// After each epoch the worker sends the adapter; it is kept in the browser's storage under
// "autosave", so a failure later in the run loses at most one epoch.
listeners.push(async (m) => {
  if (m.event !== 'autosave') return;
  try {
    await storePut({ name: 'autosave', created: Date.now(), method: runDescription(), labels: state.run?.labels, files: m.files.map(asStored) });
    state.lastAutosave = Date.now();
    await showSaved();
  } catch (e) {
    console.warn('autosave failed', e);
  }
});

const asStored = (f) => ({ name: f.name, bytes: f.bytes.buffer.slice(f.bytes.byteOffset, f.bytes.byteOffset + f.bytes.byteLength) });

// ---------------------------------------------------------------------------------------------
// 5. evaluation

async function evaluate() {
  clearError();
  $('eval-result').textContent = 'Evaluating…';
  try {
    const m = await call('evaluate');
    const t = el('table', { class: 'confusion' }, el('tr', {}, el('th', {}, 'true \\ predicted'), ...m.labels.map((l) => el('th', {}, l))));
    m.labels.forEach((l, i) => t.append(el('tr', {}, el('th', {}, l), ...m.confusion[i].map((c) => el('td', {}, c)))));
    $('eval-result').replaceChildren(
      el('div', {}, `n = ${m.n} · accuracy ${(m.accuracy * 100).toFixed(1)}% · macro-F1 ${m.macro_f1.toFixed(3)} · loss ${m.loss.toFixed(4)}`),
      t,
    );
    state.lastEval = m;
  } catch (e) {
    $('eval-result').textContent = '';
    showError(`Evaluation failed: ${e.message}`);
  }
}

async function tryText() {
  clearError();
  const text = $('try-text').value;
  try {
    const r = await call('predict', { text });
    $('try-result').replaceChildren(
      el('strong', {}, r.label),
      ' — ',
      r.labels.map((l, i) => `${l} ${(r.probabilities[i] * 100).toFixed(1)}%`).join(', '),
    );
  } catch (e) {
    showError(`Could not classify: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// 6. storage (IndexedDB) and downloads

let dbPromise = null;
function db() {
  dbPromise ??= new Promise((resolve, reject) => {
    const r = indexedDB.open('localtune', 1);
    r.onupgradeneeded = () => r.result.createObjectStore('adapters', { keyPath: 'name' });
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.onblocked = () => reject(new Error('the browser storage is in use by another tab of this page; close it and retry'));
  });
  return dbPromise;
}
async function tx(mode, f) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction('adapters', mode);
    const req = f(t.objectStore('adapters'));
    t.oncomplete = () => resolve(req && req.result);
    t.onerror = () => reject(t.error);
    // A full disk (QuotaExceededError) aborts the transaction without an error event.
    t.onabort = () => reject(t.error || new Error('the browser refused to store it (is the disk or quota full?)'));
  });
}
const storePut = (rec) => tx('readwrite', (s) => s.put(rec));
const storeAll = () => tx('readonly', (s) => s.getAll());
const storeGet = (name) => tx('readonly', (s) => s.get(name));
const storeDelete = (name) => tx('readwrite', (s) => s.delete(name));

// What the current run is, for the saved list: its method, and its sources or teachers.
function runDescription() {
  const r = state.run;
  if (!r) return settings().method;
  if (r.from === 'scalearn') return `${r.method} over ${r.sources.join(' + ')}`;
  if (r.from === 'distill') return `${r.method} distilled from ${r.teachers.filter((t) => t.weight > 0).map((t) => t.name).join(', ')}`;
  return r.method;
}

async function saveAdapter() {
  clearError();
  const name = $('save-name').value.trim() || `${state.run?.method ?? settings().method}-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}`;
  try {
    const files = await call('exportAdapter');
    await storePut({
      name,
      created: Date.now(),
      method: runDescription(),
      labels: state.run?.labels,
      accuracy: state.lastEval?.accuracy ?? state.epochs.at(-1)?.valid_accuracy ?? null,
      files: files.map(asStored),
    });
    $('save-name').value = '';
    await showSaved();
  } catch (e) {
    showError(`Could not save: ${e.message}`);
  }
}

function download(name, bytes, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function showSaved() {
  const list = $('saved');
  let items = [];
  try {
    items = await storeAll();
  } catch (e) {
    list.replaceChildren(el('li', {}, `Browser storage is not available: ${e.message}`));
    return;
  }
  items.sort((a, b) => b.created - a.created);
  list.replaceChildren(
    ...items.map((it) =>
      el(
        'li',
        { 'data-name': it.name },
        el('strong', {}, it.name),
        ` ${it.method || ''} · ${new Date(it.created).toLocaleString()}${it.accuracy != null ? ` · accuracy ${(it.accuracy * 100).toFixed(1)}%` : ''} `,
        el('button', { class: 'small', onclick: () => useAdapter(it.name) }, 'Load'),
        el('button', { class: 'small', onclick: () => downloadAdapter(it.name) }, 'Download'),
        el('button', { class: 'small danger', onclick: () => deleteAdapter(it.name) }, 'Delete'),
      ),
    ),
  );
  showMergeList(items);
  showTransferList(items);
  refreshButtons();
}

// A saved adapter, or null after saying why it cannot be read.
async function readStored(name) {
  try {
    const it = await storeGet(name);
    if (!it) throw new Error('it is no longer in the browser storage');
    return it;
  } catch (e) {
    showError(`Could not read “${name}”: ${e.message}`);
    return null;
  }
}

// A stored adapter's files as the worker's loadAdapter and merge take them.
function adapterArgs(name, files) {
  const file = (n) => files.find((f) => f.name === n)?.bytes;
  const dec = new TextDecoder();
  const meta = file('localtune.json');
  if (!file('adapter_config.json') || !file('adapter_model.safetensors')) throw new Error(`“${name}” lacks adapter_config.json or adapter_model.safetensors`);
  return { name, config: dec.decode(file('adapter_config.json')), weights: file('adapter_model.safetensors'), meta: meta ? dec.decode(meta) : null };
}

async function useAdapter(name) {
  clearError();
  if (!state.model) return showError('Load the model the adapter was trained on first.');
  const it = await readStored(name);
  if (!it) return;
  try {
    const info = await call('loadAdapter', adapterArgs(name, it.files));
    state.trained = true;
    state.run = { method: info.method, labels: info.labels, from: 'loaded' };
    refreshButtons();
    $('try-result').textContent = `Loaded “${name}” (${info.method}, labels ${info.labels.join(', ')}).`;
  } catch (e) {
    showError(`Could not load “${name}”: ${e.message}`);
  }
}

async function downloadAdapter(name) {
  const it = await readStored(name);
  if (!it) return;
  const files = it.files.map((f) => ({ name: `${name}/${f.name}`, data: new Uint8Array(f.bytes) }));
  const readme = adapterReadme(name, it.files);
  if (readme && !it.files.some((f) => f.name === 'README.md')) files.push({ name: `${name}/README.md`, data: new TextEncoder().encode(readme) });
  download(`${name}.zip`, makeZip(files, it.created ? new Date(it.created) : new Date()), 'application/zip');
}

// The README.md of a downloaded adapter: what it is and the exact Python lines that load it.
function adapterReadme(name, files) {
  const text = (n) => {
    const f = files.find((x) => x.name === n);
    return f ? new TextDecoder().decode(f.bytes) : null;
  };
  let config, meta;
  try {
    config = JSON.parse(text('adapter_config.json') || 'null');
    meta = JSON.parse(text('localtune.json') || 'null');
  } catch {
    return null;
  }
  if (!config) return null;
  const labels = meta?.labels || [];
  const base = config.base_model_name_or_path || 'BASE_MODEL';
  const id2label = `{${labels.map((l, i) => `${i}: ${JSON.stringify(l)}`).join(', ')}}`;
  const label2id = `{${labels.map((l, i) => `${JSON.stringify(l)}: ${i}`).join(', ')}}`;
  const head = `# ${name}\n\nA ${config.peft_type} adapter (${meta?.method || 'localtune'}) for \`${base}\`, trained on your own device with localtune: no data left it.\nLabels, in the order of the classifier's outputs: ${labels.map((l, i) => `${i} = ${l}`).join(', ')}.\n\n`;
  if (config.peft_type === 'LORA' || config.peft_type === 'IA3') {
    return `${head}Load it with PEFT and transformers (\`pip install peft transformers\`), from the folder this README is in:\n\n\`\`\`python\nfrom peft import PeftModel\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\nbase = "${base}"\ntokenizer = AutoTokenizer.from_pretrained(base)\nmodel = AutoModelForSequenceClassification.from_pretrained(\n    base, num_labels=${labels.length}, id2label=${id2label}, label2id=${label2id}\n)\nmodel = PeftModel.from_pretrained(model, "${name}")\nmodel.eval()\n\nlogits = model(**tokenizer(["The food was great"], return_tensors="pt")).logits\nprint(model.config.id2label[int(logits.argmax(-1))])\n\`\`\`\n\nOr with localtune: \`localtune predict --adapter ${name}\`.\n`;
  }
  return `${head}This method is localtune's own (PEFT has no loader for it): use it with localtune, e.g.\n\n\`\`\`sh\necho "The food was great" | localtune predict --adapter ${name}\n\`\`\`\n`;
}

async function deleteAdapter(name) {
  // One click used to delete at once (the autosave vanished so): ask first.
  if (!window.confirm(`Delete “${name}”? It is kept only in this browser; download it first to keep a copy.`)) return;
  await storeDelete(name);
  await showSaved();
}

// ---------------------------------------------------------------------------------------------
// 7. merging saved adapters (in the worker, on this device)

const MERGE_HELP = {
  linear: 'A weighted average of the adapters’ updates (the weights are normalised to sum to 1).',
  'task-arithmetic': 'Adds the adapters’ updates as task vectors, each times its weight, all times lambda.',
  ties: 'Keeps each update’s largest entries (density), elects a sign per entry and averages the entries that agree with it.',
  'dare-ties': 'Drops entries of each update at random (keeping density, rescaled), then elects signs and averages as TIES does.',
  'dare-linear': 'Drops entries of each update at random (keeping density, rescaled) and adds what remains.',
  'magnitude-prune': 'Keeps each update’s largest entries (density) and adds what remains.',
  breadcrumbs: 'Drops both the few largest outliers and the smallest entries of each update (keeping density), then adds them.',
  della: 'Drops entries at random with probabilities by magnitude (around density), rescales, then elects signs as TIES does.',
  'model-stock': 'Averages the updates and scales the average by how well they agree (the angle between them); no settings.',
  'delta-guided': 'Weights each entry of each update by its size, |Δ|^(1/temperature), so the adapter that moved it most counts most.',
};

function showMergeHelp() {
  $('merge-help').textContent = MERGE_HELP[$('merge-method').value] || '';
}

function showMergeList(items) {
  const was = new Set([...document.querySelectorAll('#merge-list input:checked')].map((x) => x.value));
  const boxes = items
    .filter((it) => it.name !== 'autosave')
    .map((it) => {
      const box = el('input', { type: 'checkbox', name: 'merge-input', value: it.name, onchange: refreshButtons });
      box.checked = was.has(it.name);
      return el('label', {}, box, ` ${it.name}`);
    });
  $('merge-list').replaceChildren(...(boxes.length ? boxes : [el('span', { class: 'hint' }, 'Save two or more adapters (step 6) to merge them.')]));
}

function mergeSettings() {
  const num = (id) => ($(id).value.trim() === '' ? null : Number($(id).value));
  const w = $('merge-weights').value.trim();
  return {
    weights: w === '' ? null : w.split(',').map((x) => Number(x.trim())),
    density: num('merge-density'),
    lambda: num('merge-lambda'),
    temperature: num('merge-temperature'),
    rank: num('merge-rank'),
  };
}

// Loads one adapter's files as the active adapter and evaluates it on the loaded data.
async function evaluateFiles(name, files) {
  await call('loadAdapter', adapterArgs(name, files));
  return call('evaluate');
}

function showMergeResults() {
  const m = state.merge;
  const dataName = state.data?.name || 'the loaded data';
  const t = el('table', { class: 'merge-results' }, el('tr', {}, el('th', {}, 'adapter'), el('th', {}, `accuracy on ${dataName}`), el('th', {}, '')));
  for (const r of m.results) {
    const fill = el('span');
    fill.style.width = `${((r.accuracy ?? 0) * 100).toFixed(1)}%`; // CSSOM: allowed under the page's CSP
    t.append(
      el(
        'tr',
        { class: r.merged ? 'merged' : '', 'data-name': r.name },
        el('td', {}, r.merged ? el('strong', {}, r.name) : r.name),
        el('td', {}, r.accuracy == null ? `– (${r.error})` : `${(r.accuracy * 100).toFixed(1)}%`),
        el('td', {}, el('div', { class: 'bar' }, fill)),
      ),
    );
  }
  const rep = m.report;
  const parts = [`${rep.method} merge of ${rep.inputs.join(', ')}; classifier heads ${rep.heads}`];
  if (rep.svd_relative_error_max > 0) parts.push(`SVD truncation error mean ${rep.svd_relative_error_mean.toExponential(2)}, max ${rep.svd_relative_error_max.toExponential(2)}`);
  $('merge-result').replaceChildren(el('div', { class: 'hint' }, parts.join(' · ')), state.data ? t : el('div', { class: 'hint' }, 'Load a data file (step 2) to compare accuracies.'));
}

async function mergeRun() {
  if (state.merging) return;
  clearError();
  const names = [...document.querySelectorAll('#merge-list input:checked')].map((x) => x.value);
  const method = $('merge-method').value;
  state.merging = true;
  state.merge = null;
  refreshButtons();
  const status = $('merge-status');
  $('merge-result').textContent = '';
  try {
    const stored = [];
    for (const n of names) {
      const it = await readStored(n);
      if (!it) return;
      stored.push(it);
    }
    status.textContent = `merging ${names.length} adapters with ${method}…`;
    const t0 = performance.now();
    const r = await call('merge', { adapters: stored.map((it) => adapterArgs(it.name, it.files)), method, settings: mergeSettings() });
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    const mergedName = (i) => (r.adapters.length > 1 ? `merged (task ${i + 1})` : 'merged');
    const results = [];
    if (state.data) {
      const todo = [...stored.map((it) => ({ name: it.name, files: it.files, merged: false })), ...r.adapters.map((files, i) => ({ name: mergedName(i), files, merged: true }))];
      for (const [i, a] of todo.entries()) {
        status.textContent = `merged in ${secs} s; evaluating ${i + 1}/${todo.length}: ${a.name}…`;
        try {
          const e = await evaluateFiles(a.name, a.files);
          results.push({ name: a.name, merged: a.merged, accuracy: e.accuracy, macro_f1: e.macro_f1, n: e.n });
        } catch (e) {
          results.push({ name: a.name, merged: a.merged, accuracy: null, error: e.message });
        }
      }
    }
    // The merged adapter stays the active one: step 5 evaluates and classifies with it.
    await call('loadAdapter', adapterArgs(mergedName(0), r.adapters[0]));
    state.trained = true;
    state.merge = { method, inputs: names, report: r.report, adapters: r.adapters, results };
    showMergeResults();
    status.textContent = `merged in ${secs} s${state.data ? '; evaluated' : ''}`;
    document.body.dataset.merged = 'yes';
  } catch (e) {
    status.textContent = '';
    showError(`Merging failed: ${e.message}`);
  } finally {
    state.merging = false;
    refreshButtons();
  }
}

function mergedName() {
  return $('merge-name').value.trim() || `${state.merge.method}-merge-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}`;
}

async function mergeSave() {
  clearError();
  const m = state.merge;
  if (!m) return;
  const name = mergedName();
  const merged = m.results.filter((r) => r.merged);
  try {
    for (const [i, files] of m.adapters.entries()) {
      await storePut({
        name: m.adapters.length > 1 ? `${name}-task-${i + 1}` : name,
        created: Date.now(),
        method: `${m.method} merge of ${m.inputs.join(' + ')}`,
        labels: m.report.labels[i],
        accuracy: merged[i]?.accuracy ?? null,
        files: files.map(asStored),
      });
    }
    $('merge-name').value = '';
    await showSaved();
  } catch (e) {
    showError(`Could not save the merged adapter: ${e.message}`);
  }
}

function mergeDownload() {
  const m = state.merge;
  if (!m) return;
  const name = mergedName();
  const entries = m.adapters.flatMap((files, i) =>
    files.map((f) => ({ name: m.adapters.length > 1 ? `${name}/task-${i + 1}/${f.name}` : `${name}/${f.name}`, data: new Uint8Array(f.bytes) })),
  );
  download(`${name}.zip`, makeZip(entries), 'application/zip');
}

// ---------------------------------------------------------------------------------------------
// 8. transfer from saved adapters: rank them, ScaLearn on top of them, distill from them

const SCORE_HELP = {
  logme: 'LogME: how well the source’s features fit your labels with a linear model (the evidence of a Bayesian linear model on them).',
  leep: 'LEEP: how well the source’s predictions map onto your labels (how likely your labels are through its predicted distribution); usable when the label sets differ.',
  nce: 'NCE: how well the source’s predicted labels map onto yours (the negative conditional entropy of your labels given them); usable when the label sets differ.',
};
const SCORE_NAMES = { logme: 'LogME', leep: 'LEEP', nce: 'NCE' };

const SCALEARN_HELP = {
  scalearn: 'ScaLearn: a vector of scales per source in every layer (one scale per feature).',
  'scalearn-uniform': 'ScaLearnUniform: one scalar per source in every layer.',
  'scalearn++': 'ScaLearn++: one vector of scales per source, shared across all layers.',
  'scalearn-uniform++': 'ScaLearnUniform++: one scalar per source, shared across all layers (the fewest values).',
};

function showScoreHelp() {
  $('rank-help').textContent = SCORE_HELP[$('rank-score').value] || '';
}
function showScaLearnHelp() {
  $('scalearn-help').textContent = SCALEARN_HELP[$('scalearn-variant').value] || '';
}

// What a stored adapter's files say about it: method (and placement), labels.
function adapterMeta(files) {
  const dec = new TextDecoder();
  const json = (n) => {
    const f = files.find((x) => x.name === n);
    return f ? JSON.parse(dec.decode(f.bytes)) : null;
  };
  try {
    const meta = json('localtune.json');
    const config = json('adapter_config.json') || {};
    const peft = { LORA: 'lora', IA3: 'ia3' }[config.peft_type];
    return {
      method: meta?.method ?? config.localtune_method?.method ?? peft ?? config.peft_type ?? 'unknown method',
      placement: meta?.placement ?? config.localtune_method?.placement ?? null,
      labels: meta?.labels ?? null,
    };
  } catch {
    return { method: 'unreadable files', placement: null, labels: null };
  }
}

function showTransferList(items) {
  const was = new Set(pickedSources());
  const rows = items
    .filter((it) => it.name !== 'autosave')
    .map((it) => {
      const m = adapterMeta(it.files);
      const box = el('input', { type: 'checkbox', name: 'transfer-source', value: it.name, onchange: refreshButtons });
      box.checked = was.has(it.name);
      const method = m.placement ? `${m.method} (${m.placement})` : m.method;
      return el('label', { 'data-name': it.name }, box, ` ${it.name} `, el('span', { class: 'meta' }, `— ${method}; labels ${m.labels ? m.labels.join(', ') : 'not recorded'}`));
    });
  $('transfer-list').replaceChildren(...(rows.length ? rows : [el('span', { class: 'hint' }, 'Save adapters (step 6) or add adapter files below to use them as sources.')]));
}

const pickedSources = () => [...document.querySelectorAll('#transfer-list input:checked')].map((x) => x.value);

// The picked sources' files as the worker takes them; null after saying why one cannot be read.
async function readSources() {
  const out = [];
  for (const n of pickedSources()) {
    const it = await readStored(n);
    if (!it) return null;
    out.push(adapterArgs(n, it.files));
  }
  return out;
}

// The entries of a .zip (stored, or deflated through the browser's own DecompressionStream).
async function readZip(buf) {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let end = -1;
  for (let p = buf.length - 22; p >= Math.max(0, buf.length - 22 - 65535); p--) {
    if (dv.getUint32(p, true) === 0x06054b50) {
      end = p;
      break;
    }
  }
  if (end < 0) throw new Error('not a zip file');
  const count = dv.getUint16(end + 10, true);
  let p = dv.getUint32(end + 16, true);
  const dec = new TextDecoder();
  const out = [];
  for (let i = 0; i < count; i++) {
    if (p + 46 > buf.length || dv.getUint32(p, true) !== 0x02014b50) throw new Error('a damaged zip file');
    const method = dv.getUint16(p + 10, true);
    const size = dv.getUint32(p + 20, true);
    const nameLen = dv.getUint16(p + 28, true);
    const local = dv.getUint32(p + 42, true);
    const name = dec.decode(buf.subarray(p + 46, p + 46 + nameLen));
    p += 46 + nameLen + dv.getUint16(p + 30, true) + dv.getUint16(p + 32, true);
    if (name.endsWith('/') || name.startsWith('__MACOSX/')) continue;
    const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
    const raw = buf.subarray(start, start + size);
    let data;
    if (method === 0) data = raw;
    else if (method === 8 && typeof DecompressionStream === 'function') {
      data = new Uint8Array(await new Response(new Blob([raw]).stream().pipeThrough(new DecompressionStream('deflate-raw'))).arrayBuffer());
    } else throw new Error(`${name}: compression method ${method} is not supported`);
    out.push({ name, data });
  }
  return out;
}

const ADAPTER_FILES = ['adapter_config.json', 'adapter_model.safetensors', 'localtune.json'];

// Adapter files from the computer (loose files, a folder, or zips of folders) kept in the browser's
// storage beside the saved adapters, under their folder's name.
async function addAdapterFiles(list) {
  clearError();
  const groups = new Map(); // folder → {name, files}
  const add = (key, name, file, bytes) => {
    if (!ADAPTER_FILES.includes(file)) return;
    if (!groups.has(key)) groups.set(key, { name, files: [] });
    groups.get(key).files.push({ name: file, bytes });
  };
  try {
    for (const f of list) {
      if (/\.zip$/i.test(f.name)) {
        for (const e of await readZip(new Uint8Array(await f.arrayBuffer()))) {
          const parts = e.name.split('/');
          const file = parts.pop();
          const name = parts.length ? parts.at(-1) : f.name.replace(/\.zip$/i, '');
          add(`${f.name}/${parts.join('/')}`, name, file, e.data.slice().buffer);
        }
      } else {
        const parts = (f.webkitRelativePath || '').split('/').slice(0, -1);
        add(parts.join('/'), parts.at(-1) || 'added adapter', f.name, await f.arrayBuffer());
      }
    }
    if (!groups.size) throw new Error(`no adapter files among them (an adapter is ${ADAPTER_FILES.join(', ')})`);
    const taken = new Set((await storeAll()).map((it) => it.name));
    const added = [];
    for (const g of groups.values()) {
      const missing = ADAPTER_FILES.slice(0, 2).filter((n) => !g.files.some((f) => f.name === n));
      if (missing.length) throw new Error(`“${g.name}” lacks ${missing.join(' and ')}`);
      const m = adapterMeta(g.files);
      if (m.method === 'unreadable files') throw new Error(`“${g.name}”: adapter_config.json or localtune.json is not valid JSON`);
      let name = g.name;
      for (let i = 2; taken.has(name); i++) name = `${g.name}-${i}`;
      taken.add(name);
      await storePut({ name, created: Date.now(), method: m.placement ? `${m.method} (${m.placement})` : m.method, labels: m.labels, files: g.files });
      added.push(name);
    }
    await showSaved();
    for (const n of added) {
      const box = document.querySelector(`#transfer-list input[value="${CSS.escape(n)}"]`);
      if (box) box.checked = true;
    }
    $('rank-status').textContent = `added ${added.join(', ')}`;
    refreshButtons();
  } catch (e) {
    showTransferError(`Could not add the adapter files: ${e.message}`);
  }
}

function showRank() {
  const r = state.rank;
  if (!r) return;
  const key = $('rank-score').value;
  const rows = [...r.sources].sort((a, b) => b[key] - a[key]);
  const values = rows.map((x) => x[key]);
  const hi = Math.max(...values);
  const lo = Math.min(...values);
  // Scores can be negative (LEEP and NCE always are): the bars span the range of the values shown.
  const width = (v) => (hi > lo ? 8 + (92 * (v - lo)) / (hi - lo) : 100);
  const t = el('table', { class: 'rank' }, el('tr', {}, el('th', {}, '#'), el('th', {}, 'source'), el('th', {}, SCORE_NAMES[key]), el('th', {}, '')));
  rows.forEach((x, i) => {
    const fill = el('span');
    fill.style.width = `${width(x[key]).toFixed(1)}%`; // CSSOM: allowed under the page's CSP
    t.append(
      el(
        'tr',
        { class: i === 0 ? 'best rank-row' : 'rank-row', 'data-name': x.name, 'data-value': String(x[key]) },
        el('td', {}, i + 1),
        el('td', {}, x.name, el('div', { class: 'hint' }, `${x.method}; labels ${x.labels.join(', ')}`)),
        el('td', { class: 'value' }, Number.isFinite(x[key]) ? x[key].toFixed(4) : String(x[key])),
        el('td', {}, el('div', { class: 'bar' }, fill)),
      ),
    );
  });
  const team = r.ensemble[key] || [];
  const teamText =
    team.length > 1
      ? `Best team of two by ${SCORE_NAMES[key]} (chosen greedily on their combined outputs): ${team.map((m) => m.name).join(' + ')} (${team.at(-1).score.toFixed(4)}).`
      : r.sources.length > 1
        ? `No second source improves ${SCORE_NAMES[key]} over ${team[0]?.name} alone.`
        : '';
  $('rank-result').replaceChildren(el('div', { class: 'hint' }, `On ${r.examples} labelled examples of ${state.data?.name || 'the loaded data'} (the whole file); higher is better.`), t, el('div', { class: 'hint' }, teamText));
}

async function rankRun() {
  if (state.training || state.transferBusy) return;
  clearError();
  state.transferBusy = true;
  refreshButtons();
  const status = $('rank-status');
  try {
    const sources = await readSources();
    if (!sources) return;
    status.textContent = `scoring ${sources.length} source(s)…`;
    const t0 = performance.now();
    state.rank = await call('rankSources', { sources, maxLen: Number($('max-len').value) });
    showRank();
    status.textContent = `scored in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    document.body.dataset.ranked = String((Number(document.body.dataset.ranked) || 0) + 1);
  } catch (e) {
    status.textContent = '';
    showTransferError(`Ranking failed: ${e.message}`);
  } finally {
    state.transferBusy = false;
    refreshButtons();
  }
}

const optionalNumber = (id) => ($(id).value.trim() === '' ? null : Number($(id).value));

async function scalearnRun() {
  if (state.training) return;
  clearError();
  const sources = await readSources();
  if (!sources) return;
  const s = { ...settings(), method: $('scalearn-variant').value, lr: optionalNumber('scalearn-lr'), scalearn_dropout: Number($('scalearn-dropout').value) };
  $('scalearn-info').textContent = '';
  await runTraining(
    'scalearn',
    () => call('startTraining', { settings: s, sources }),
    (info) => {
      $('scalearn-info').dataset.trainable = String(info.trainable);
      $('scalearn-info').textContent = `${info.method} over ${info.sources.join(' + ')}: ${info.trainable.toLocaleString()} trainable values (the sources’ ${info.frozen_source_values.toLocaleString()} stay frozen)`;
      return describeRun(info);
    },
  );
}

async function distillRun() {
  if (state.training) return;
  clearError();
  const sources = await readSources();
  if (!sources) return;
  const args = { settings: settings(), sources, weighting: $('distill-weighting').value, score: $('distill-score').value, alpha: Number($('distill-alpha').value) };
  $('distill-info').textContent = '';
  await runTraining(
    'distill',
    () => call('startDistill', args),
    (info) => {
      const t = el('table', { class: 'teachers' }, el('tr', {}, el('th', {}, 'teacher'), el('th', {}, SCORE_NAMES[info.score]), el('th', {}, 'weight')));
      for (const x of info.teachers) t.append(el('tr', { 'data-name': x.name }, el('td', {}, x.name), el('td', { class: 'value' }, x.score.toFixed(4)), el('td', { class: 'value' }, x.weight.toFixed(3))));
      $('distill-info').replaceChildren(
        el('div', {}, `${info.method} student, ${info.weighting} teachers, alpha ${info.alpha}: ${info.labelled} labelled and ${info.unlabelled} unlabelled texts; ${info.trainable.toLocaleString()} trainable values`),
        t,
      );
      return `distilling: ${describeRun(info)}`;
    },
  );
}

async function loadUnlabelledFile(file) {
  clearError();
  try {
    const bytes = await file.arrayBuffer();
    state.unlabelled = await call('loadUnlabelled', { bytes, name: file.name }, [bytes]);
    $('unlabelled-info').textContent = `${state.unlabelled.texts} unlabelled texts from ${file.name}`;
    $('unlabelled-clear').hidden = false;
  } catch (e) {
    state.unlabelled = null;
    $('unlabelled-info').textContent = '';
    showTransferError(`The unlabelled texts could not be read: ${e.message}`);
  }
}

async function clearUnlabelled() {
  try {
    await call('clearUnlabelled');
    state.unlabelled = null;
    $('unlabelled-info').textContent = '';
    $('unlabelled-clear').hidden = true;
    $('unlabelled-file').value = '';
  } catch (e) {
    showTransferError(e.message);
  }
}

// ---------------------------------------------------------------------------------------------
// wiring

$('model-load').addEventListener('click', loadServedModel);
$('model-files').addEventListener('change', (e) => loadLocalModel(e.target.files));
$('model-folder').addEventListener('change', (e) => loadLocalModel(e.target.files));
$('sim-run').addEventListener('click', compareSentences);
$('data-file').addEventListener('change', (e) => e.target.files[0] && loadFile(e.target.files[0]));
const drop = $('drop');
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const f = e.dataTransfer.files[0];
  if (f && !state.training) loadFile(f);
});
$('method').addEventListener('change', showMethodOptions);
$('train-start').addEventListener('click', startTraining);
$('train-stop').addEventListener('click', () => call('stop'));
$('eval-run').addEventListener('click', evaluate);
$('try-run').addEventListener('click', tryText);
$('try-text').addEventListener('keydown', (e) => e.key === 'Enter' && !$('try-run').disabled && tryText());
$('save-run').addEventListener('click', saveAdapter);
$('merge-method').addEventListener('change', showMergeHelp);
$('merge-run').addEventListener('click', mergeRun);
$('merge-save').addEventListener('click', mergeSave);
$('merge-download').addEventListener('click', mergeDownload);
$('transfer-files').addEventListener('change', (e) => e.target.files.length && addAdapterFiles([...e.target.files]).then(() => (e.target.value = '')));
$('transfer-folder').addEventListener('change', (e) => e.target.files.length && addAdapterFiles([...e.target.files]).then(() => (e.target.value = '')));
$('rank-score').addEventListener('change', () => {
  showScoreHelp();
  showRank();
});
$('rank-run').addEventListener('click', rankRun);
$('scalearn-variant').addEventListener('change', showScaLearnHelp);
$('scalearn-run').addEventListener('click', scalearnRun);
$('distill-run').addEventListener('click', distillRun);
$('unlabelled-file').addEventListener('change', (e) => e.target.files[0] && loadUnlabelledFile(e.target.files[0]));
$('unlabelled-clear').addEventListener('click', clearUnlabelled);
$('transfer-stop').addEventListener('click', () => call('stop'));

// Offline use: the service worker keeps the last good copy of the app and the model.
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('sw.js').catch((e) => console.warn('no offline support:', e.message));
}

showMethodOptions();
showMergeHelp();
showScoreHelp();
showScaLearnHelp();
drawChart();
refreshButtons();
// The two modes: the sentence classifier (steps 1–8) and the chat model.
function showMode(mode) {
  $('classify-mode').hidden = mode !== 'classify';
  $('chat-mode').hidden = mode !== 'chat';
  $('mode-classify').setAttribute('aria-selected', String(mode === 'classify'));
  $('mode-chat').setAttribute('aria-selected', String(mode === 'chat'));
}
$('mode-classify').addEventListener('click', () => showMode('classify'));
$('mode-chat').addEventListener('click', () => showMode('chat'));
showMode(params.get('mode') === 'chat' ? 'chat' : 'classify');
await startDevice();
await loadIndex();
initChat({ call, listeners, index, el, fmtBytes, fmtSecs, download });
await showSaved();
document.body.dataset.ready = 'yes';
if (params.get('autoload') === '1') await loadServedModel();
