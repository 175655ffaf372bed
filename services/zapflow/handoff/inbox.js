// The agent inbox: plain JavaScript over the handoff service's /api/v1 (no framework, no build).
// Whatever comes from customers or agents reaches the page as text nodes, never as markup.
"use strict";

const API = "/api/v1";
const ACTIVITY = ["requested", "message", "assigned", "transferred", "requeued", "reply", "note", "labels",
  "priority", "timeout", "resolved"];
const REFRESH_DEBOUNCE_MS = 200;
const CLOCK_TICK_MS = 30000;
const RECONNECT_MS = 3000;
const REASONS = {
  customer_asked: "asked for a person",
  rule: "a rule handed over",
  llm: "the bot's model handed over",
  faq_misses: "the bot could not answer",
  responder_failures: "the bot failed",
  agent_took: "taken by an agent",
  forwarded: "wrote after it was resolved",
};
const QUEUE_QUERIES = { waiting: "?state=waiting", mine: "?mine=true", open: "" };

const $ = (selector) => document.querySelector(selector);
const state = {
  csrf: "",
  me: null,             // {tenant, email, name}
  templates: [], canned: [], labels: [],
  agents: [],           // [{email, name, online}]
  view: localStorage.getItem("zapflow.inbox.view") || "waiting",
  queue: [],
  knownIds: new Set(),  // conversations seen in the queue, to announce new ones
  open: null,           // the open conversation, see openConversation()
  source: null,
  refreshTimer: null,
  reconnectTimer: null,
  cannedChoices: [], cannedIndex: -1,
  replyKey: null,       // the Idempotency-Key of the text in the reply box: a retry sends one message
  drafts: new Map(),    // conversation id -> what the agent had typed there, kept while they look elsewhere
};

// --- small helpers ---------------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // Outside a secure context (plain HTTP to a non-local host) randomUUID is missing; the same 122 random bits.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function maskPhone(contact) {
  return contact.length > 6 ? `+${contact.slice(0, 2)}…${contact.slice(-4)}` : "+…";
}

function customerOf(conversation) {
  return conversation.customer_name || maskPhone(conversation.contact);
}

function agentName(email) {
  if (!email) return "";
  if (state.me && email === state.me.email) return `${state.me.name} (you)`;
  const agent = state.agents.find((a) => a.email === email);
  return agent ? agent.name : email;
}

function reasonOf(reason) {
  return REASONS[reason] || reason.replaceAll("_", " ");
}

function duration(ms) {
  const minutes = Math.floor(Math.max(0, ms) / 60000);
  if (minutes < 1) return "under a minute";
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

function windowOpen(conversation) {
  return Boolean(conversation.window_closes_at) && Date.parse(conversation.window_closes_at) > Date.now();
}

function windowText(conversation) {
  if (!windowOpen(conversation)) return "window closed";
  const left = Date.parse(conversation.window_closes_at) - Date.now();
  return left < 60000 ? "window closes in less than a minute" : `window closes in ${duration(left)}`;
}

function clock(iso) {
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
}

function timeElement(iso) {
  return el("time", { datetime: iso }, clock(iso));
}

// --- talking to the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function detailOf(answer, response) {
  if (typeof answer.detail === "string") return answer.detail;
  if (Array.isArray(answer.detail)) return answer.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ");
  return `HTTP ${response.status} ${response.statusText}`;
}

async function api(method, path, body, headers = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (method !== "GET") init.headers["X-CSRF-Token"] = state.csrf;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`${API}${path}`, init);
  } catch (error) {
    throw new ApiError(0, `The inbox service did not answer (${error.message}); try again.`);
  }
  if (response.status === 204) return null;
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, detailOf(answer, response));
  return answer;
}

function report(error) {
  if (error.status === 401) {
    showSignIn("Your session ended: sign in again (what you typed is kept).");
    return;
  }
  $("#problem-text").textContent = error.message;
  $("#problem").dataset.shown = "true";
}

function clearProblem() {
  $("#problem").dataset.shown = "false";
  $("#problem-text").textContent = "";
}

// Run the agent's action; a refusal is shown with the API's reason, and nothing the agent typed is cleared.
async function attempt(action) {
  try {
    const result = await action();
    clearProblem();
    return result;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    report(error);
    return undefined;
  }
}

