// Ferry's console: reads and acts through /api/* with the session cookie; every state change
// carries the session's CSRF token. Text from webhooks and registries is only ever set as
// text (never parsed as HTML), and the page's CSP allows no inline script.
'use strict';

const CSRF = document.querySelector('meta[name="ferry-csrf"]').content;
const REFRESH_MS = 3000;
const RANK = { viewer: 1, approver: 2, operator: 3, admin: 4 };
let me = null;
let busy = false;

class ApiError extends Error {
  constructor(message, status, kind) { super(message); this.status = status; this.kind = kind; }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') { headers['Content-Type'] = 'application/json'; headers['X-Ferry-CSRF'] = CSRF; }
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    // The session ended (expired, or the key changed): sign in again and come back here.
    const ended = me && me.session_expires_at && Date.now() / 1000 >= me.session_expires_at;
    const expired = ended || /expired/.test(data.error || '') ? '&expired=1' : '';
    location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search) + expired);
    throw new ApiError(data.error || 'signed out', 401, 'unauthorized');
  }
  if (!response.ok) throw new ApiError(data.error || response.statusText, response.status, data.class);
  return data;
}

// el('div', {class: 'x', text: 'y', onclick: f, data: {k: v}}, child, …)
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'class') node.className = value;
    else if (key === 'data') for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function flash(message, isError) {
  const box = document.getElementById('flash');
  box.textContent = message;
  box.className = isError ? 'error' : '';
}

function role(pipeline, stage) {
  const p = me && me.pipelines[pipeline];
  return (p && (stage ? p.stages[stage] : p.role)) || null;
}

function can(pipeline, stage, needed) {
  return (RANK[role(pipeline, stage)] || 0) >= RANK[needed];
}

function shortDigest(digest) {
  return digest ? digest.replace(/^sha256:/, '').slice(0, 12) : '';
}

function ago(ms) {
  if (!ms) return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}

function when(ms) {
  return ms ? el('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString(), text: ago(ms) }) : '';
}

function digestView(digest, kind = 'current-digest') {
  if (!digest) return el('span', { class: 'empty', text: 'none' });
  const copy = el('button', {
    class: 'copy', type: 'button', title: 'Copy ' + digest, text: 'copy',
    onclick: async (event) => {
      event.preventDefault();
      try { await navigator.clipboard.writeText(digest); flash('Copied ' + digest); }
      catch (_) { flash('Copy failed: select the digest in the details instead', true); }
    },
  });
  return el('span', { class: 'digest-box' },
    el('code', { class: 'digest ' + kind, title: digest, data: { digest } }, shortDigest(digest)), copy);
}

function stateView(state) {
  return el('span', { class: 'state state-' + state, text: state.replace(/_/g, ' ') });
}

function who(record) {
  if (!record) return '';
  const parts = [];
  if (record.triggered_by) parts.push('promoted by ' + record.triggered_by);
  else parts.push(record.trigger);
  if (record.approvals && record.approvals.length) parts.push('approved by ' + record.approvals.map((a) => a.by).join(', '));
  return parts.join('; ');
}

function build(record, entry) {
  const number = (entry && entry.build_number) || (record && record.build_number);
  const id = record && record.build_id;
  if (!number && !id) return '';
  return number ? (id ? `${number} (build ${id})` : number) : 'build ' + id;
}

// A dialog asking to confirm an action; resolves to the reason typed (or '') when confirmed,
// null when cancelled.
function confirmAction({ title, text, ok, reason }) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = ok;
  const input = document.getElementById('confirm-reason');
  input.value = '';
  for (const node of [input, document.getElementById('confirm-reason-label')]) node.classList.toggle('hidden', !reason);
  busy = true;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      busy = false;
      resolve(dialog.returnValue === 'ok' ? input.value.trim() : null);
    }, { once: true });
    dialog.showModal();
  });
}

async function act(label, run) {
  try {
    const message = await run();
    if (message) flash(message);
  } catch (error) {
    if (error.status !== 401) flash(`${label} refused: ${error.message}`, true);
  }
  await refresh();
}

async function approve(record) {
  await act('Approval', async () => {
    const answer = await api('POST', `/api/promotions/${encodeURIComponent(record.id)}/approve`);
    if (answer.already_counted) return `You had already approved ${record.id}.`;
    return answer.released
      ? `Approved ${record.id}: promoting ${shortDigest(record.digest)} to ${record.stage}.`
      : `Approved ${record.id} (${answer.approvals} of ${answer.required}).`;
  });
}

