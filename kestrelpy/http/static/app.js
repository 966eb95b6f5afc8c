// kestrelpy dashboard: this server and its http_peers, over the JSON API of docs/http.md.
//
// No build step and no dependencies. Every piece of server data reaches the page through
// textContent (never innerHTML), so a queue name or an item body cannot inject markup.
// Rows are keyed (server + queue) and updated in place on refresh, so focus, an open
// status menu and element references survive the auto-refresh.
"use strict";

(() => {
  const TOKEN_KEY = "kestrelpy.adminToken"; // sessionStorage: this tab only, gone on close
  const STATUSES = ["up", "readonly", "quiescent", "writeavoid"];
  const PEEK_SHOWN_CHARS = 4096; // longer bodies are cut in the view, not on the server

  // ---- formatting ------------------------------------------------------------------------

  function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function fmtInt(value) {
    return value === null ? "–" : String(value);
  }

  function fmtBytes(value) {
    if (value === null) return "–";
    if (value < 1024) return `${value} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let scaled = value / 1024;
    let unit = 0;
    while (scaled >= 1024 && unit < units.length - 1) {
      scaled /= 1024;
      unit += 1;
    }
    return `${scaled.toFixed(scaled < 10 ? 1 : 0)} ${units[unit]}`;
  }

  function fmtSeconds(value) {
    if (value === null) return "–";
    return value < 60 ? `${value} s` : fmtMs(value * 1000);
  }

  function fmtMs(value) {
    if (value === null) return "–";
    if (value < 1000) return `${Math.round(value)} ms`;
    const s = value / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    const total = Math.floor(s);
    const d = Math.floor(total / 86400);
    const h = Math.floor((total % 86400) / 3600);
    const m = Math.floor((total % 3600) / 60);
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    return `${m}m ${total % 60}s`;
  }

  // ---- the queues table's columns: one list drives headers, cells, sorting and filtering --

  // key: the filter field and data-col; src: the API key it shows; text columns sort and
  // filter as strings, the others as numbers.
  const QUEUE_COLUMNS = [
    { key: "server", label: "Server", text: true, get: (row) => row.server.label },
    { key: "name", label: "Queue", text: true, get: (row) => row.q.name },
    { key: "items", label: "Items", src: "items", fmt: fmtInt, help: "waiting items" },
    { key: "bytes", label: "Bytes", src: "bytes", fmt: fmtBytes, help: "bytes of waiting items" },
    {
      key: "age", label: "Oldest", src: "age_msec", fmt: fmtMs,
      help: "age of the oldest waiting item",
      // An empty queue has no oldest item: no age (sorted last), not "0 ms".
      get: (row) => (row.q.items === 0 ? null : num(row.q.age_msec)),
    },
    {
      key: "open", label: "Open", src: "open_transactions", fmt: fmtInt,
      help: "reads opened and not yet closed",
    },
    { key: "waiters", label: "Waiting", src: "waiters", fmt: fmtInt, help: "blocked readers" },
    {
      key: "total_items", label: "Total in", src: "total_items", fmt: fmtInt,
      help: "items ever added",
    },
    { key: "expired", label: "Expired", src: "expired_items", fmt: fmtInt },
    { key: "discarded", label: "Discarded", src: "discarded", fmt: fmtInt },
  ];
  for (const col of QUEUE_COLUMNS) {
    if (!col.get) col.get = (row) => num(row.q[col.src]);
  }
  const COLUMN_BY_FIELD = new Map();
  for (const col of QUEUE_COLUMNS) {
    COLUMN_BY_FIELD.set(col.key, col);
    if (col.src) COLUMN_BY_FIELD.set(col.src, col);
  }

  // ---- the filter language ---------------------------------------------------------------
  //
  // A filter is terms separated by spaces, all of which must hold. A term is
  // FIELD OP VALUE: FIELD is a column key (name, items, age, …) or any key of a queue's
  // stats object (mem_bytes, …); OP is one of = != > >= < <= =~ !~ (=~ and !~ take a
  // JavaScript regular expression); VALUE may be "double quoted" to hold spaces.

  class FilterError extends Error {}

  const TERM = /^([A-Za-z_][A-Za-z0-9_]*)(=~|!~|>=|<=|!=|==|=|>|<)(.*)$/s;

  function splitTerms(text) {
    const terms = [];
    let current = "";
    let quoted = false;
    let started = false;
    for (let i = 0; i < text.length; i += 1) {
      const ch = text[i];
      if (quoted && ch === "\\" && i + 1 < text.length) {
        current += ch + text[i + 1];
        i += 1;
      } else if (ch === '"') {
        quoted = !quoted;
        current += ch;
        started = true;
      } else if (!quoted && /\s/.test(ch)) {
        if (started) terms.push(current);
        current = "";
        started = false;
      } else {
        current += ch;
        started = true;
      }
    }
    if (quoted) throw new FilterError("a quoted value is not closed (missing \")");
    if (started) terms.push(current);
    return terms;
  }

  function unquote(value) {
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
      return value.slice(1, -1).replace(/\\(.)/g, "$1");
    }
    if (value.includes('"')) throw new FilterError(`stray quote in "${value}"`);
    return value;
  }

  function fieldNames() {
    return QUEUE_COLUMNS.map((col) => col.key).join(", ");
  }

  function compileTerm(term, knownKeys) {
    const match = TERM.exec(term);
    if (!match) {
      throw new FilterError(
        `"${term}" is not a term: write field, operator and value, like items>100 or name=~^jobs_`,
      );
    }
    const [, field, rawOp, rawValue] = match;
    const op = rawOp === "==" ? "=" : rawOp;
    const value = unquote(rawValue);
    const col = COLUMN_BY_FIELD.get(field);
    if (!col && !knownKeys.has(field)) {
      throw new FilterError(`unknown field "${field}" in "${term}"; fields: ${fieldNames()}`);
    }
    const get = col ? col.get : (row) => row.q[field];
    if (op === "=~" || op === "!~") {
      let re;
      try {
        re = new RegExp(value);
      } catch (err) {
        throw new FilterError(`bad regular expression in "${term}": ${err.message}`);
      }
      const want = op === "=~";
      return (row) => {
        const got = get(row);
        return got !== null && got !== undefined && re.test(String(got)) === want;
      };
    }
    const isText = col ? Boolean(col.text) : false;
    if (isText || (!col && !/^-?\d+(\.\d+)?$/.test(value) && (op === "=" || op === "!="))) {
      if (op !== "=" && op !== "!=") {
        throw new FilterError(
          `"${field}" is text: use = (exact), != or =~ (regular expression) in "${term}"`,
        );
      }
      const want = op === "=";
      return (row) => (String(get(row) ?? "") === value) === want;
    }
    if (value === "") throw new FilterError(`"${term}" has no value after ${rawOp}`);
    const limit = Number(value);
    if (!Number.isFinite(limit)) {
      throw new FilterError(`"${field}" is a number, and "${value}" is not (in "${term}")`);
    }
    const test = {
      "=": (a) => a === limit,
      "!=": (a) => a !== limit,
      ">": (a) => a > limit,
      ">=": (a) => a >= limit,
      "<": (a) => a < limit,
      "<=": (a) => a <= limit,
    }[op];
    return (row) => {
      const got = get(row);
      return typeof got === "number" && test(got);
    };
  }

  // Returns a predicate over rows, or throws FilterError naming the bad term.
  function compileFilter(text, knownKeys) {
    const tests = splitTerms(text).map((term) => compileTerm(term, knownKeys));
    return (row) => tests.every((test) => test(row));
  }

  // ---- state -----------------------------------------------------------------------------

  const state = {
    servers: new Map(), // label -> {label, base, self, info, error}
    rows: [], // {server, q}: every queue of every reachable server
    sort: { key: "name", dir: 1 },
    filterText: "",
    refreshing: null, // the running refresh's promise
    timer: null,
    peek: null, // {server, name}
    stopping: new Map(), // server label -> "stopping" | "stopped", after a shutdown request
    lastRefresh: null,
  };

  const $ = (id) => document.getElementById(id);

  // ---- the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  async function api(server, path, { method = "GET", body, auth = false } = {}) {
    const headers = { Accept: "application/json" };
    if (auth) {
      const token = getToken();
      if (token) headers.Authorization = `Bearer ${token}`;
    }
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(server.base + path, init);
    } catch {
      throw new ApiError(0, `could not reach ${server.label}`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const detail =
        data && typeof data.error === "string"
          ? data.error
          : text.trim().slice(0, 200) || response.statusText || "no details";
      throw new ApiError(response.status, detail);
    }
    return data;
  }

  // An API error in plain words, for a sentence that starts with what failed.
  function explain(err) {
    if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
    const detail = err.detail;
    switch (err.status) {
      case 0:
        return `${detail}; is it running, and does it allow this page's origin?`;
      case 401:
        return `the server wants the admin token (${detail}). Type it in the "Admin token" field and press "Use token".`;
      case 403:
        if (/not configured/i.test(detail)) {
          return `the server has no admin token configured, so it refuses all changes (${detail}).`;
        }
        return `the admin token was refused (${detail}). Check it and type it again.`;
      case 400:
        return `the server rejected the request: ${detail}.`;
      case 404:
        return `not found: ${detail} (was it deleted meanwhile?).`;
      case 405:
        return `the server does not allow this request (${detail}).`;
      default:
        return `the server answered HTTP ${err.status}: ${detail}.`;
    }
  }

  // Queue names are bytes on the server, sent to the page as latin-1 code points (each
  // character is one byte, U+0000..U+00FF). A path names a queue by those bytes: every
  // character but the unreserved ASCII ones becomes %XX of its own code, so "é" is %E9 (one
  // byte), never UTF-8's %C3%A9 as encodeURIComponent would send.
  const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

  function latin1Segment(name) {
    let out = "";
    for (const ch of name) {
      const code = ch.codePointAt(0);
      if (UNRESERVED.test(ch)) out += ch;
      else if (code <= 0xff) out += `%${code.toString(16).toUpperCase().padStart(2, "0")}`;
      else {
        const hex = code.toString(16).toUpperCase().padStart(4, "0");
        throw new Error(
          `the name "${name}" holds U+${hex}, which is no single byte, so no queue has it`,
        );
      }
    }
    return out;
  }

  function queuePath(name, suffix = "") {
    return `api/queues/${latin1Segment(name)}${suffix}`;
  }

  // ---- messages --------------------------------------------------------------------------

  function showMessage(kind, text) {
    const box = $("message");
    box.dataset.kind = kind;
    // Errors interrupt a screen reader; successes wait their turn.
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    box.setAttribute("aria-live", kind === "error" ? "assertive" : "polite");
    $("message-text").textContent = text;
    box.hidden = false;
  }

  function clearMessage() {
    $("message").hidden = true;
    $("message-text").textContent = "";
  }

  // ---- confirmation ----------------------------------------------------------------------

  function confirmAction(title, text, okLabel) {
    const dialog = $("confirm-dialog");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {
        once: true,
      });
      dialog.showModal();
      $("confirm-cancel").focus(); // the safe choice is the default one
    });
  }

  // ---- loading ---------------------------------------------------------------------------

  function peerBase(peer) {
    const address = /^https?:\/\//.test(peer) ? peer : `http://${peer}`;
    return address.endsWith("/") ? address : `${address}/`;
  }

  async function loadServer(server) {
    const [info, queues] = await Promise.allSettled([
      api(server, "api/server"),
      api(server, "api/queues"),
    ]);
    server.info = info.status === "fulfilled" ? info.value : null;
    server.queues = queues.status === "fulfilled" && queues.value ? queues.value.queues || [] : [];
    const failed = [info, queues].find((result) => result.status === "rejected");
    server.error = failed ? explain(failed.reason) : null;
  }

  async function refreshOnce() {
    const self = {
      label: location.host || "this server",
      base: "",
      self: true,
      info: null,
      queues: [],
      error: null,
    };
    await loadServer(self);
    const servers = [self];
    const peers = self.info && Array.isArray(self.info.peers) ? self.info.peers : [];
    for (const peer of peers) {
      if (typeof peer !== "string" || !peer) continue;
      servers.push({ label: peer, base: peerBase(peer), self: false, info: null, queues: [] });
    }
    await Promise.all(servers.slice(1).map(loadServer));
    state.servers = new Map(servers.map((server) => [server.label, server]));
    state.rows = [];
    for (const server of servers) {
      for (const q of server.queues) {
        if (q && typeof q.name === "string") state.rows.push({ server, q });
      }
    }
    state.lastRefresh = new Date();
    render();
  }

  // One refresh at a time; a request during one waits for it and then runs again.
  function refresh() {
    if (state.refreshing) {
      state.refreshing = state.refreshing.then(refreshOnce, refreshOnce);
    } else {
      state.refreshing = refreshOnce();
    }
    const mine = state.refreshing;
    const done = () => {
      if (state.refreshing === mine) state.refreshing = null;
    };
    mine.then(done, (err) => {
      done();
      $("refresh-state").textContent = `Refresh failed: ${explain(err)}`;
    });
    return mine;
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = null;
    if (!$("auto-refresh").checked) return;
    const every = Number($("refresh-interval").value) || 5000;
    state.timer = setTimeout(async () => {
      try {
        await refresh();
      } catch {
        // shown in #refresh-state; keep the timer going
      }
      schedule();
    }, every);
  }

  // ---- rendering -------------------------------------------------------------------------

  // Keyed rows: reuse each key's <tr>, drop vanished ones, and move rows only when the
  // order changed (moving a row would take focus away from its button).
  function syncRows(tbody, items, keyOf, create, update) {
    const existing = new Map();
    for (const tr of Array.from(tbody.children)) {
      if (tr.dataset.key !== undefined) existing.set(tr.dataset.key, tr);
      else tr.remove();
    }
    const wanted = [];
    for (const item of items) {
      const key = keyOf(item);
      let tr = existing.get(key);
      if (tr) existing.delete(key);
      else {
        tr = create(item);
        tr.dataset.key = key;
      }
      update(tr, item);
      wanted.push(tr);
    }
    for (const tr of existing.values()) tr.remove();
    const current = Array.from(tbody.children);
    const same = current.length === wanted.length && current.every((tr, i) => tr === wanted[i]);
    if (!same) for (const tr of wanted) tbody.appendChild(tr);
  }

  function cell(tr, col, text, { title, value, numeric } = {}) {
    let td = tr.querySelector(`:scope > [data-col="${col}"]`);
    if (!td) {
      td = document.createElement("td");
      td.dataset.col = col;
      if (numeric) td.className = "num";
      tr.appendChild(td);
    }
    if (td.textContent !== text) td.textContent = text;
    if (title) td.title = title;
    else td.removeAttribute("title");
    if (value !== undefined && value !== null) td.dataset.value = String(value);
    else delete td.dataset.value;
    return td;
  }

  function button(label, action, ariaLabel, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.action = action;
    if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
    if (className) b.className = className;
    return b;
  }

  function renderServers() {
    const servers = Array.from(state.servers.values());
    syncRows(
      $("servers-body"),
      servers,
      (server) => server.label,
      (server) => {
        const tr = document.createElement("tr");
        tr.dataset.server = server.label;
        const names = ["server", "status", "version", "uptime", "connections", "items", "bytes"];
        for (const col of names) cell(tr, col, "", { numeric: ["uptime", "connections", "items", "bytes"].includes(col) });
        const actions = document.createElement("td");
        actions.dataset.col = "actions";
        actions.className = "actions";
        actions.appendChild(button("Reload config", "reload", `Reload the config of ${server.label}`));
        const select = document.createElement("select");
        select.dataset.role = "status-select";
        select.setAttribute("aria-label", `New status for ${server.label}`);
        for (const status of STATUSES) {
          const option = document.createElement("option");
          option.value = status;
          option.textContent = status;
          select.appendChild(option);
        }
        select.addEventListener("change", () => {
          select.dataset.touched = "1";
        });
        actions.appendChild(select);
        actions.appendChild(button("Set status", "set-status", `Set the status of ${server.label}`));
        actions.appendChild(
          button("Flush all", "flush-all", `Flush every queue of ${server.label}`, "danger"),
        );
        actions.appendChild(button("Shutdown", "shutdown", `Shut down ${server.label}`, "danger"));
        tr.appendChild(actions);
        return tr;
      },
      (tr, server) => {
        const info = server.info || {};
        let status = server.info ? String(info.status ?? "unknown") : "unreachable";
        const stopping = state.stopping.get(server.label);
        if (stopping === "stopped" && server.info) state.stopping.delete(server.label); // back
        else if (stopping) status = server.info ? "stopping" : "stopped";
        cell(tr, "server", server.label, { title: server.self ? "this server" : "peer" });
        const statusCell = cell(tr, "status", status, { title: server.error || undefined });
        statusCell.dataset.status = status;
        cell(tr, "version", String(info.version ?? "–"));
        const uptime = num(info.uptime);
        cell(tr, "uptime", fmtSeconds(uptime), { value: uptime });
        const conns = num(info.curr_connections);
        cell(tr, "connections", fmtInt(conns), {
          value: conns,
          title: `${fmtInt(num(info.total_connections))} since start`,
        });
        const items = num(info.curr_items);
        cell(tr, "items", fmtInt(items), { value: items });
        const bytes = num(info.bytes);
        cell(tr, "bytes", fmtBytes(bytes), {
          value: bytes,
          title: bytes === null ? undefined : `${bytes} bytes`,
        });
        const select = tr.querySelector('[data-role="status-select"]');
        if (!select.dataset.touched && STATUSES.includes(status)) select.value = status;
        for (const control of tr.querySelectorAll("[data-col=actions] button, select")) {
          control.disabled = !server.info || Boolean(state.stopping.get(server.label));
        }
      },
    );
  }

  function renderQueueHead() {
    const head = $("queues-head");
    head.textContent = "";
    for (const col of QUEUE_COLUMNS) {
      const th = document.createElement("th");
      th.scope = "col";
      th.dataset.col = col.key;
      if (!col.text) th.className = "num";
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.sort = col.key;
      b.textContent = col.label;
      if (col.help) b.title = col.help;
      const arrow = document.createElement("span");
      arrow.className = "arrow";
      arrow.setAttribute("aria-hidden", "true");
      b.appendChild(arrow);
      th.appendChild(b);
      head.appendChild(th);
    }
    const th = document.createElement("th");
    th.scope = "col";
    th.dataset.col = "actions";
    th.textContent = "Actions";
    head.appendChild(th);
  }

  function renderSortState() {
    for (const th of $("queues-head").querySelectorAll("th[data-col]")) {
      const arrow = th.querySelector(".arrow");
      if (!arrow) continue;
      if (th.dataset.col === state.sort.key) {
        th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
        arrow.textContent = state.sort.dir > 0 ? " ▲" : " ▼";
      } else {
        th.removeAttribute("aria-sort");
        arrow.textContent = "";
      }
    }
  }

  function compareValues(a, b) {
    const aMissing = a === null || a === undefined;
    const bMissing = b === null || b === undefined;
    if (aMissing || bMissing) return aMissing === bMissing ? 0 : aMissing ? 1 : -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    const sa = String(a);
    const sb = String(b);
    return sa < sb ? -1 : sa > sb ? 1 : 0;
  }

  function sortedRows(rows) {
    const col = COLUMN_BY_FIELD.get(state.sort.key) || COLUMN_BY_FIELD.get("name");
    const { dir } = state.sort;
    const byName = COLUMN_BY_FIELD.get("name").get;
    const byServer = COLUMN_BY_FIELD.get("server").get;
    return rows.slice().sort((x, y) => {
      const first = compareValues(col.get(x), col.get(y));
      if (first !== 0) {
        // Missing values stay last in both directions.
        const missing = col.get(x) === null || col.get(y) === null;
        return missing ? first : first * dir;
      }
      return (
        compareValues(byName(x), byName(y)) * dir || compareValues(byServer(x), byServer(y))
      );
    });
  }

  function knownKeys() {
    const keys = new Set();
    for (const row of state.rows) for (const key of Object.keys(row.q)) keys.add(key);
    return keys;
  }

  function currentFilter() {
    const input = $("filter");
    const errorBox = $("filter-error");
    const text = input.value.trim();
    let predicate = () => true;
    let error = null;
    if (text) {
      try {
        predicate = compileFilter(text, knownKeys());
      } catch (err) {
        if (!(err instanceof FilterError)) throw err;
        error = err.message;
      }
    }
    if (error) {
      errorBox.textContent = `Filter not applied: ${error}.`;
      errorBox.hidden = false;
      input.setAttribute("aria-invalid", "true");
      return () => true; // a bad filter hides nothing
    }
    errorBox.hidden = true;
    errorBox.textContent = "";
    input.removeAttribute("aria-invalid");
    return predicate;
  }

  function renderQueues() {
    const several = state.servers.size > 1;
    $("queues-table").classList.toggle("single-server", !several);
    const predicate = currentFilter();
    const shown = sortedRows(state.rows.filter(predicate));
    syncRows(
      $("queues-body"),
      shown,
      (row) => `${row.server.label}\u0000${row.q.name}`,
      (row) => {
        const tr = document.createElement("tr");
        tr.dataset.queue = row.q.name;
        tr.dataset.server = row.server.label;
        for (const col of QUEUE_COLUMNS) cell(tr, col.key, "", { numeric: !col.text });
        const actions = document.createElement("td");
        actions.dataset.col = "actions";
        actions.className = "actions";
        const where = several ? ` on ${row.server.label}` : "";
        actions.appendChild(button("Peek", "peek", `Peek at queue ${row.q.name}${where}`));
        actions.appendChild(button("Flush", "flush", `Flush queue ${row.q.name}${where}`, "danger"));
        actions.appendChild(
          button("Delete", "delete", `Delete queue ${row.q.name}${where}`, "danger"),
        );
        tr.appendChild(actions);
        return tr;
      },
      (tr, row) => {
        for (const col of QUEUE_COLUMNS) {
          const value = col.get(row);
          if (col.text) {
            cell(tr, col.key, String(value ?? ""));
          } else {
            const title =
              col.key === "bytes" && value !== null ? `${value} bytes` : col.help || undefined;
            cell(tr, col.key, col.fmt(value), { value, title });
          }
        }
      },
    );
    const empty = $("queues-empty");
    if (shown.length === 0) {
      const failed = Array.from(state.servers.values()).some((server) => server.error);
      let message = "No queue matches the filter.";
      if (state.rows.length === 0) {
        message = failed ? "Could not load every server's queues: see Servers." : "No queues yet.";
      }
      if (empty) empty.firstChild.textContent = message;
      else {
        const tr = document.createElement("tr");
        tr.id = "queues-empty";
        const td = document.createElement("td");
        td.colSpan = QUEUE_COLUMNS.length + 1;
        td.textContent = message;
        tr.appendChild(td);
        $("queues-body").appendChild(tr);
      }
    } else if (empty) {
      empty.remove();
    }
    const count = $("queue-count");
    count.textContent =
      shown.length === state.rows.length
        ? `(${state.rows.length})`
        : `(${shown.length} of ${state.rows.length} shown)`;
    count.dataset.shown = String(shown.length);
    count.dataset.total = String(state.rows.length);
    renderSortState();
  }

  function render() {
    renderServers();
    renderQueues();
    const when = state.lastRefresh;
    const failing = Array.from(state.servers.values()).filter((server) => server.error);
    const stamp = when ? `Updated ${when.toLocaleTimeString()}` : "";
    $("refresh-state").textContent = failing.length
      ? `${stamp}; ${failing.map((server) => `${server.label}: ${server.error}`).join("; ")}`
      : stamp;
    document.body.dataset.loaded = "1"; // tests wait for the first render
  }

  // ---- peek ------------------------------------------------------------------------------

  async function peek(server, name) {
    state.peek = { server: server.label, name };
    const panel = $("peek-panel");
    const list = $("peek-items");
    panel.hidden = false;
    panel.dataset.queue = name;
    panel.dataset.server = server.label;
    panel.dataset.state = "loading";
    $("peek-title").textContent =
      state.servers.size > 1 ? `Peek: ${name} on ${server.label}` : `Peek: ${name}`;
    $("peek-state").textContent = "Loading…";
    const n = $("peek-n").value.trim() || "1";
    let data;
    try {
      data = await api(server, `${queuePath(name, "/peek")}?n=${encodeURIComponent(n)}`);
    } catch (err) {
      list.textContent = "";
      $("peek-state").textContent = `Peek failed: ${explain(err)}`;
      panel.dataset.state = "error";
      return;
    }
    const items = data && Array.isArray(data.items) ? data.items : [];
    list.textContent = "";
    for (const item of items) list.appendChild(peekItem(item));
    $("peek-state").textContent = items.length
      ? `${items.length} waiting item${items.length === 1 ? "" : "s"} from the head (not removed), as of ${new Date().toLocaleTimeString()}.`
      : "No waiting items.";
    panel.dataset.state = "done";
    panel.scrollIntoView({ block: "nearest" });
  }

  function peekItem(item) {
    const li = document.createElement("li");
    li.className = "peek-item";
    if (item.id !== undefined) li.dataset.itemId = String(item.id);
    const encoding = item.encoding === "base64" ? "base64" : "text";
    li.dataset.encoding = encoding;
    const meta = document.createElement("div");
    meta.className = "meta";
    const parts = [];
    if (item.id !== undefined) parts.push(`#${item.id}`);
    if (num(item.size) !== null) parts.push(`${item.size} byte${item.size === 1 ? "" : "s"}`);
    if (num(item.age_ms) !== null) parts.push(`${fmtMs(item.age_ms)} old`);
    if (num(item.flags) !== null && item.flags !== 0) parts.push(`flags ${item.flags}`);
    parts.push(encoding === "base64" ? "binary, shown as base64" : "text");
    meta.textContent = parts.join(" · ");
    const pre = document.createElement("pre");
    pre.className = "peek-data";
    const data = String(item.data ?? "");
    pre.textContent =
      data.length > PEEK_SHOWN_CHARS
        ? `${data.slice(0, PEEK_SHOWN_CHARS)}… (${data.length - PEEK_SHOWN_CHARS} more characters)`
        : data;
    li.append(meta, pre);
    return li;
  }

  // ---- actions ---------------------------------------------------------------------------

  async function queueAction(action, server, name) {
    const where = state.servers.size > 1 ? ` on ${server.label}` : "";
    const what = action === "flush" ? "Flush" : "Delete";
    const text =
      action === "flush"
        ? `Remove every waiting item of queue "${name}"${where}? Open reads are not affected. This cannot be undone.`
        : `Delete queue "${name}"${where} and all its items? This cannot be undone.`;
    if (!(await confirmAction(`${what} queue?`, text, what))) return;
    try {
      if (action === "flush") {
        await api(server, queuePath(name, "/flush"), { method: "POST", auth: true });
        showMessage("ok", `Flushed queue "${name}"${where}.`);
      } else {
        await api(server, queuePath(name), { method: "DELETE", auth: true });
        showMessage("ok", `Deleted queue "${name}"${where}.`);
      }
    } catch (err) {
      showMessage("error", `${what} of queue "${name}"${where} failed: ${explain(err)}`);
    }
    await refresh().catch(() => {});
    if (state.peek && state.peek.name === name && state.peek.server === server.label) {
      await peek(server, name);
    }
  }

  async function serverAction(action, server, tr) {
    if (action === "reload") {
      try {
        await api(server, "reload", { method: "POST", auth: true });
        showMessage("ok", `Reloaded the config of ${server.label}.`);
      } catch (err) {
        showMessage("error", `Reload of ${server.label} failed: ${explain(err)}`);
      }
    } else if (action === "flush-all") {
      const ok = await confirmAction(
        "Flush all queues?",
        `Remove every waiting item of every queue on ${server.label}? The queues stay, open reads are not affected. This cannot be undone.`,
        "Flush all",
      );
      if (!ok) return;
      try {
        await api(server, "api/flush_all", { method: "POST", auth: true });
        showMessage("ok", `Flushed all queues on ${server.label}.`);
      } catch (err) {
        showMessage("error", `Flush of all queues on ${server.label} failed: ${explain(err)}`);
      }
    } else if (action === "shutdown") {
      const ok = await confirmAction(
        "Shut down the server?",
        `Stop the kestrelpy server ${server.label}? Every client is disconnected and it serves nothing until someone starts it again on its host; this dashboard cannot.`,
        "Shut down",
      );
      if (!ok) return;
      try {
        await api(server, "shutdown", { method: "POST", auth: true });
      } catch (err) {
        // No answer at all may mean it stopped before replying: watch it either way.
        if (!(err instanceof ApiError && err.status === 0)) {
          showMessage("error", `Shutdown of ${server.label} failed: ${explain(err)}`);
          await refresh().catch(() => {});
          return;
        }
      }
      await watchShutdown(server);
      return;
    } else if (action === "set-status") {
      const select = tr.querySelector('[data-role="status-select"]');
      const status = select.value;
      const ok = await confirmAction(
        "Change status?",
        `Set ${server.label} to "${status}"? readonly refuses writes, quiescent refuses reads and writes.`,
        "Set status",
      );
      if (!ok) return;
      try {
        const data = await api(server, "api/status", {
          method: "POST",
          auth: true,
          body: { status },
        });
        delete select.dataset.touched;
        showMessage("ok", `${server.label} is now ${data && data.status ? data.status : status}.`);
      } catch (err) {
        showMessage("error", `Status change of ${server.label} failed: ${explain(err)}`);
      }
    }
    await refresh().catch(() => {});
    if (action === "flush-all" && state.peek && state.peek.server === server.label) {
      await peek(server, state.peek.name);
    }
  }

  const SHUTDOWN_WAIT_MS = 15000;

  // After a shutdown request: "stopping" until the server no longer answers, then "stopped".
  async function watchShutdown(server) {
    state.stopping.set(server.label, "stopping");
    showMessage("ok", `${server.label} is shutting down…`);
    render();
    const deadline = Date.now() + SHUTDOWN_WAIT_MS;
    while (Date.now() < deadline) {
      try {
        await api(server, "healthz");
      } catch (err) {
        if (err instanceof ApiError && err.status === 0) {
          state.stopping.set(server.label, "stopped");
          showMessage("ok", `${server.label} has shut down: it no longer answers.`);
          await refresh().catch(() => {});
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    state.stopping.delete(server.label);
    showMessage(
      "error",
      `${server.label} still answers ${SHUTDOWN_WAIT_MS / 1000} s after it accepted the shutdown request.`,
    );
    await refresh().catch(() => {});
  }

  // ---- wiring ----------------------------------------------------------------------------

  function renderTokenState() {
    const set = Boolean(getToken());
    $("token-state").textContent = set ? "Token set for this tab." : "No token: changes will be refused.";
    $("token-state").dataset.set = set ? "1" : "0";
    $("token").placeholder = set ? "•••••• (set)" : "";
  }

  function wire() {
    renderQueueHead();
    renderTokenState();

    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      try {
        if (value) sessionStorage.setItem(TOKEN_KEY, value);
        else sessionStorage.removeItem(TOKEN_KEY);
      } catch {
        showMessage("error", "This browser does not allow session storage; the token cannot be kept.");
      }
      $("token").value = "";
      renderTokenState();
    });
    $("token-clear").addEventListener("click", () => {
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch {
        // nothing stored
      }
      $("token").value = "";
      renderTokenState();
    });

    $("queues-head").addEventListener("click", (event) => {
      const b = event.target.closest("button[data-sort]");
      if (!b) return;
      const key = b.dataset.sort;
      state.sort =
        state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: 1 };
      renderQueues();
    });

    $("filter").addEventListener("input", () => renderQueues());

    $("queues-body").addEventListener("click", (event) => {
      const b = event.target.closest("button[data-action]");
      if (!b) return;
      const tr = b.closest("tr");
      const server = state.servers.get(tr.dataset.server);
      if (!server) return;
      const name = tr.dataset.queue;
      if (b.dataset.action === "peek") peek(server, name);
      else queueAction(b.dataset.action, server, name);
    });

    $("servers-body").addEventListener("click", (event) => {
      const b = event.target.closest("button[data-action]");
      if (!b) return;
      const tr = b.closest("tr");
      const server = state.servers.get(tr.dataset.server);
      if (server) serverAction(b.dataset.action, server, tr);
    });

    $("peek-again").addEventListener("click", () => {
      if (!state.peek) return;
      const server = state.servers.get(state.peek.server);
      if (server) peek(server, state.peek.name);
    });
    $("peek-close").addEventListener("click", () => {
      state.peek = null;
      $("peek-panel").hidden = true;
      $("peek-items").textContent = "";
    });

    $("message-close").addEventListener("click", clearMessage);
    $("refresh-now").addEventListener("click", () => refresh().catch(() => {}));
    $("auto-refresh").addEventListener("change", schedule);
    $("refresh-interval").addEventListener("change", schedule);

    refresh()
      .catch(() => {})
      .finally(schedule);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