// Run what the page does by itself (refreshing): a failure is shown, a success leaves the agent's last problem.
async function quietly(action) {
  try {
    await action();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    report(error);
  }
}

// --- signing in and out ----------------------------------------------------------------------------

function showSignIn(reason = "") {
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(state.reconnectTimer);
  $("#inbox-view").hidden = true;
  $("#sign-in-view").hidden = false;
  $("#sign-in-problem").textContent = reason;
  $("#sign-in-tenant").value ||= localStorage.getItem("zapflow.inbox.tenant") || "";
  $("#sign-in-email").value ||= localStorage.getItem("zapflow.inbox.email") || "";
  (["#sign-in-tenant", "#sign-in-email", "#sign-in-password"].map($).find((input) => !input.value)
    || $("#sign-in-password")).focus();
}

async function signIn(event) {
  event.preventDefault();
  const body = {
    tenant: $("#sign-in-tenant").value.trim(),
    email: $("#sign-in-email").value.trim(),
    password: $("#sign-in-password").value,
  };
  try {
    const session = await api("POST", "/session", body);
    localStorage.setItem("zapflow.inbox.tenant", body.tenant);
    localStorage.setItem("zapflow.inbox.email", body.email);
    $("#sign-in-password").value = "";
    await signedIn(session);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    $("#sign-in-problem").textContent = error.message;
  }
}

async function signedIn(session) {
  state.csrf = session.csrf_token;
  state.me = { tenant: session.tenant, email: session.email, name: session.name };
  $("#me-name").textContent = `${session.name} · ${session.tenant}`;
  $("#sign-in-view").hidden = true;
  $("#inbox-view").hidden = false;
  await quietly(loadAccount);
  showView(state.view);
  connect();
  await route();
}

async function signOut() {
  if ((await attempt(() => api("DELETE", "/session"))) === undefined) return;
  // A fresh page: whoever signs in next on this browser sees nothing of this agent's work.
  location.replace("/inbox/");
}

async function start() {
  try {
    await signedIn(await api("GET", "/session"));
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showSignIn(error.status === 401 ? "" : error.message);
  }
}

// --- live updates ----------------------------------------------------------------------------------

function setConnection(live) {
  $("#connection").dataset.state = live ? "live" : "reconnecting";
  $("#connection").textContent = live ? "live" : "reconnecting…";
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(`${API}/events`);
  state.source = source;
  // "ready" comes first on every connection, reconnections included: what changed meanwhile is read again.
  source.addEventListener("ready", () => {
    setConnection(true);
    refreshEverything();
  });
  for (const name of ACTIVITY) source.addEventListener(name, (event) => onActivity(JSON.parse(event.data)));
  source.addEventListener("presence", () => scheduleRefresh());
  source.onerror = () => {
    setConnection(false);
    // The browser retries by itself unless the service refused the stream (signed out, restarted).
    if (source.readyState === EventSource.CLOSED) {
      clearTimeout(state.reconnectTimer);
      state.reconnectTimer = setTimeout(reconnect, RECONNECT_MS);
    }
  };
}

async function reconnect() {
  try {
    await api("GET", "/session");
    connect();
  } catch (error) {
    if (error.status === 401) showSignIn("Your session ended: sign in again (what you typed is kept).");
    else state.reconnectTimer = setTimeout(reconnect, RECONNECT_MS);
  }
}

function onActivity(activity) {
  scheduleRefresh();
  const open = state.open;
  if (!open || !open.conversation || activity.conversation.id !== open.id) return;
  open.conversation = { ...open.conversation, ...activity.conversation };
  mergeEntries(activity.entries || []);
  renderConversation();
  // The timeline and the messages' statuses live in the store: read them again.
  reloadOpen();
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => quietly(refreshQueue), REFRESH_DEBOUNCE_MS);
}

async function refreshEverything() {
  await quietly(async () => {
    await refreshQueue();
    if (state.open) await reloadOpen();
  });
}