async function reject(record) {
  const reason = await confirmAction({
    title: `Reject ${shortDigest(record.digest)} for ${record.stage}?`,
    text: `${record.pipeline}: ${record.digest}${record.tag ? ' (' + record.tag + ')' : ''} will not be promoted to ${record.stage}.`,
    ok: 'Reject', reason: true,
  });
  if (reason === null) return;
  await act('Rejection', async () => {
    await api('POST', `/api/promotions/${encodeURIComponent(record.id)}/reject`, reason ? { reason } : {});
    return `Rejected ${record.id}.`;
  });
}

async function rollback(pipeline, stage, to) {
  const ok = await confirmAction({
    title: `Roll back ${stage} of ${pipeline}?`,
    text: `${stage} will run ${to.digest}${to.tag ? ' (' + to.tag + ')' : ''} again, the digest it ran before.`,
    ok: `Roll back to ${shortDigest(to.digest)}`, reason: false,
  });
  if (ok === null) return;
  await act('Rollback', async () => {
    const record = await api('POST', '/api/rollback', { pipeline, stage, to: to.digest });
    return `Rolled ${stage} back to ${shortDigest(record.digest)} (${record.state.replace(/_/g, ' ')}).`;
  });
}

async function redrive(letter) {
  await act('Redrive', async () => {
    await api('POST', `/api/dlq/${encodeURIComponent(letter.id)}/redrive`);
    return `Redriven ${letter.id}: it is queued again.`;
  });
}

function pendingView(pipeline, stage, pending) {
  const buttons = [];
  if (can(pipeline, stage, 'approver') && pending.state === 'awaiting_approval') {
    buttons.push(el('button', { class: 'primary approve', type: 'button', onclick: () => approve(pending), text: 'Approve' }));
    buttons.push(el('button', { class: 'danger reject', type: 'button', onclick: () => reject(pending), text: 'Reject…' }));
  }
  return el('div', { class: 'pending', data: { promotion: pending.id } },
    el('div', {}, digestView(pending.digest, 'pending-digest'), pending.tag ? ' ' + pending.tag : '', ' ',
      el('a', { href: '/promotions/' + encodeURIComponent(pending.id), text: 'details' })),
    el('div', { class: 'waiting', text: pending.waiting }),
    pending.triggered_by ? el('div', { class: 'muted', text: 'promoted by ' + pending.triggered_by }) : '',
    buttons.length ? el('div', { class: 'actions' }, buttons) : '');
}

function deployView(stage) {
  if (stage.deploy_failed) {
    return el('span', { class: 'deploy-failed', text: 'deploy failed: ' + (stage.deploy_failed.error || '') });
  }
  const d = stage.deployment;
  if (d && stage.current && (!d.digest || d.digest === stage.current.digest)) {
    return el('span', { class: d.status === 'succeeded' ? 'deploy-ok' : 'deploy-failed', text: `${d.status} (${d.reporter}, ${ago(d.at_ms)})` });
  }
  if (!stage.current) return '';
  return el('span', { class: 'muted', text: stage.notify ? `not reported yet (${stage.notify})` : 'no notifier' });
}

function stageView(pipeline, stage) {
  const current = stage.current;
  const record = stage.current_promotion;
  const facts = current
    ? el('dl', {},
      el('dt', { text: 'digest' }), el('dd', {}, digestView(current.digest)),
      el('dt', { text: 'tag' }), el('dd', { text: current.tag || '—' }),
      build(record, current) ? [el('dt', { text: 'build' }), el('dd', { text: build(record, current) })] : '',
      el('dt', { text: 'since' }), el('dd', {}, when(current.since_ms)),
      el('dt', { text: 'by' }), el('dd', { class: 'by', text: who(record) || '—' }),
      el('dt', { text: 'deploy' }), el('dd', {}, deployView(stage)))
    : el('p', { class: 'empty', text: 'nothing promoted yet' });
  const actions = [];
  if (stage.previous && can(pipeline, stage.name, 'operator')) {
    actions.push(el('button', { class: 'rollback', type: 'button', text: 'Roll back…', onclick: () => rollback(pipeline, stage.name, stage.previous) }));
  }
  actions.push(el('a', { href: `/pipelines/${encodeURIComponent(pipeline)}?stage=${encodeURIComponent(stage.name)}`, text: 'history' }));
  return el('div', { class: 'stage', data: { stage: stage.name } },
    el('h3', {}, el('span', { text: stage.name }), el('span', { class: 'gate', text: stage.gate + ' gate' })),
    el('div', { class: 'target', text: '→ ' + stage.target }),
    facts,
    el('div', { class: 'actions' }, actions),
    stage.pending.map((p) => pendingView(pipeline, stage.name, p)));
}

