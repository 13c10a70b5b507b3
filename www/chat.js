// The chat model mode: load a GGUF decoder, chat with replies streamed token by token, fine-tune it
// (QLoRA) on the user's chat file, chat again with the adapter, download the adapter. All model work
// runs in the worker; nothing is sent anywhere.
import { makeZip } from './zip.js';

const $ = (id) => document.getElementById(id);

// The question the example chats ask about each review of the classifier's example data.
const EXAMPLE_QUESTION = 'Is this review positive or negative? Answer with one word.\n';

export function initChat({ call, listeners, index, el, fmtBytes, fmtSecs, download }) {
  const chat = {
    model: null, // the loaded model's info
    data: null, // the loaded chat file's info
    messages: [], // the conversation: [{role, content}]
    replying: false,
    training: false,
    trained: false, // an adapter (trained or loaded) is in the worker
    steps: [], // per-step reports of the current run
  };
  window.__localtuneChat = chat; // for tests and the curious

  function stepError(id, msg) {
    const e = $(id);
    e.textContent = msg || '';
    e.hidden = !msg;
    if (msg) e.scrollIntoView({ block: 'nearest' });
  }

  function refresh() {
    const busy = chat.replying || chat.training;
    $('chat-model-load').disabled = busy;
    $('chat-model-file').disabled = busy;
    $('chat-send').disabled = !(chat.model && !busy);
    $('chat-stop').disabled = !chat.replying;
    $('chat-clear').disabled = busy;
    $('chat-use-adapter').disabled = !(chat.trained && !busy);
    $('chat-train').disabled = !(chat.model && chat.data && !busy);
    $('chat-train-stop').disabled = !chat.training;
    $('chat-data-file').disabled = busy || !chat.model;
    $('chat-download').disabled = !(chat.trained && !busy);
    $('chat-adapter-files').disabled = busy || !chat.model;
    document.querySelectorAll('#chat-examples button').forEach((b) => {
      b.disabled = busy || !chat.model;
    });
  }

  // ---- 1. model

  const select = $('chat-model-select');
  for (const m of index.chat_models || []) {
    select.append(el('option', { value: m.id }, `${m.name} (${fmtBytes(m.bytes)})`));
  }
  if (!(index.chat_models || []).length) select.append(el('option', { value: '' }, 'none served: choose a GGUF file'));
  const wanted = new URLSearchParams(location.search).get('chat_model');
  if (wanted) select.value = wanted;

  async function loadModel(args) {
    stepError('chat-model-error', '');
    chat.replying = true; // blocks the buttons while loading
    refresh();
    $('chat-model-info').textContent = 'Loading…';
    try {
      const m = await call('loadChatModel', args);
      chat.model = m;
      chat.trained = false;
      chat.data = null;
      $('chat-use-adapter').checked = false;
      $('chat-data-info').textContent = '';
      $('chat-model-info').textContent = `${m.name}: ${m.layers} layers, hidden ${m.hidden}, ${m.heads} heads (${m.kv_heads} key/value), vocabulary ${m.vocab}, context ${m.context} tokens; file ${fmtBytes(m.file_bytes)}, ${fmtBytes(m.device_bytes)} on ${m.device}.`;
      newChat();
    } catch (e) {
      $('chat-model-info').textContent = '';
      stepError('chat-model-error', `Could not load the chat model: ${e.message}`);
    } finally {
      chat.replying = false;
      refresh();
    }
  }
  $('chat-model-load').addEventListener('click', () => {
    const m = (index.chat_models || []).find((x) => x.id === select.value);
    if (!m) return stepError('chat-model-error', 'No chat model is served with this page: choose a GGUF file from your computer.');
    loadModel({ url: m.url, name: m.name });
  });
  $('chat-model-file').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    const bytes = await f.arrayBuffer();
    loadModel({ bytes, name: f.name });
  });

  // ---- 2. chat

  const log = $('chat-log');
  function bubble(role, text) {
    const b = el('div', { class: `msg ${role}` }, el('span', { class: 'who' }, role === 'user' ? 'You' : 'Model'), el('span', { class: 'text' }, text));
    log.append(b);
    log.scrollTop = log.scrollHeight;
    return b.querySelector('.text');
  }
  function newChat() {
    chat.messages = [];
    log.replaceChildren();
    $('chat-status').textContent = '';
  }
  $('chat-clear').addEventListener('click', newChat);

  async function send() {
    const text = $('chat-input').value.trim();
    if (!text || !chat.model || chat.replying || chat.training) return;
    stepError('chat-error', '');
    $('chat-input').value = '';
    chat.messages.push({ role: 'user', content: text });
    bubble('user', text);
    const out = bubble('assistant', '…');
    out.parentElement.classList.add('streaming');
    chat.replying = true;
    chat.textEvents = 0;
    refresh();
    const onText = (m) => {
      if (m.event === 'chat-text') {
        chat.textEvents += 1;
        out.textContent = m.text;
        log.scrollTop = log.scrollHeight;
      }
    };
    listeners.push(onText);
    const temperature = Number($('chat-temperature').value) || 0;
    const settings = {
      temperature,
      top_p: Number($('chat-top-p').value) || 1,
      max_new_tokens: Math.max(1, Number($('chat-max-new').value) || 128),
      seed: Math.floor(Math.random() * 2 ** 31),
      use_adapter: $('chat-use-adapter').checked,
    };
    try {
      const r = await call('chatReply', { messages: chat.messages, settings });
      out.textContent = r.text;
      chat.messages.push({ role: 'assistant', content: r.text });
      const n = r.ids.length;
      $('chat-status').textContent = `${n} tokens in ${r.seconds.toFixed(1)} s (${(n / Math.max(r.seconds, 1e-3)).toFixed(1)} tokens/s, after a prompt of ${r.prompt_tokens})${r.adapter ? ', with the adapter' : ''}${r.stopped ? ', stopped' : ''}.`;
      chat.lastReply = r;
    } catch (e) {
      chat.messages.pop();
      out.parentElement.remove();
      stepError('chat-error', `No reply: ${e.message}`);
    } finally {
      out.parentElement?.classList.remove('streaming');
      listeners.splice(listeners.indexOf(onText), 1);
      chat.replying = false;
      refresh();
    }
  }
  $('chat-send').addEventListener('click', send);
  $('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      send();
    }
  });
  $('chat-stop').addEventListener('click', () => call('chatStop'));

  // ---- 3. fine-tune

  async function loadData(bytes, name) {
    stepError('chat-train-error', '');
    try {
      const valid = Math.min(0.9, Math.max(0, Number($('chat-valid').value) || 0));
      const d = await call('loadChatData', { bytes, name, valid });
      chat.data = d;
      const rows = d.preview.map((p) => el('tr', {}, el('td', {}, p.user), el('td', {}, p.assistant)));
      $('chat-data-info').replaceChildren(
        el('p', {}, `${d.name}: ${d.chats} chats, ${d.train} to train on (${d.answer_tokens} answer tokens), ${d.valid} held out.`),
        el('table', { class: 'preview-table' }, el('tr', {}, el('th', {}, 'user'), el('th', {}, 'assistant')), ...rows),
      );
    } catch (e) {
      chat.data = null;
      $('chat-data-info').textContent = '';
      stepError('chat-train-error', `Could not read the chat file: ${e.message}`);
    }
    refresh();
  }
  $('chat-data-file').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (f) await loadData(await f.arrayBuffer(), f.name);
    e.target.value = '';
  });
  // Examples: the classifier's example reviews, asked as questions with the label as the answer.
  for (const d of index.data || []) {
    if (!d.name.endsWith('.jsonl')) continue;
    const b = el('button', { class: 'small', 'data-url': d.url }, `${d.name.replace(/\.jsonl$/, '')} reviews as questions`);
    b.addEventListener('click', async () => {
      const r = await fetch(d.url);
      const lines = (await r.text()).split('\n').filter((l) => l.trim()).slice(0, 200);
      const chats = lines.map((l) => {
        const row = JSON.parse(l);
        return JSON.stringify({ messages: [{ role: 'user', content: EXAMPLE_QUESTION + row.text }, { role: 'assistant', content: String(row.label) }] });
      });
      await loadData(new TextEncoder().encode(chats.join('\n') + '\n').buffer, `${d.name.replace(/\.jsonl$/, '')}-chats.jsonl`);
    });
    $('chat-examples').append(b);
  }

  listeners.push((m) => {
    if (m.event !== 'chat-progress') return;
    chat.steps.push(m);
    $('chat-train-progress').value = m.step / m.total_steps;
    const left = (m.elapsed / m.step) * (m.total_steps - m.step);
    $('chat-train-status').textContent = `step ${m.step} of ${m.total_steps}, epoch ${m.epoch}, loss ${m.loss.toFixed(3)}; ${fmtSecs(m.elapsed)} elapsed, about ${fmtSecs(left)} left`;
    if (m.epoch_end) {
      const e = m.epoch_end;
      $('chat-train-info').append(el('p', {}, `Epoch ${e.epoch}: training loss ${e.train_loss.toFixed(4)}${e.valid_loss == null ? '' : `, held-out loss ${e.valid_loss.toFixed(4)}`}, ${e.tokens_per_s.toFixed(0)} tokens/s.`));
    }
  });

  $('chat-train').addEventListener('click', async () => {
    stepError('chat-train-error', '');
    const lr = Number($('chat-lr').value);
    if (!(lr > 0 && lr < 1)) return stepError('chat-train-error', `The learning rate "${$('chat-lr').value}" must be a number between 0 and 1, such as 1e-3.`);
    const settings = {
      epochs: Math.max(1, Number($('chat-epochs').value) || 1),
      batch: Math.max(1, Number($('chat-batch').value) || 8),
      lr,
      r: Math.max(1, Number($('chat-r').value) || 8),
      alpha: Number($('chat-alpha').value) || 16,
    };
    chat.training = true;
    chat.steps = [];
    $('chat-train-info').replaceChildren();
    refresh();
    try {
      const s = await call('startChatTraining', { settings });
      $('chat-train-info').append(el('p', {}, `QLoRA: ${s.trainable.toLocaleString('en')} trainable values (r ${settings.r} on the 7 linears of every layer), ${s.train} chats, ${s.total_steps} steps.`));
      chat.trained = true;
      const r = await call('chatTrain');
      $('chat-train-status').textContent = r.stopped ? `Stopped after step ${r.last?.step ?? 0}; the adapter keeps what it learned so far.` : `Done: ${r.last.step} steps in ${fmtSecs(r.elapsed)}.`;
      $('chat-use-adapter').checked = true;
    } catch (e) {
      stepError('chat-train-error', `Fine-tuning stopped: ${e.message}`);
    } finally {
      chat.training = false;
      chat.runsDone = (chat.runsDone || 0) + 1;
      refresh();
    }
  });
  $('chat-train-stop').addEventListener('click', () => call('stop'));

  // ---- 4. save

  $('chat-download').addEventListener('click', async () => {
    const name = ($('chat-save-name').value || 'chat-lora').replace(/[^\w.-]+/g, '-');
    const files = await call('exportChatAdapter');
    download(`${name}.zip`, makeZip(files.map((f) => ({ name: `${name}/${f.name}`, data: new Uint8Array(f.bytes) }))), 'application/zip');
    $('chat-save-info').textContent = `${name}.zip: ${files.map((f) => `${f.name} (${fmtBytes(f.bytes.byteLength)})`).join(', ')}.`;
  });
  $('chat-adapter-files').addEventListener('change', async (e) => {
    const files = [...e.target.files];
    const config = files.find((f) => f.name.endsWith('.json'));
    const weights = files.find((f) => f.name.endsWith('.safetensors'));
    e.target.value = '';
    if (!config || !weights) return stepError('chat-error', 'Choose both files of the adapter: adapter_config.json and adapter_model.safetensors.');
    try {
      const a = await call('loadChatAdapter', { config: await config.text(), weights: await weights.arrayBuffer(), name: config.name });
      chat.trained = true;
      $('chat-use-adapter').checked = true;
      $('chat-save-info').textContent = `Loaded a LoRA adapter of rank ${a.r} on ${a.targets.join(', ')} (${a.trainable.toLocaleString('en')} values).`;
      stepError('chat-error', '');
    } catch (e2) {
      stepError('chat-error', `Could not load the adapter: ${e2.message}`);
    }
    refresh();
  });

  refresh();
  return chat;
}