async function refreshQueue() {
  const view = state.view;
  const [queue, me, agents] = await Promise.all([
    api("GET", `/conversations${QUEUE_QUERIES[view]}`),
    api("GET", "/me"),
    api("GET", "/agents"),
  ]);
  if (view !== state.view) return; // the agent switched views meanwhile: that view's read is on its way
  state.agents = agents;
  renderFigures(me.figures);
  announceNew(queue);
  state.queue = queue;
  renderQueue();
  if (state.open && state.open.conversation) renderConversation();
}

// --- the account, the figures and the queue ----------------------------------------------------------

async function loadAccount() {
  const [me, agents] = await Promise.all([api("GET", "/me"), api("GET", "/agents")]);
  state.templates = me.templates;
  state.canned = me.canned_responses;
  state.labels = me.labels;
  state.agents = agents;
  renderFigures(me.figures);
  renderTemplateChoices();
}

function renderFigures(figures) {
  $("#figure-waiting").textContent = String(figures.waiting);
  $("#figure-oldest").textContent = figures.waiting ? duration(figures.oldest_wait_s * 1000) : "–";
  $("#figure-online").textContent = String(figures.agents_online);
}

function showView(view) {
  state.view = QUEUE_QUERIES[view] === undefined ? "waiting" : view;
  localStorage.setItem("zapflow.inbox.view", state.view);
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === state.view));
  }
}

function announceNew(queue) {
  const fresh = queue.filter((c) => c.status === "waiting" && !state.knownIds.has(c.id));
  // The first read of a session only learns what is there.
  if (state.knownIds.size && fresh.length) {
    $("#announcer").textContent = `New conversation waiting: ${fresh.map(customerOf).join(", ")}`;
  }
  for (const conversation of queue) state.knownIds.add(conversation.id);
}

function queueRow(conversation) {
  const now = Date.now();
  const waited = conversation.status === "waiting"
    ? `waiting ${duration(now - Date.parse(conversation.requested_at))}`
    : `with ${agentName(conversation.agent)}`;
  const current = state.open && state.open.id === conversation.id ? "page" : null;
  const open = windowOpen(conversation);
  return el("li", {},
    el("a", { href: `#/c/${conversation.id}`, "aria-current": current, dataset: { id: String(conversation.id) } },
      el("span", { class: "row-top" },
        el("span", { class: "name" }, customerOf(conversation)),
        el("span", { class: "waited" }, waited)),
      el("span", { class: "row-meta" },
        el("span", {}, reasonOf(conversation.reason)),
        el("span", {}, `priority ${conversation.priority}`),
        el("span", { class: open ? "window-open" : "window-closed" }, open ? "window open" : "window closed"),
        ...conversation.labels.map((label) => el("span", { class: "tag" }, label)))));
}

function renderQueue() {
  const list = $("#queue-list");
  const focused = document.activeElement && list.contains(document.activeElement)
    ? document.activeElement.dataset.id : null;
  list.replaceChildren(...state.queue.map(queueRow));
  $("#queue-empty").hidden = state.queue.length > 0;
  // Re-drawing the list must not take the keyboard focus away from the agent.
  if (focused) list.querySelector(`a[data-id="${CSS.escape(focused)}"]`)?.focus();
}

// --- the open conversation -----------------------------------------------------------------------------

async function route() {
  const match = /^#\/c\/(\d+)$/.exec(location.hash);
  if (!match) {
    keepDraft();
    state.open = null;
    showConversationPane("placeholder");
    renderQueue();
    return;
  }
  await openConversation(Number(match[1]));
}

function showConversationPane(which) {
  $("#conversation-placeholder").hidden = which !== "placeholder";
  $("#conversation-missing").hidden = which !== "missing";
  $("#conversation-view").hidden = which !== "view";
  $("#details").hidden = which !== "view";
}

// The reply box and the note box belong to one conversation: switching keeps each one's draft apart.
function keepDraft() {
  if (!state.open) return;
  const draft = { reply: $("#reply-text").value, key: state.replyKey, note: $("#note-text").value };
  state.drafts.set(state.open.id, draft);
}

function restoreDraft(id) {
  const draft = state.drafts.get(id) || { reply: "", key: null, note: "" };
  $("#reply-text").value = draft.reply;
  $("#note-text").value = draft.note;
  state.replyKey = draft.key;
  state.drafts.delete(id);
  closeCanned();
}

