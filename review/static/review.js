// The review page: one item at a time, keyboard first. The next item is fetched (and its image
// loaded) while the reviewer looks at the current one, so a decision shows the next at once.
"use strict";

const csrf = document.body.dataset.csrf;
const $ = (id) => document.getElementById(id);
const state = { current: null, next: null, history: [], back: 0, busy: false };

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) { window.location = "/login"; throw new Error("signed out"); }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function imageUrl(key) { return "/image?key=" + encodeURIComponent(key); }

async function fetchNext() {
  const query = new URLSearchParams({ label: $("filter-label").value, prefix: $("filter-prefix").value });
  const data = await api("/api/next?" + query, {});  // POST: it leases an item
  $("pending").textContent = data.pending;
  if (data.item) new Image().src = imageUrl(data.item.key);  // preload
  return data.item;
}

function classItems() { return Array.from($("classes").children); }

function visibleClasses() { return classItems().filter((li) => !li.classList.contains("hidden")); }

function highlight(li) {
  classItems().forEach((other) => other.classList.toggle("active", other === li));
  if (li) li.scrollIntoView({ block: "nearest" });
}

function filterClasses() {
  const text = $("class-filter").value.trim().toLowerCase();
  classItems().forEach((li) => li.classList.toggle("hidden", !li.dataset.class.toLowerCase().includes(text)));
  const visible = visibleClasses();
  const exact = visible.find((li) => li.dataset.class.toLowerCase() === text);
  highlight(text ? exact || visible[0] : null);
}

function show(item, reviewed) {
  state.current = item;
  $("empty").hidden = !!item;
  $("item").hidden = !item;
  $("class-filter").value = "";
  filterClasses();
  if (!item) return;
  $("image").src = imageUrl(item.key);
  $("key").textContent = item.key;
  // An audit is blind: the server sends no prediction, and the page shows none.
  $("prediction").hidden = !!item.audit || !!item.label_issue;
  $("audit-note").hidden = !item.audit;
  // A label issue is a training image whose folder out-of-sample predictions doubt.
  $("issue-note").hidden = !item.label_issue;
  $("given").textContent = item.label_issue ? item.label : "";
  $("suggested").textContent = item.label_issue ? item.suggested : "";
  $("model").textContent = item.model_name + " v" + item.model_version;
  $("predicted").textContent = item.audit ? "" : item.label;
  $("score").textContent = item.score == null ? "" : (item.score * 100).toFixed(1) + "%";
  $("top-k").replaceChildren(...(item.top_k || []).map((p) => {
    const li = document.createElement("li");
    li.textContent = p.label + " " + (p.score * 100).toFixed(1) + "%";
    return li;
  }));
  $("status").textContent = reviewed ? "Reviewed before: " + reviewed : "";
}

async function advance() {
  const item = state.next || await fetchNext();
  state.next = null;
  show(item);
  if (item) state.next = await fetchNext();
}

async function decide(action, label) {
  const item = state.current;
  if (!item || state.busy) return;
  state.busy = true;
  try {
    if (action === "skip") {
      await api("/api/skip", { key: item.key, token: item.token });
    } else {
      const result = await api("/api/decide", { key: item.key, token: item.token, action, label });
      const review = result.record.review;
      state.history.push({ ...item, token: null, reviewed: review.outcome + " " + (review.label || "") });
    }
    if (state.back > 0) {  // deciding again on an earlier item: return to where we were
      state.back = 0;
      show(state.resume);
    } else {
      await advance();
    }
  } catch (error) {
    $("status").textContent = "Not saved: " + error.message;
    if (/lease|changed|no record/.test(error.message)) await advance();
  } finally {
    state.busy = false;
  }
}

function pick(name) {
  const item = state.current;
  if (!item || !name) return;
  if (!item.audit && name === item.label) decide("accept");
  else decide("correct", name);  // an audit always names the class; the server compares
}

// Enter with nothing picked accepts the prediction; an audit has none to accept.
function acceptShown() { if (state.current && !state.current.audit) decide("accept"); }

function goBack() {
  if (state.back >= state.history.length) return;
  if (state.back === 0) state.resume = state.current;
  state.back += 1;
  const earlier = state.history[state.history.length - state.back];
  show(earlier, earlier.reviewed);
}

function goForward() {
  if (state.back === 0) return;
  state.back -= 1;
  if (state.back === 0) show(state.resume);
  else { const later = state.history[state.history.length - state.back]; show(later, later.reviewed); }
}

function moveHighlight(step) {
  const visible = visibleClasses();
  const at = visible.findIndex((li) => li.classList.contains("active"));
  highlight(visible[Math.min(visible.length - 1, Math.max(0, at + step))]);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (document.activeElement && document.activeElement.closest("#filters")) return;
  const filter = $("class-filter");
  if (document.activeElement === filter) {
    filterKey(event, filter);
  } else {
    hotkey(event, filter);
  }
});

// In the class filter every character types; Enter picks, arrows move, Escape leaves.
function filterKey(event, filter) {
  if (event.key === "Enter") {
    event.preventDefault();
    const active = classItems().find((li) => li.classList.contains("active"));
    if (active) pick(active.dataset.class);
    else if (filter.value.trim()) pick(filter.value.trim());  // a new class name
    else acceptShown();
  } else if (event.key === "Escape") {
    filter.value = ""; filterClasses(); filter.blur();
  } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    moveHighlight(event.key === "ArrowDown" ? 1 : -1);
  }
}

// Outside it: digits, x, s, Enter and arrows act; "/" or any other letter starts type-ahead.
function hotkey(event, filter) {
  if (event.key === "Enter") {
    event.preventDefault(); acceptShown();
  } else if (/^[1-9]$/.test(event.key)) {
    event.preventDefault();
    const li = classItems()[Number(event.key) - 1];
    if (li) pick(li.dataset.class);
  } else if (event.key === "x") {
    event.preventDefault(); decide("discard");
  } else if (event.key === "s") {
    event.preventDefault(); decide("skip");
  } else if (event.key === "ArrowLeft") {
    goBack();
  } else if (event.key === "ArrowRight") {
    goForward();
  } else if (event.key === "/") {
    event.preventDefault(); filter.focus();
  } else if (event.key.length === 1 && /\S/.test(event.key)) {
    filter.focus();  // the key lands in the filter: type-ahead
  }
}

$("class-filter").addEventListener("input", filterClasses);
$("classes").addEventListener("click", (event) => {
  const li = event.target.closest("li");
  if (li) pick(li.dataset.class);
});
$("reload").addEventListener("click", advance);
$("filters").addEventListener("change", () => { state.next = null; advance(); });
$("filters").addEventListener("submit", (event) => { event.preventDefault(); state.next = null; advance(); });
advance();
