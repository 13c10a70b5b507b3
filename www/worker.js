// The worker: runs the wasm (model, training, evaluation) so the page stays responsive.
// Protocol: the page posts {id, cmd, args}; the worker answers {id, ok, result} or {id, ok: false, error}.
// During training it also posts {event: "progress", ...} after every step.
import init, * as lt from './pkg/localtune.js';

const ready = init();
let stopRequested = false;
let training = false;
let replying = false;
let replyStop = false;

// Lets queued messages (a Stop) run between steps, also on the CPU fallback, whose steps never wait.
const yieldToEvents = () => new Promise((resolve) => setTimeout(resolve, 0));

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function fetchText(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
  return r.text();
}

// Saved adapters as the wasm takes them: weights as a Uint8Array, no meta as undefined.
const adapterInputs = (list) => (list || []).map((a) => ({ ...a, weights: new Uint8Array(a.weights), meta: a.meta ?? undefined }));

const commands = {
  async init({ prefer }) {
    return JSON.parse(await lt.initDevice(prefer || 'gpu'));
  },
  // Either {urls: {config, weights, tokenizer, modules?, pooling?}} (served with the page) or the
  // files' contents; modules / pooling are a sentence-transformers folder's modules.json and
  // 1_Pooling/config.json, when it has them.
  async loadModel({ name, urls, config, weights, tokenizer, modules, pooling }) {
    if (urls) {
      [config, weights, tokenizer] = await Promise.all([fetchText(urls.config), fetchBytes(urls.weights), fetchText(urls.tokenizer)]);
      if (urls.modules) modules = await fetchText(urls.modules);
      if (urls.pooling) pooling = await fetchText(urls.pooling);
    }
    return JSON.parse(await lt.loadModel(config, new Uint8Array(weights), tokenizer, name, modules ?? undefined, pooling ?? undefined));
  },
  async embed({ texts, maxLen }) {
    return JSON.parse(await lt.embed(JSON.stringify(texts), maxLen || 128));
  },
  async loadData({ bytes, name, skipBad }) {
    return JSON.parse(lt.loadData(new Uint8Array(bytes), name, !!skipBad));
  },
  // sources: saved adapters [{name, config, weights, meta}], combined by a ScaLearn method (ignored
  // by the others).
  async startTraining({ settings, sources }) {
    return JSON.parse(lt.startTraining(JSON.stringify(settings), adapterInputs(sources)));
  },
  // Scores saved adapters on the loaded data: {examples, labels, sources: [{name, logme, leep, nce,
  // labels, method}], ensemble: {logme, leep, nce: [{name, score}]}}.
  async rankSources({ sources, maxLen }) {
    return JSON.parse(await lt.rankSources(adapterInputs(sources), maxLen || 64));
  },
  async loadUnlabelled({ bytes, name }) {
    return JSON.parse(lt.loadUnlabelled(new Uint8Array(bytes), name));
  },
  async clearUnlabelled() {
    lt.clearUnlabelled();
    return {};
  },
  // A student run trained against the teachers' soft predictions; then `train` as for any run.
  async startDistill({ settings, sources, weighting, score, alpha }) {
    return JSON.parse(await lt.startDistill(JSON.stringify(settings), adapterInputs(sources), weighting, score, alpha));
  },
  async train() {
    if (training) throw new Error('training is already running');
    training = true;
    stopRequested = false;
    const started = performance.now();
    let last = null;
    try {
      for (;;) {
        if (stopRequested) return { stopped: true, last };
        const r = JSON.parse(await lt.trainStep());
        last = r;
        postMessage({ event: 'progress', ...r, elapsed: (performance.now() - started) / 1000 });
        if (r.epoch_end) {
          // Kept by the page under "autosave": a failure later in the run loses at most one epoch.
          const files = (await lt.exportAdapter()).map(([name, bytes]) => ({ name, bytes }));
          postMessage({ event: 'autosave', files });
        }
        if (r.done) return { stopped: false, last };
        await yieldToEvents();
      }
    } finally {
      training = false;
    }
  },
  async stop() {
    stopRequested = true;
    return { stopping: training };
  },
  async evaluate() {
    return JSON.parse(await lt.evaluate());
  },
  async predict({ text }) {
    return JSON.parse(await lt.predict(text));
  },
  async exportAdapter() {
    const files = await lt.exportAdapter();
    return files.map(([name, bytes]) => ({ name, bytes }));
  },
  async loadAdapter({ config, weights, meta, name }) {
    return JSON.parse(lt.loadAdapter(config, new Uint8Array(weights), meta ?? undefined, name));
  },
  // adapters: [{name, config, weights, meta}] (a saved adapter's three files); settings: {weights,
  // density, lambda, temperature, rank}. Returns {report, adapters: [[{name, bytes}…]…]}, one file
  // list per merged adapter (one per task when the label sets differ). Nothing is loaded: evaluate
  // a merged adapter with loadAdapter + evaluate.
  async merge({ adapters, method, settings }) {
    const r = await lt.mergeAdapters(adapterInputs(adapters), method, JSON.stringify(settings || {}));
    return { report: JSON.parse(r.report), adapters: r.adapters.map((files) => files.map(([name, bytes]) => ({ name, bytes }))) };
  },
  // The chat model mode. A chat model comes as {url} (served with the page) or {bytes} (a GGUF file).
  async loadChatModel({ url, bytes, name }) {
    if (url) bytes = await fetchBytes(url);
    return JSON.parse(lt.loadChatModel(new Uint8Array(bytes), name));
  },
  // The assistant's reply to messages [{role, content}], streamed as {event: "chat-text", text} after
  // every token; stops on chatStop. Returns {text, ids, prompt_tokens, seconds, adapter, stopped}.
  async chatReply({ messages, settings }) {
    if (replying) throw new Error('a reply is already being written');
    replying = true;
    replyStop = false;
    try {
      const start = JSON.parse(lt.chatReplyStart(JSON.stringify(messages), JSON.stringify(settings || {})));
      for (;;) {
        const r = JSON.parse(await lt.chatReplyNext());
        postMessage({ event: 'chat-text', text: r.text });
        if (r.done || replyStop) return { ...r, prompt_tokens: start.prompt_tokens, stopped: !r.done };
        await yieldToEvents();
      }
    } finally {
      replying = false;
    }
  },
  async chatStop() {
    replyStop = true;
    return { stopping: replying };
  },
  async loadChatData({ bytes, name, valid }) {
    return JSON.parse(lt.loadChatData(new Uint8Array(bytes), name, valid ?? 0.1));
  },
  async startChatTraining({ settings }) {
    return JSON.parse(lt.startChatTraining(JSON.stringify(settings)));
  },
  // Runs the started fine-tuning to its end or a Stop, posting {event: "chat-progress", ...} per step.
  async chatTrain() {
    if (training) throw new Error('training is already running');
    training = true;
    stopRequested = false;
    const started = performance.now();
    let last = null;
    try {
      for (;;) {
        if (stopRequested) return { stopped: true, last, elapsed: (performance.now() - started) / 1000 };
        const r = JSON.parse(await lt.chatTrainStep());
        last = r;
        const elapsed = (performance.now() - started) / 1000;
        postMessage({ event: 'chat-progress', ...r, elapsed });
        if (r.done) return { stopped: false, last, elapsed };
        await yieldToEvents();
      }
    } finally {
      training = false;
    }
  },
  async exportChatAdapter() {
    const files = await lt.exportChatAdapter();
    return files.map(([name, bytes]) => ({ name, bytes }));
  },
  async loadChatAdapter({ config, weights, name }) {
    return JSON.parse(lt.loadChatAdapter(config, new Uint8Array(weights), name));
  },
  async benchmark({ reps, trainBatch }) {
    return JSON.parse(await lt.benchmark(reps ?? 3, trainBatch ?? 16));
  },
};