async function openConversation(id) {
  if (state.open && state.open.id === id) return reloadOpen();
  keepDraft();
  restoreDraft(id);
  state.open = {
    id,
    conversation: null,
    entries: new Map(),   // transcript and notes by id: customer, bot, agent, system, note
    timeline: [],
    nodes: new Map(),     // entry id -> its <li>
    arrival: new Map(),   // entry id -> the order the page learnt of it
    reads: 0,             // the latest read wins when reads overlap
  };
  $("#transcript").replaceChildren();
  renderQueue();
  await reloadOpen(true);
}

async function reloadOpen(first = false) {
  const open = state.open;
  if (!open) return;
  const read = ++open.reads;
  let detail;
  try {
    detail = await api("GET", `/conversations/${open.id}`);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (state.open !== open || read !== open.reads) return;
    if (error.status === 404) {
      $("#missing-detail").textContent = error.message;
      showConversationPane("missing");
      return;
    }
    report(error);
    return;
  }
  if (state.open !== open || read !== open.reads) return;
  open.conversation = detail.conversation;
  open.timeline = detail.timeline.filter((entry) => entry.role === "event");
  mergeEntries([...detail.transcript, ...detail.timeline.filter((entry) => entry.role === "note")]);
  showConversationPane("view");
  renderConversation();
  if (first) {
    scrollTranscript(true);
    $("#conversation").focus();
  }
}

// A message's words never change, its status does: the first text known for an entry stays (the store
// records a template as "[template name]", the answer to sending it has the words the customer got).
function mergeEntries(entries) {
  const open = state.open;
  for (const entry of entries) {
    if (entry.role === "event") continue;
    const known = open.entries.get(entry.id);
    open.entries.set(entry.id, known ? { ...known, ...entry, text: known.text || entry.text } : entry);
    if (!open.arrival.has(entry.id)) open.arrival.set(entry.id, open.arrival.size);
  }
}

function renderConversation() {
  const open = state.open;
  const conversation = open.conversation;
  const mine = conversation.agent === state.me.email;
  const resolved = conversation.status === "resolved";
  const free = conversation.status === "waiting" || mine;

  $("#customer-title").textContent = customerOf(conversation);
  $("#customer-status").textContent = statusLine(conversation);
  $("#claim-button").hidden = conversation.status !== "waiting";
  $("#transfer-form").hidden = resolved || !free;
  $("#resolve-button").hidden = resolved || !free;
  renderTransferTargets(conversation);

  const windowState = $("#window-state");
  windowState.dataset.open = String(windowOpen(conversation));
  windowState.textContent = windowText(conversation);
  $("#detail-phone").textContent = `+${conversation.contact}`;
  $("#detail-reason").textContent = reasonOf(conversation.reason) + (conversation.detail ? ` (${conversation.detail})` : "");
  $("#detail-priority").textContent = String(conversation.priority);
  $("#detail-agent").textContent = conversation.agent ? agentName(conversation.agent) : "nobody yet";
  renderLabels(conversation, resolved);
  renderComposer(conversation, resolved, free);
  renderTranscript();
  renderTimeline();
}

function statusLine(conversation) {
  switch (conversation.status) {
    case "waiting":
      return `Waiting for ${duration(Date.now() - Date.parse(conversation.requested_at))} · ${reasonOf(conversation.reason)}`;
    case "assigned":
      return `With ${agentName(conversation.agent)} · ${reasonOf(conversation.reason)}`;
    default:
      return `Resolved${conversation.resolved_by ? ` by ${agentName(conversation.resolved_by)}` : ""}: the bot answers again`;
  }
}

function renderTransferTargets(conversation) {
  const select = $("#transfer-target");
  const chosen = select.value;
  const others = state.agents.filter((a) => a.online && a.email !== conversation.agent);
  select.replaceChildren(
    ...(conversation.status === "waiting" ? [] : [el("option", { value: "" }, "Back to the queue")]),
    ...others.map((a) => el("option", { value: a.email }, a.email === state.me.email ? `${a.name} (you)` : a.name)));
  if ([...select.options].some((option) => option.value === chosen)) select.value = chosen;
  select.closest("form").querySelector("button").disabled = select.options.length === 0;
}