async function overview() {
  const pipelines = await api('GET', '/api/status');
  if (!pipelines.length) return [el('p', { class: 'empty', text: 'No pipeline you may see. Ask an admin for a grant.' })];
  return pipelines.map((p) => el('section', { class: 'pipeline', data: { pipeline: p.name } },
    el('header', {}, el('h2', {}, el('a', { href: '/pipelines/' + encodeURIComponent(p.name), text: p.name })),
      el('span', { class: 'muted', text: 'from ' + p.source })),
    el('div', { class: 'grid' }, p.stages.map((s) => stageView(p.name, s)))));
}

function historyTable(records) {
  return el('table', { class: 'history' },
    el('thead', {}, el('tr', {}, ['when', 'stage', 'digest', 'tag', 'build', 'state', 'trigger', 'by / approvals', 'error'].map((h) => el('th', { text: h })))),
    el('tbody', {}, records.map((r) => el('tr', { data: { promotion: r.id } },
      el('td', {}, when(r.created_at_ms)),
      el('td', { text: r.stage }),
      el('td', {}, el('a', { href: '/promotions/' + encodeURIComponent(r.id) }, el('code', { title: r.digest, text: shortDigest(r.digest) }))),
      el('td', { text: r.tag || '' }),
      el('td', { text: build(r, null) }),
      el('td', {}, stateView(r.state)),
      el('td', { text: r.trigger }),
      el('td', { text: who(r) }),
      el('td', { text: r.error || '' })))));
}

async function pipelineView(name) {
  const params = new URLSearchParams(location.search);
  const stage = params.get('stage');
  const query = new URLSearchParams({ limit: '100' });
  if (stage) query.set('stage', stage);
  const records = await api('GET', `/api/history/${encodeURIComponent(name)}?${query}`);
  const stages = me.pipelines[name] ? Object.keys(me.pipelines[name].stages) : [];
  const picker = el('select', { id: 'stage-filter', onchange: (e) => {
    const q = e.target.value ? '?stage=' + encodeURIComponent(e.target.value) : '';
    location.assign(`/pipelines/${encodeURIComponent(name)}${q}`);
  } }, el('option', { value: '', text: 'all stages' }), stages.map((s) => el('option', { value: s, text: s, selected: s === stage })));
  return [el('h1', { text: `History of ${name}` }), el('div', { class: 'toolbar' }, picker),
    records.length ? historyTable(records) : el('p', { class: 'empty', text: 'No promotions yet.' })];
}

async function promotionView(id) {
  const shown = await api('GET', `/api/show/${encodeURIComponent(id)}`);
  const r = shown.promotion;
  if (!r) return [el('h1', { text: `Job ${id}` }), el('pre', { text: JSON.stringify(shown.job, null, 2) })];
  const parked = r.state === 'awaiting_approval';
  let waiting = null;
  if (r.state === 'awaiting_approval' || r.state === 'awaiting_gate') {
    const status = await api('GET', `/api/status?pipeline=${encodeURIComponent(r.pipeline)}`).catch(() => []);
    for (const p of status) for (const s of p.stages) for (const pending of s.pending) if (pending.id === r.id) waiting = pending.waiting;
  }
  const buttons = [];
  if (parked && can(r.pipeline, r.stage, 'approver')) {
    buttons.push(el('button', { class: 'primary approve', type: 'button', onclick: () => approve(r), text: 'Approve' }));
    buttons.push(el('button', { class: 'danger reject', type: 'button', onclick: () => reject(r), text: 'Reject…' }));
  }
  const fact = (k, v) => [el('dt', { text: k }), el('dd', {}, v || '—')];
  return [
    el('h1', {}, `${r.pipeline} → ${r.stage}: `, stateView(r.state)),
    waiting ? el('p', { class: 'waiting', id: 'waiting', text: waiting }) : '',
    buttons.length ? el('div', { class: 'actions' }, buttons) : '',
    el('dl', { class: 'facts', id: 'promotion', data: { promotion: r.id } },
      fact('id', r.id), fact('digest', el('code', { text: r.digest })), fact('tag', r.tag), fact('from', r.source), fact('to', r.target),
      fact('build', build(r, null)), fact('trigger', r.trigger), fact('promoted by', r.triggered_by),
      fact('approvals', shown.approvals.map((a) => `${a.by}${a.via ? ' via ' + a.via : ''} (${new Date(a.at_ms).toLocaleString()})`).join('; ')),
      fact('gates', r.gates.length ? el('ul', { class: 'gates' }, r.gates.map((g) => el('li', {},
        `${g.gate}: ${g.decision} — ${g.detail} `, el('span', { class: 'muted' }, when(g.at_ms))))) : ''),
      fact('error', r.error), fact('attempts', String(r.attempts)),
      fact('created', when(r.created_at_ms)), fact('finished', r.finished_at_ms ? when(r.finished_at_ms) : '')),
  ];
}