// Commands that would change the model, the data or the run underneath a running training loop.
const refusedWhileTraining = new Set([
  'init', 'loadModel', 'loadData', 'startTraining', 'train', 'loadAdapter', 'merge', 'benchmark',
  'rankSources', 'loadUnlabelled', 'clearUnlabelled', 'startDistill',
  'loadChatModel', 'chatReply', 'loadChatData', 'startChatTraining', 'chatTrain', 'loadChatAdapter',
]);
let broken = null;

onmessage = async (e) => {
  const { id, cmd, args } = e.data;
  // A Stop must not wait behind the running training loop.
  if (cmd === 'stop' || cmd === 'chatStop') {
    postMessage({ id, ok: true, result: await commands[cmd]() });
    return;
  }
  try {
    if (broken) throw new Error(`the worker stopped after an internal error (${broken}); reload the page`);
    if (training && refusedWhileTraining.has(cmd)) throw new Error('training is running: stop it first');
    await ready;
    const fn = commands[cmd];
    if (!fn) throw new Error(`unknown command ${cmd}`);
    const result = await fn(args || {});
    postMessage({ id, ok: true, result });
  } catch (err) {
    const message = String(err && err.message ? err.message : err);
    // A trap in the wasm (a panic) leaves its state unusable: say so once and refuse what follows.
    if (err instanceof WebAssembly.RuntimeError) {
      broken = message;
      postMessage({ event: 'fatal', error: message });
    }
    postMessage({ id, ok: false, error: message });
  }
};