function renderLabels(conversation, resolved) {
  $("#labels-field").hidden = state.labels.length === 0;
  const choices = $("#labels-choices");
  const focusedLabel = choices.contains(document.activeElement) ? document.activeElement.value : null;
  choices.replaceChildren(...state.labels.map((label, index) => {
    const id = `label-${index}`;
    return el("label", { for: id },
      el("input", {
        type: "checkbox", id, value: label, checked: conversation.labels.includes(label), disabled: resolved,
      }),
      label);
  }));
  if (focusedLabel !== null) {
    [...choices.querySelectorAll("input")].find((input) => input.value === focusedLabel)?.focus();
  }
}

function renderComposer(conversation, resolved, free) {
  const notice = $("#composer-notice");
  const closed = !windowOpen(conversation);
  let why = "";
  if (resolved) why = "This conversation is resolved: the bot answers the customer. Take it again from the queue to write.";
  else if (!free) why = `This conversation is ${agentName(conversation.agent)}'s: ask them to transfer it to you.`;
  notice.textContent = why;
  notice.hidden = !why;
  $("#reply-form").hidden = Boolean(why) || closed;
  $("#template-form").hidden = Boolean(why) || !closed;
}

function entryNode(entry) {
  let who;
  switch (entry.role) {
    case "customer":
      who = [el("strong", {}, customerOf(state.open.conversation))];
      break;
    case "bot":
      who = [el("span", { class: "role-tag" }, "bot")];
      break;
    case "agent":
      who = [el("strong", {}, entry.author ? agentName(entry.author) : "Agent"),
        entry.status ? el("span", {}, entry.status) : null];
      break;
    case "note":
      who = [el("span", { class: "role-tag" }, "private note"), el("strong", {}, agentName(entry.author))];
      break;
    default:
      who = [el("span", { class: "role-tag" }, "system notice")];
  }
  return el("li", { class: `entry ${entry.role}${entry.status === "failed" ? " failed" : ""}`, dataset: { id: entry.id } },
    el("p", { class: "who" }, ...who, timeElement(entry.at)),
    el("p", { class: "text" }, entry.text));
}

function renderTranscript() {
  const open = state.open;
  const list = $("#transcript");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  // WhatsApp dates customer messages to the second: within one second, the order they arrived in decides.
  const second = (entry) => Math.floor(Date.parse(entry.at) / 1000);
  const entries = [...open.entries.values()].sort((a, b) =>
    second(a) - second(b) || open.arrival.get(a.id) - open.arrival.get(b.id));
  entries.forEach((entry, index) => {
    const signature = `${entry.text}|${entry.status}|${entry.author}`;
    let node = open.nodes.get(entry.id);
    if (!node || node.dataset.signature !== signature) {
      const fresh = entryNode(entry);
      fresh.dataset.signature = signature;
      if (node) node.replaceWith(fresh);
      node = fresh;
      open.nodes.set(entry.id, node);
    }
    // Only new or moved entries touch the DOM: the live region announces just those.
    if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
  });
  scrollTranscript(atBottom);
}

function scrollTranscript(force) {
  const list = $("#transcript");
  if (force) list.scrollTop = list.scrollHeight;
}

function renderTimeline() {
  $("#timeline").replaceChildren(...state.open.timeline.map((entry) =>
    el("li", {}, timeElement(entry.at), entry.text)));
}

// --- the agent's actions -----------------------------------------------------------------------------

function openPath(suffix = "") {
  return `/conversations/${state.open.id}${suffix}`;
}

async function afterChange(summary) {
  state.open.conversation = { ...state.open.conversation, ...summary };
  renderConversation();
  scheduleRefresh();
  await reloadOpen();
}

async function claim() {
  const summary = await attempt(() => api("POST", openPath("/claim")));
  if (summary) await afterChange(summary);
}

async function transfer(event) {
  event.preventDefault();
  const target = $("#transfer-target").value || null;
  const summary = await attempt(() => api("POST", openPath("/transfer"), { agent: target }));
  if (summary) await afterChange(summary);
}

function openResolve() {
  const closed = !windowOpen(state.open.conversation);
  const message = $("#resolve-message");
  message.disabled = closed;
  $("#resolve-hint").textContent = closed
    ? "The customer's 24-hour window is closed: no closing message can be sent."
    : "Sent to the customer before the bot takes over; empty: the tenant's closing message, if any.";
  $("#resolve-dialog").showModal();
}