function letterScope(letter) {
  const p = letter.payload || {};
  return { pipeline: p.pipeline, stage: p.stage };
}

function describeJob(p) {
  const r = p.request || {};
  const image = r.repository ? `${r.repository}${r.tag ? ':' + r.tag : ''}${r.digest ? '@' + r.digest : ''}` : '';
  return [image, p.stage ? '→ ' + p.stage : ''].filter(Boolean).join(' ');
}

async function deadLettersView() {
  const letters = await api('GET', '/api/dlq');
  if (!letters.length) return [el('h1', { text: 'Dead letters' }), el('p', { class: 'empty', text: 'None: every job got through or is still being retried.' })];
  return [el('h1', { text: 'Dead letters' }), el('table', { class: 'dead-letters' },
    el('thead', {}, el('tr', {}, ['failed', 'job', 'pipeline', 'what', 'error', 'attempts', ''].map((h) => el('th', { text: h })))),
    el('tbody', {}, letters.map((letter) => {
      const scope = letterScope(letter);
      const p = letter.payload || {};
      const allowed = scope.pipeline ? can(scope.pipeline, scope.stage, 'operator') : me.everywhere && RANK[me.everywhere] >= RANK.operator;
      return el('tr', { data: { deadLetter: letter.id } },
        el('td', {}, when(letter.failed_at_unix_ms)),
        el('td', {}, el('code', { text: letter.id })),
        el('td', { text: scope.pipeline || '' }),
        el('td', { text: describeJob(p) }),
        el('td', { class: 'error-text', text: letter.last_error }),
        el('td', { text: String(letter.receive_count) }),
        el('td', {}, allowed ? el('button', { class: 'redrive', type: 'button', text: 'Redrive', onclick: () => redrive(letter) }) : ''));
    })))];
}

function route() {
  const path = location.pathname;
  let m;
  if ((m = path.match(/^\/promotions\/([^/]+)$/))) return () => promotionView(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/pipelines\/([^/]+)$/))) return () => pipelineView(decodeURIComponent(m[1]));
  if (path === '/dead-letters') return deadLettersView;
  return overview;
}

async function refresh() {
  if (busy) return;
  try {
    const render = route();
    const nodes = await render();
    const view = document.getElementById('view');
    view.replaceChildren(...[nodes].flat());
    document.getElementById('refreshed').textContent = 'updated ' + new Date().toLocaleTimeString();
    api('GET', '/api/dlq').then((letters) => {
      document.getElementById('dlq-count').textContent = letters.length ? String(letters.length) : '';
    }).catch(() => {});
  } catch (error) {
    if (error.status !== 401) {
      document.getElementById('view').replaceChildren(el('p', { class: 'error', id: 'view-error', text: error.message }));
    }
  }
}

async function start() {
  try {
    me = await api('GET', '/api/me');
  } catch (error) {
    if (error.status !== 401) flash(error.message, true);
    return;
  }
  document.getElementById('who').textContent = me.display && me.display !== me.subject ? `${me.display} (${me.subject})` : me.subject;
  await refresh();
  // Live: short polling (works the same behind API Gateway and Lambda); paused in hidden tabs.
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
}

start();