async function resolve(event) {
  event.preventDefault();
  const message = $("#resolve-message");
  const body = !message.disabled && message.value.trim() ? { message: message.value.trim() } : {};
  const summary = await attempt(() => api("POST", openPath("/resolve"), body));
  if (!summary) return;
  message.value = "";
  $("#resolve-dialog").close();
  await afterChange(summary);
}

async function send(body, key) {
  const entry = await attempt(() => api("POST", openPath("/messages"), body, { "Idempotency-Key": key }));
  if (!entry) {
    // Refused, e.g. because the window closed meanwhile: the template picker replaces the reply box.
    scheduleRefresh();
    await reloadOpen();
    return null;
  }
  mergeEntries([entry]);
  renderTranscript();
  scrollTranscript(true);
  scheduleRefresh();
  return entry;
}

async function sendReply(event) {
  event?.preventDefault();
  const input = $("#reply-text");
  const text = input.value;
  if (!text.trim() || !state.open) return;
  state.replyKey ||= newKey();
  const sent = await send({ text }, state.replyKey);
  if (!sent) return;
  state.replyKey = null;
  if (input.value === text) input.value = "";
  closeCanned();
}

function renderTemplateChoices() {
  const select = $("#template-choice");
  select.replaceChildren(...state.templates.map((t) => el("option", { value: t.name }, `${t.name} (${t.language})`)));
  if (state.templates.length === 0) select.append(el("option", { value: "" }, "No templates configured for this tenant"));
  $("#template-send").disabled = state.templates.length === 0;
  renderTemplateParameters();
}

function chosenTemplate() {
  return state.templates.find((t) => t.name === $("#template-choice").value);
}

function renderTemplateParameters() {
  const template = chosenTemplate();
  const holder = $("#template-parameters");
  holder.replaceChildren();
  for (let index = 1; template && index <= template.parameters; index += 1) {
    const id = `template-parameter-${index}`;
    holder.append(el("label", { for: id }, `Parameter {{${index}}}`), el("input", { id, required: true, autocomplete: "off" }));
  }
  renderTemplatePreview();
}

function templateValues() {
  return [...document.querySelectorAll("#template-parameters input")].map((input) => input.value);
}

function renderTemplatePreview() {
  const template = chosenTemplate();
  const values = templateValues();
  $("#template-preview").textContent = template
    ? template.text.replace(/\{\{(\d+)\}\}/g, (whole, n) => values[Number(n) - 1] || whole)
    : "";
}

async function sendTemplate(event) {
  event.preventDefault();
  const template = chosenTemplate();
  if (!template || !state.open) return;
  const sent = await send({ template: { name: template.name, parameters: templateValues() } }, newKey());
  if (!sent) return;
  for (const input of document.querySelectorAll("#template-parameters input")) input.value = "";
  renderTemplatePreview();
}

async function addNote(event) {
  event.preventDefault();
  const input = $("#note-text");
  const text = input.value;
  if (!text.trim() || !state.open) return;
  const entry = await attempt(() => api("POST", openPath("/notes"), { text }));
  if (!entry) return;
  if (input.value === text) input.value = "";
  mergeEntries([entry]);
  renderTranscript();
  scrollTranscript(true);
}

async function changeLabels() {
  const labels = [...document.querySelectorAll("#labels-choices input:checked")].map((input) => input.value);
  const summary = await attempt(() => api("PUT", openPath("/labels"), { labels }));
  // Refused: the boxes show the labels the conversation really has.
  if (summary) await afterChange(summary);
  else renderConversation();
}

// --- canned responses: "/" + shortcut in the reply box ---------------------------------------------------

function shortcutBeforeCaret(input) {
  const before = input.value.slice(0, input.selectionStart);
  const match = /(^|\s)\/([a-z0-9_-]*)$/.exec(before);
  return match ? { typed: match[2], start: before.length - match[2].length - 1 } : null;
}

function offerCanned() {
  const input = $("#reply-text");
  const typing = shortcutBeforeCaret(input);
  state.cannedChoices = typing ? state.canned.filter((c) => c.shortcut.startsWith(typing.typed)) : [];
  if (state.cannedChoices.length === 0) return closeCanned();
  state.cannedIndex = 0;
  renderCanned();
}

function renderCanned() {
  const list = $("#canned-list");
  list.replaceChildren(...state.cannedChoices.map((choice, index) => el("li", {
    id: `canned-${index}`, role: "option", "aria-selected": String(index === state.cannedIndex),
    dataset: { index: String(index) },
  }, el("span", { class: "shortcut" }, `/${choice.shortcut}`), choice.text)));
  if (list.hidden) {
    const count = state.cannedChoices.length;
    $("#announcer").textContent = `${count} canned response${count === 1 ? "" : "s"}: arrows choose, Enter inserts`;
  }
  list.hidden = false;
  $("#reply-text").setAttribute("aria-activedescendant", `canned-${state.cannedIndex}`);
  list.children[state.cannedIndex]?.scrollIntoView({ block: "nearest" });
}

function closeCanned() {
  state.cannedChoices = [];
  state.cannedIndex = -1;
  $("#canned-list").hidden = true;
  $("#reply-text").removeAttribute("aria-activedescendant");
}

function pickCanned(index) {
  const choice = state.cannedChoices[index];
  const input = $("#reply-text");
  const typing = shortcutBeforeCaret(input);
  if (!choice || !typing) return closeCanned();
  const after = input.value.slice(input.selectionStart);
  input.value = input.value.slice(0, typing.start) + choice.text + after;
  const caret = typing.start + choice.text.length;
  input.setSelectionRange(caret, caret);
  closeCanned();
  input.focus();
}

function replyKeys(event) {
  const choosing = state.cannedChoices.length > 0;
  if (choosing && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    event.preventDefault();
    const step = event.key === "ArrowDown" ? 1 : -1;
    state.cannedIndex = (state.cannedIndex + step + state.cannedChoices.length) % state.cannedChoices.length;
    renderCanned();
  } else if (choosing && (event.key === "Enter" || event.key === "Tab") && !event.shiftKey) {
    event.preventDefault();
    pickCanned(state.cannedIndex);
  } else if (choosing && event.key === "Escape") {
    event.preventDefault();
    closeCanned();
  } else if (event.key === "Enter" && !event.isComposing && (event.ctrlKey || event.metaKey || !event.shiftKey)) {
    event.preventDefault();
    sendReply();
  }
}

// --- wiring ------------------------------------------------------------------------------------------

function wire() {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#problem-close").addEventListener("click", clearProblem);
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => {
      showView(button.dataset.view);
      attempt(refreshQueue);
    });
  }
  $("#claim-button").addEventListener("click", claim);
  $("#transfer-form").addEventListener("submit", transfer);
  $("#resolve-button").addEventListener("click", openResolve);
  $("#resolve-form").addEventListener("submit", resolve);
  $("#resolve-cancel").addEventListener("click", () => $("#resolve-dialog").close());
  $("#reply-form").addEventListener("submit", sendReply);
  const reply = $("#reply-text");
  reply.addEventListener("keydown", replyKeys);
  reply.addEventListener("input", () => {
    state.replyKey = null; // other text: another message
    offerCanned();
  });
  reply.addEventListener("blur", () => setTimeout(closeCanned, 150));
  $("#canned-list").addEventListener("mousedown", (event) => {
    const option = event.target.closest("[role=option]");
    if (!option) return;
    event.preventDefault(); // keep the focus (and the caret) in the reply box
    pickCanned(Number(option.dataset.index));
  });
  $("#template-form").addEventListener("submit", sendTemplate);
  $("#template-choice").addEventListener("change", renderTemplateParameters);
  $("#template-parameters").addEventListener("input", renderTemplatePreview);
  $("#note-form").addEventListener("submit", addNote);
  $("#labels-choices").addEventListener("change", changeLabels);
  window.addEventListener("hashchange", () => attempt(route));
  // Waiting times and the window countdown move with the clock.
  setInterval(() => {
    if ($("#inbox-view").hidden) return;
    renderQueue();
    if (state.open && state.open.conversation) renderConversation();
  }, CLOCK_TICK_MS);
}

wire();
start();
