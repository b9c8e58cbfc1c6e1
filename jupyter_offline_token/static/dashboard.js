/*
 * jupyter-offline-token dashboard: offline tokens and tasks, live.
 *
 * Plain browser JavaScript (no framework, no build step). It talks only to the REST API under
 * the server's base_url, which the page handler renders into <body data-base-url>. Every text
 * that comes from the API is written with textContent, never parsed as HTML. Rows are keyed by
 * id and updated in place, so polling never steals focus or wipes what the user is typing.
 */
(() => {
  "use strict";

  const POLL_MS = 2000;
  // Lists come in pages (newest first); the page shows this many more per "Show more".
  const PAGE_SIZE = 100;
  const body = document.body;
  const baseUrl = withTrailingSlash(body.dataset.baseUrl || "/");
  const apiRoot = baseUrl + "api/offline-token/";

  const $ = (id) => document.getElementById(id);
  const ui = {
    banner: $("health-banner"),
    status: $("status-message"),
    requestForm: $("request-form"),
    tokenLabel: $("token-label"),
    requestButton: document.querySelector('[data-testid="request-token"]'),
    tokenList: $("token-list"),
    tokensEmpty: $("tokens-empty"),
    tokenCount: $("token-count"),
    tokensHeading: $("tokens-heading"),
    taskForm: $("task-form"),
    taskName: $("task-name"),
    taskDescription: $("task-description"),
    taskKind: $("task-kind"),
    taskCommand: $("task-command"),
    taskCommandField: $("task-command-field"),
    taskToken: $("task-token"),
    taskFormError: $("task-form-error"),
    taskList: $("task-list"),
    tasksEmpty: $("tasks-empty"),
    taskCount: $("task-count"),
    tasksHeading: $("tasks-heading"),
    tokensMore: $("tokens-more"),
    tasksMore: $("tasks-more"),
  };

  const state = {
    tokens: [],
    tokensById: new Map(),
    tasks: [],
    tasksById: new Map(),
    // How many of each list to show, and whether the server has more beyond that.
    tokensWanted: PAGE_SIZE,
    tasksWanted: PAGE_SIZE,
    tokensMore: false,
    tasksMore: false,
    health: null,
    configured: true,
    notConfiguredMessage: "",
    connectionError: null,
    loaded: false,
    // Consent URLs this page created, so a closed or blocked provider tab can be reopened.
    consentUrls: new Map(),
    // Inline task errors survive re-renders until the next action on that task.
    taskErrors: new Map(),
  };
  const tokenViews = new Map();
  const taskViews = new Map();

  // ---------------------------------------------------------------- small helpers

  function withTrailingSlash(url) {
    return url.endsWith("/") ? url : url + "/";
  }

  /** Create an element; `props` are attributes except text/class/hidden/on*; children append. */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "hidden") node.hidden = true;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function setText(node, value) {
    const text = value === null || value === undefined ? "" : String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  function setAttr(node, name, value) {
    const text = String(value);
    if (node.getAttribute(name) !== text) node.setAttribute(name, text);
  }

  function show(node, visible) {
    if (node.hidden === Boolean(visible)) node.hidden = !visible;
  }

  function formatTime(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function setTime(node, iso) {
    setText(node, formatTime(iso));
    if (iso) setAttr(node, "datetime", iso);
    else if (node.hasAttribute("datetime")) node.removeAttribute("datetime");
  }

  function shortId(id) {
    return String(id || "").slice(0, 8);
  }

  function tokenName(token) {
    return token.label ? token.label : "Token " + shortId(token.persistent_token_id);
  }

  function safeHttpUrl(value) {
    try {
      const url = new URL(String(value), window.location.href);
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch (_err) {
      return null;
    }
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  /** Messages for screen readers and sighted users alike (the region is aria-live). */
  function announce(text, kind) {
    setAttr(ui.status, "data-kind", kind || "info");
    if (ui.status.textContent === text) ui.status.textContent = "";
    ui.status.textContent = text;
  }

  /** Run an action once at a time per button, without disabling it (that would drop focus). */
  async function busy(button, action) {
    if (button.dataset.busy === "true") return;
    button.dataset.busy = "true";
    button.setAttribute("aria-busy", "true");
    try {
      await action();
    } catch (err) {
      announce(err && err.message ? err.message : "Something went wrong.", "error");
    } finally {
      delete button.dataset.busy;
      button.removeAttribute("aria-busy");
    }
  }

  // ---------------------------------------------------------------- REST API

  class ApiError extends Error {
    constructor(status, code, message, data) {
      super(message);
      this.status = status;
      this.code = code;
      this.data = data;
    }
  }

  function xsrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    return match ? match[1] : body.dataset.xsrfToken || "";
  }

  function fallbackMessage(status) {
    if (status === 401 || status === 403) {
      return "Your Jupyter session has ended or you are not allowed to do this. Reload the page to sign in again.";
    }
    if (status === 404) return "Not found: it may have been deleted meanwhile.";
    if (status >= 500) return "The Jupyter server failed to answer (HTTP " + status + ").";
    return "The request was refused (HTTP " + status + ").";
  }

  async function api(method, path, payload) {
    // Every request carries the XSRF token, GETs included: JupyterHub's single-user server
    // refuses cookie-authenticated fetch() GETs without it. (A request that cannot set headers,
    // such as an EventSource, would pass it as the `_xsrf` query argument instead.)
    const headers = { Accept: "application/json", "X-XSRFToken": xsrfToken() };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    let text = "";
    try {
      response = await fetch(apiRoot + path, init);
      text = response.status === 204 ? "" : await response.text();
    } catch (_err) {
      throw new ApiError(0, "network", "Cannot reach the Jupyter server. Is it still running?");
    }
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_err) {
        data = null;
      }
    }
    if (!response.ok) {
      const code = data && typeof data.error === "string" ? data.error : "http_" + response.status;
      const message =
        data && typeof data.message === "string" && data.message
          ? data.message
          : fallbackMessage(response.status);
      throw new ApiError(response.status, code, message, data);
    }
    return data;
  }

  /**
   * The newest `wanted` items of a paged list: follows next_cursor page by page. Resolves to
   * { [key]: items, more } where `more` says the server has older ones beyond them.
   */
  async function loadPages(route, key, wanted) {
    let items = [];
    let cursor = null;
    do {
      let query = route + "?limit=" + Math.min(1000, wanted - items.length);
      if (cursor) query += "&cursor=" + encodeURIComponent(cursor);
      const data = await api("GET", query);
      if (!data || !Array.isArray(data[key])) break;
      items = items.concat(data[key]);
      cursor = typeof data.next_cursor === "string" && data.next_cursor ? data.next_cursor : null;
    } while (cursor && items.length < wanted);
    return { [key]: items, more: Boolean(cursor) };
  }

  const path = {
    token: (id) => "tokens/" + encodeURIComponent(id),
    task: (id) => "tasks/" + encodeURIComponent(id),
  };

  // ---------------------------------------------------------------- polling

  let pollTimer = null;
  let inflight = null;
  let again = false;

  function schedulePoll(delay) {
    if (pollTimer !== null) window.clearTimeout(pollTimer);
    pollTimer = null;
    if (document.hidden) return;
    pollTimer = window.setTimeout(tick, delay);
  }

  async function tick() {
    pollTimer = null;
    await refresh();
    if (pollTimer === null) schedulePoll(POLL_MS);
  }

  /** Fetch tokens, tasks and health; one refresh at a time, coalescing extra requests. */
  function refresh() {
    if (inflight) {
      again = true;
      return inflight;
    }
    inflight = (async () => {
      do {
        again = false;
        await loadAll();
      } while (again);
    })().finally(() => {
      inflight = null;
    });
    return inflight;
  }

  async function loadAll() {
    const [tokens, tasks, health] = await Promise.allSettled([
      loadPages("tokens", "tokens", state.tokensWanted),
      loadPages("tasks", "tasks", state.tasksWanted),
      // Counts only: the banner never shows the health list itself.
      api("GET", "health?limit=1"),
    ]);
    let connectionError = null;
    let configured = state.configured;
    for (const result of [tokens, tasks, health]) {
      if (result.status !== "rejected") continue;
      const err = result.reason;
      if (err && err.code === "not_configured") {
        configured = false;
        state.notConfiguredMessage = err.message;
      } else if (!connectionError) {
        connectionError = err;
      }
    }
    if (tokens.status === "fulfilled" && tokens.value && Array.isArray(tokens.value.tokens)) {
      state.tokens = tokens.value.tokens;
      state.tokensMore = tokens.value.more;
      state.tokensById = new Map(state.tokens.map((t) => [t.persistent_token_id, t]));
    }
    if (tasks.status === "fulfilled" && tasks.value && Array.isArray(tasks.value.tasks)) {
      state.tasks = tasks.value.tasks;
      state.tasksMore = tasks.value.more;
      state.tasksById = new Map(state.tasks.map((t) => [t.id, t]));
    }
    if (health.status === "fulfilled" && health.value) {
      state.health = health.value;
      configured = health.value.configured !== false;
      if (configured) state.notConfiguredMessage = "";
    }
    state.configured = configured;
    state.connectionError = connectionError;
    state.loaded = true;
    try {
      render();
    } catch (err) {
      announce("The page failed to display the latest data: " + err.message, "error");
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (pollTimer !== null) window.clearTimeout(pollTimer);
      pollTimer = null;
    } else {
      schedulePoll(0);
    }
  });

  // ---------------------------------------------------------------- rendering

  function render() {
    renderBanner();
    renderTokens();
    renderTasks();
    syncTokenOptions(ui.taskToken, "None (link one later)");
    const blocked = !state.configured;
    setAttr(ui.requestButton, "aria-disabled", blocked ? "true" : "false");
    const hint = blocked ? "Offline tokens are not configured on this server." : "";
    if (ui.requestButton.title !== hint) ui.requestButton.title = hint;
  }

  const BANNER_TITLES = {
    healthy: "All offline tokens are healthy",
    pending: "Waiting for consent",
    degraded: "Some tokens are retrying",
    unhealthy: "Some tokens need attention",
  };

  function renderBanner() {
    let level;
    let title;
    let detail = "";
    const err = state.connectionError;
    if (err && (err.status === 401 || err.status === 403)) {
      level = "offline";
      title = "Signed out";
      detail = err.message;
    } else if (err) {
      level = "offline";
      title = "Connection problem";
      detail = err.message + " Retrying every 2 seconds.";
    } else if (!state.configured) {
      level = "not_configured";
      title = "Not configured";
      detail =
        state.notConfiguredMessage ||
        "The administrator has not set OfflineTokenApp.issuer and client_id yet, so offline tokens cannot be requested.";
    } else if (state.health) {
      const counts = state.health.counts || {};
      const parts = Object.keys(counts)
        .filter((key) => Number(counts[key]) > 0)
        .map((key) => counts[key] + " " + key);
      if (parts.length === 0) {
        level = "empty";
        title = "No offline tokens yet";
        detail = "Request one below to let long-running work get fresh access tokens.";
      } else {
        level = String(state.health.level || "unknown");
        title = BANNER_TITLES[level] || "Token health: " + level;
        detail = parts.join(" · ");
      }
    } else {
      level = "unknown";
      title = "Loading…";
    }
    setAttr(ui.banner, "data-level", level);
    setAttr(ui.banner, "class", "banner banner-" + level.replace(/[^a-z_]/g, ""));
    setText(ui.banner.querySelector(".banner-title"), title);
    setText(ui.banner.querySelector(".banner-detail"), detail);
  }

  /** Keep the row order of `list` with the fewest DOM moves; remove rows that are gone. */
  function reconcile(container, ids, views, create, update, heading) {
    const wanted = new Set(ids);
    for (const [id, view] of views) {
      if (!wanted.has(id)) {
        const hadFocus = view.row.contains(document.activeElement);
        view.row.remove();
        views.delete(id);
        if (hadFocus && heading) heading.focus();
      }
    }
    let cursor = container.firstElementChild;
    for (const id of ids) {
      let view = views.get(id);
      if (!view) {
        view = create(id);
        views.set(id, view);
      }
      const focused = view.row.contains(document.activeElement) ? document.activeElement : null;
      update(view);
      if (focused) keepFocusInRow(view, focused);
      if (view.row !== cursor) container.insertBefore(view.row, cursor);
      else cursor = cursor.nextElementSibling;
    }
  }

  /**
   * When an update hid the control that had focus (browsers drop focus to <body> at once), move
   * focus to the row's first visible action so keyboard users stay where they were.
   */
  function keepFocusInRow(view, focused) {
    if (document.activeElement === focused && !focused.closest("[hidden]")) return;
    const next = Array.from(view.row.querySelectorAll(".row-actions button")).find(
      (b) => !b.hidden && !b.closest("[hidden]"),
    );
    (next || view.row).focus();
  }

  // ---- tokens

  function renderTokens() {
    const ids = state.tokens.map((t) => t.persistent_token_id);
    reconcile(ui.tokenList, ids, tokenViews, createTokenView, updateTokenView, ui.tokensHeading);
    const more = state.tokensMore ? "+" : "";
    setText(ui.tokenCount, state.tokens.length ? "(" + state.tokens.length + more + ")" : "");
    show(ui.tokensEmpty, state.loaded && state.tokens.length === 0);
    show(ui.tokensMore, state.tokensMore);
  }

  function createTokenView(id) {
    const v = { id };
    v.name = h("span", { class: "name" });
    v.badge = h("span", { class: "badge", "data-testid": "token-status" });
    v.idText = h("code", { class: "mono", "data-testid": "token-id", text: id });
    v.copy = h("button", {
      type: "button",
      class: "small",
      "data-testid": "copy-id",
      "aria-label": "Copy token ID " + id,
      text: "Copy ID",
      onclick: () => busy(v.copy, () => copyId(id, v.copy)),
    });
    v.healthDetail = h("span", { class: "health-detail" });
    v.healthAction = h("span", { class: "health-action muted" });
    v.reconsent = h("button", {
      type: "button",
      class: "small",
      "data-testid": "token-reconsent",
      text: "Request consent again",
      hidden: true,
      onclick: () => busy(v.reconsent, () => reconsent(id)),
    });
    v.health = h(
      "p",
      { class: "health", "data-testid": "token-health" },
      v.healthDetail,
      " ",
      v.healthAction,
      " ",
      v.reconsent,
    );
    v.lastRefresh = h("time");
    v.refreshCount = h("dd", { "data-testid": "token-refresh-count" });
    v.created = h("time");
    v.scopes = h("dd");
    v.linked = h("dd", { "data-testid": "token-tasks" });
    v.expiresTime = h("time");
    v.expires = meta("Consent expires", h("dd", {}, v.expiresTime));
    v.lastError = h("p", { class: "error-box", "data-testid": "token-error", hidden: true });
    v.openConsent = h("button", {
      type: "button",
      "data-testid": "open-consent",
      text: "Open consent page",
      hidden: true,
      onclick: () => openConsentUrl(state.consentUrls.get(id)),
    });
    v.refreshNow = h("button", {
      type: "button",
      "data-testid": "refresh-token",
      text: "Refresh now",
      title: "Refresh this token at the identity provider now (at most once per minimum refresh interval)",
      hidden: true,
      onclick: () => busy(v.refreshNow, () => refreshToken(id)),
    });
    v.revoke = h("button", {
      type: "button",
      class: "danger",
      "data-testid": "revoke",
      text: "Revoke",
      onclick: () => busy(v.revoke, () => revokeToken(id)),
    });
    v.row = h(
      "li",
      { class: "row", "data-testid": "token-row", "data-token-id": id, tabindex: "-1" },
      h(
        "div",
        { class: "row-main" },
        h("div", { class: "row-title" }, v.name, v.badge),
        h("div", { class: "id-line" }, h("span", { class: "muted", text: "ID" }), v.idText, v.copy),
        v.health,
        h(
          "dl",
          { class: "meta" },
          meta("Last refresh", h("dd", {}, v.lastRefresh)),
          meta("Refreshes", v.refreshCount),
          meta("Linked tasks", v.linked),
          meta("Scopes", v.scopes),
          meta("Created", h("dd", {}, v.created)),
          v.expires,
        ),
        v.lastError,
      ),
      h("div", { class: "row-actions" }, v.openConsent, v.refreshNow, v.revoke),
    );
    return v;
  }

  function meta(term, dd) {
    return h("div", {}, h("dt", { text: term }), dd);
  }

  const ACTION_TEXT = {
    none: "",
    wait: "Retrying automatically.",
    request_consent: "The grant cannot be used any more: request consent again.",
    fix_configuration: "Ask the administrator to fix the OpenID client configuration.",
  };

  function updateTokenView(v) {
    const token = state.tokensById.get(v.id);
    const status = String(token.status || "unknown");
    const name = tokenName(token);
    setText(v.name, name);
    setText(v.badge, status);
    setAttr(v.badge, "class", "badge badge-" + status.replace(/[^a-z]/g, ""));
    setAttr(v.row, "data-status", status);

    const health = token.health || {};
    const level = String(health.level || "");
    setAttr(v.health, "data-level", level);
    setText(v.healthDetail, health.detail || "");
    let actionText = ACTION_TEXT[health.action] || "";
    if (health.action === "wait" && health.next_attempt_at) {
      actionText = "Retrying automatically; next attempt " + formatTime(health.next_attempt_at) + ".";
    }
    setText(v.healthAction, actionText);
    show(v.reconsent, health.action === "request_consent" || status === "expired");
    show(v.health, Boolean(health.detail || actionText || !v.reconsent.hidden));

    setTime(v.lastRefresh, token.last_refresh_at);
    setText(v.refreshCount, token.refresh_count === undefined ? "—" : token.refresh_count);
    setTime(v.created, token.created_at);
    setText(v.scopes, Array.isArray(token.scopes) ? token.scopes.join(" ") : "—");
    setText(v.linked, linkedTaskNames(token));
    show(v.expires, status === "pending" && Boolean(token.consent_expires_at));
    setTime(v.expiresTime, token.consent_expires_at);

    const lastError = token.last_error && token.last_error !== health.detail ? token.last_error : "";
    setText(v.lastError, lastError ? "Last error: " + lastError : "");
    show(v.lastError, Boolean(lastError));

    show(v.openConsent, status === "pending" && state.consentUrls.has(v.id));
    show(v.refreshNow, status === "active");
    setAttr(v.refreshNow, "aria-label", "Refresh " + name + " now");
    setText(v.revoke, status === "active" ? "Revoke" : "Remove");
    setAttr(v.revoke, "aria-label", (status === "active" ? "Revoke " : "Remove ") + name);
  }

  function linkedTaskNames(token) {
    const ids = new Set(Array.isArray(token.tasks) ? token.tasks : []);
    for (const task of state.tasks) {
      if (task.persistent_token_id === token.persistent_token_id) ids.add(task.id);
    }
    if (ids.size === 0) return "none";
    return Array.from(ids)
      .map((id) => {
        const task = state.tasksById.get(id);
        return task ? task.name : shortId(id);
      })
      .join(", ");
  }

  function activeTokens() {
    return state.tokens.filter((t) => t.status === "active");
  }

  /** Rebuild a token <select> only when the set of active tokens changed; keep the choice. */
  function syncTokenOptions(select, placeholder) {
    const options = activeTokens().map((t) => ({
      value: t.persistent_token_id,
      label: tokenName(t) + " (" + shortId(t.persistent_token_id) + ")",
    }));
    const signature = JSON.stringify(options);
    if (select.dataset.signature === signature) return;
    const current = select.value;
    select.replaceChildren(
      h("option", { value: "", text: options.length ? placeholder : "No active tokens" }),
      ...options.map((o) => h("option", { value: o.value, text: o.label })),
    );
    select.value = options.some((o) => o.value === current) ? current : "";
    select.dataset.signature = signature;
  }

  // ---- tasks

  function renderTasks() {
    const ids = state.tasks.map((t) => t.id);
    reconcile(ui.taskList, ids, taskViews, createTaskView, updateTaskView, ui.tasksHeading);
    const more = state.tasksMore ? "+" : "";
    setText(ui.taskCount, state.tasks.length ? "(" + state.tasks.length + more + ")" : "");
    show(ui.tasksEmpty, state.loaded && state.tasks.length === 0);
    show(ui.tasksMore, state.tasksMore);
    for (const id of Array.from(state.taskErrors.keys())) {
      if (!state.tasksById.has(id)) state.taskErrors.delete(id);
    }
  }

  function createTaskView(id) {
    const v = { id };
    const selectId = "link-select-" + id;
    v.name = h("span", { class: "name" });
    v.kind = h("span", { class: "kind" });
    v.badge = h("span", { class: "badge", "data-testid": "task-status" });
    v.description = h("p", { class: "description muted", hidden: true });
    v.fill = h("div", { class: "progress-fill" });
    v.bar = h(
      "div",
      {
        class: "progress-track",
        role: "progressbar",
        "aria-valuemin": "0",
        "aria-valuemax": "100",
        "aria-valuenow": "0",
        "data-testid": "task-progress",
      },
      v.fill,
    );
    v.progressText = h("span", { class: "progress-text", "data-testid": "task-progress-text" });
    v.tokenInfo = h("dd", { "data-testid": "task-token-info" });
    v.started = h("time");
    v.completed = h("time");
    v.result = h("div", { class: "result-box", "data-testid": "task-result", hidden: true });
    v.error = h("div", { class: "error-box", "data-testid": "task-error", hidden: true });
    v.inlineText = h("span", { class: "inline-error-text" });
    v.inlineAction = h("button", {
      type: "button",
      class: "small",
      "data-testid": "inline-action",
      hidden: true,
      onclick: () => busy(v.inlineAction, () => inlineNextStep(id)),
    });
    v.inline = h(
      "div",
      { class: "inline-error", role: "alert", "data-testid": "inline-error", hidden: true },
      v.inlineText,
      v.inlineAction,
    );
    v.execute = h("button", {
      type: "button",
      class: "primary",
      "data-testid": "execute",
      text: "Execute",
      onclick: () => busy(v.execute, () => executeTask(id)),
    });
    v.retry = h("button", {
      type: "button",
      "data-testid": "retry",
      text: "Retry",
      onclick: () => busy(v.retry, () => executeTask(id)),
    });
    v.cancel = h("button", {
      type: "button",
      "data-testid": "cancel",
      text: "Cancel",
      onclick: () => busy(v.cancel, () => cancelTask(id)),
    });
    v.remove = h("button", {
      type: "button",
      class: "danger",
      "data-testid": "delete",
      text: "Delete",
      onclick: () => busy(v.remove, () => deleteTask(id)),
    });
    v.select = h("select", { id: selectId, "data-testid": "link-select" });
    v.link = h("button", {
      type: "button",
      "data-testid": "link",
      text: "Link token",
      onclick: () => busy(v.link, () => linkTask(id, v.select.value)),
    });
    v.linkControl = h(
      "div",
      { class: "link-control" },
      h("label", { for: selectId, class: "visually-hidden", text: "Offline token for this task" }),
      v.select,
      v.link,
    );
    v.row = h(
      "li",
      { class: "row", "data-testid": "task-row", "data-task-id": id, tabindex: "-1" },
      h(
        "div",
        { class: "row-main" },
        h("div", { class: "row-title" }, v.name, v.kind, v.badge),
        v.description,
        h("div", { class: "progress" }, v.bar, v.progressText),
        h(
          "dl",
          { class: "meta" },
          meta("Token", v.tokenInfo),
          meta("Started", h("dd", {}, v.started)),
          meta("Completed", h("dd", {}, v.completed)),
        ),
        v.result,
        v.error,
        v.inline,
      ),
      h(
        "div",
        { class: "row-actions" },
        v.execute,
        v.retry,
        v.cancel,
        v.remove,
        v.linkControl,
      ),
    );
    return v;
  }

  const RETRYABLE = new Set(["failed", "cancelled", "interrupted"]);

  function updateTaskView(v) {
    const task = state.tasksById.get(v.id);
    const status = String(task.status || "unknown");
    setText(v.name, task.name || "Task " + shortId(task.id));
    setText(v.kind, task.kind || "");
    setText(v.badge, status);
    setAttr(v.badge, "class", "badge badge-" + status.replace(/[^a-z]/g, ""));
    setAttr(v.row, "data-status", status);
    setText(v.description, task.description || "");
    show(v.description, Boolean(task.description));

    const pct = Math.max(0, Math.min(100, Math.round(Number(task.progress) || 0)));
    const message = task.message ? String(task.message) : "";
    const progressLabel = pct + " %" + (message ? " — " + message : "");
    if (v.fill.style.width !== pct + "%") v.fill.style.width = pct + "%";
    setAttr(v.bar, "aria-valuenow", pct);
    setAttr(v.bar, "aria-valuetext", progressLabel);
    setAttr(v.bar, "aria-label", "Progress of " + (task.name || "task"));
    setText(v.progressText, progressLabel);

    const token = task.persistent_token_id ? state.tokensById.get(task.persistent_token_id) : null;
    let tokenText = "none linked";
    if (task.persistent_token_id) {
      const label = token ? tokenName(token) : shortId(task.persistent_token_id);
      const tokenStatus = token ? token.status : task.offline_token_status || "unknown";
      tokenText = label + " (" + tokenStatus + ")";
    }
    setText(v.tokenInfo, tokenText);
    setTime(v.started, task.started_at);
    setTime(v.completed, task.completed_at);

    const hasResult = task.result !== null && task.result !== undefined && task.result !== "";
    setText(v.result, hasResult ? "Result: " + displayValue(task.result) : "");
    show(v.result, hasResult);
    const hasError = Boolean(task.error);
    setText(v.error, hasError ? "Error: " + displayValue(task.error) : "");
    show(v.error, hasError);

    if (status === "running" || status === "completed") state.taskErrors.delete(v.id);
    renderInlineError(v);

    show(v.execute, status === "pending");
    show(v.retry, RETRYABLE.has(status));
    show(v.cancel, status === "running");
    show(v.remove, status !== "running");
    show(v.linkControl, status !== "running" && status !== "completed");
    syncTokenOptions(v.select, "Choose an active token…");
  }

  function displayValue(value) {
    if (typeof value === "string") return value;
    try {
      return JSON.stringify(value, null, 2);
    } catch (_err) {
      return String(value);
    }
  }

  /** What to tell the user for each execute refusal, and which next step to offer. */
  function describeTaskError(task, err) {
    switch (err.code) {
      case "needs_consent":
        return {
          text: "No offline token is linked to this task. Link an active token, or request one for this task (it links itself once you grant access).",
          action: "request",
          actionText: "Request token for this task",
        };
      case "waiting_consent": {
        const url = task && state.consentUrls.get(task.persistent_token_id);
        return {
          text: "The linked token is still waiting for consent. Grant access in the identity provider's tab, then execute again.",
          action: url ? "open" : "request",
          actionText: url ? "Open consent page" : "Request a new token for this task",
        };
      }
      case "token_failed":
      case "token_revoked":
      case "consent_expired":
        return {
          text: "The linked token cannot be used any more (" + err.message + "). Request a new token for this task, then execute again.",
          action: "request",
          actionText: "Request a new token for this task",
        };
      case "already_running":
        return { text: "This task is already running.", action: null, actionText: "" };
      default:
        return { text: err.message, action: null, actionText: "" };
    }
  }

  function renderInlineError(v) {
    const err = state.taskErrors.get(v.id);
    if (!err) {
      show(v.inline, false);
      show(v.inlineAction, false);
      return;
    }
    const info = describeTaskError(state.tasksById.get(v.id), err);
    setText(v.inlineText, info.text);
    setAttr(v.inline, "data-error", err.code || "");
    setText(v.inlineAction, info.actionText);
    v.inlineAction.dataset.action = info.action || "";
    show(v.inlineAction, Boolean(info.action));
    show(v.inline, true);
  }

  function setTaskError(id, err) {
    state.taskErrors.set(id, { code: err.code || "", message: err.message || "" });
    const view = taskViews.get(id);
    if (view) renderInlineError(view);
  }

  function clearTaskError(id) {
    state.taskErrors.delete(id);
    const view = taskViews.get(id);
    if (view) renderInlineError(view);
  }

  // ---------------------------------------------------------------- actions

  function openConsentUrl(url) {
    const safe = safeHttpUrl(url);
    if (!safe) return;
    const win = window.open("", "_blank");
    if (!win) {
      announce("Your browser blocked the new tab. Allow pop-ups for this page and try again.", "warning");
      return;
    }
    navigateTab(win, safe);
  }

  function navigateTab(win, url) {
    try {
      win.opener = null;
    } catch (_err) {
      // Some browsers refuse; the provider page then simply keeps an opener reference.
    }
    win.location.href = url;
  }

  /**
   * Where the provider's tab lands once access is granted: this dashboard (the callback adds
   * ?persistent_token_id=), not the callback's page written for notebooks. Only the path and
   * theme: never the ?token= a user may have opened the page with.
   */
  function consentReturnPath() {
    const theme = new URLSearchParams(window.location.search).get("theme");
    const query = theme === "light" || theme === "dark" ? "?theme=" + theme : "";
    return baseUrl + "offline-token/" + query;
  }

  /** Back from the provider (see consentReturnPath): say so, show the row, tidy the address. */
  function takeConsentReturn() {
    const params = new URLSearchParams(window.location.search);
    const id = params.get("persistent_token_id");
    if (!id) return null;
    params.delete("persistent_token_id");
    const query = params.toString();
    const url = window.location.pathname + (query ? "?" + query : "") + window.location.hash;
    try {
      window.history.replaceState(window.history.state, "", url);
    } catch (_err) {
      // A sandboxed frame may refuse; the id in the address bar is harmless.
    }
    return id;
  }

  function announceConsentReturn(id) {
    const token = state.tokensById.get(id);
    const name = token ? "“" + tokenName(token) + "”" : "token " + shortId(id);
    announce("Offline access granted for " + name + ". You can close this tab or keep working here.");
    const view = tokenViews.get(id);
    if (view && view.row) view.row.scrollIntoView({ block: "nearest" });
  }

  /**
   * POST a consent and send the user to the provider. The tab is opened synchronously in the
   * click handler (pop-up blockers allow that) and pointed at the consent URL once known.
   */
  async function requestConsent(payload) {
    payload = { ...payload, return_to: consentReturnPath() };
    if (!state.configured) {
      announce(state.notConfiguredMessage || "Offline tokens are not configured on this server.", "error");
      return null;
    }
    const win = window.open("", "_blank");
    if (win) {
      try {
        win.document.title = "Contacting your identity provider…";
        win.document.body.textContent = "Contacting your identity provider…";
      } catch (_err) {
        // Not ours to write into (should not happen for about:blank); the redirect still works.
      }
    }
    let data;
    try {
      data = await api("POST", "consents", payload);
    } catch (err) {
      if (win) win.close();
      throw err;
    }
    const url = safeHttpUrl(data && data.consent_url);
    if (!url) {
      if (win) win.close();
      throw new Error("The server answered without a usable consent URL.");
    }
    state.consentUrls.set(data.persistent_token_id, url);
    if (win && !win.closed) {
      navigateTab(win, url);
      announce(
        "The identity provider opened in a new tab. Grant access there; the token turns active here by itself.",
      );
    } else {
      announce(
        "Your browser blocked the new tab. Use “Open consent page” on the new token to continue.",
        "warning",
      );
    }
    await refresh();
    return data;
  }

  async function reconsent(id) {
    const token = state.tokensById.get(id);
    if (!token) return;
    const payload = {};
    if (token.label) payload.label = token.label;
    const taskId = token.task_id || (Array.isArray(token.tasks) && token.tasks[0]);
    if (taskId && state.tasksById.has(taskId)) payload.task_id = taskId;
    await requestConsent(payload);
  }

  function sameAccountTokens(token) {
    if (!token.subject) return [];
    return state.tokens.filter(
      (t) =>
        t.persistent_token_id !== token.persistent_token_id &&
        t.status === "active" &&
        t.subject === token.subject,
    );
  }

  /** One refresh grant now; the answer is the token's metadata (never a token). */
  async function refreshToken(id) {
    const token = state.tokensById.get(id);
    if (!token) return;
    const name = tokenName(token);
    await api("POST", path.token(id) + "/refresh", {});
    announce("Token “" + name + "” refreshed.");
    await refresh();
  }

  async function revokeToken(id) {
    const token = state.tokensById.get(id);
    if (!token) return;
    const name = tokenName(token);
    const active = token.status === "active";
    let question = active
      ? "Revoke the offline token “" + name + "”?\n\nIt is revoked at the identity provider and removed here. Tasks linked to it can no longer get access tokens."
      : "Remove the offline token “" + name + "” (" + token.status + ")?";
    const others = sameAccountTokens(token);
    if (active && others.length) {
      question +=
        "\n\nWarning: " +
        plural(others.length, "other active token") +
        " (" +
        others.map(tokenName).join(", ") +
        (others.length === 1 ? ") belongs" : ") belong") +
        " to the same account. Revoking at the provider may end their consent too.";
    }
    if (!window.confirm(question)) return;
    let data;
    try {
      data = await api("DELETE", path.token(id));
    } catch (err) {
      if (err.code !== "token_in_use") throw err;
      const force = window.confirm(
        err.message + "\n\nCancel the running task(s) that use it and revoke anyway?",
      );
      if (!force) return;
      data = await api("DELETE", path.token(id) + "?force=true");
    }
    state.consentUrls.delete(id);
    if (data && data.warning) {
      announce((active ? "Token revoked. " : "Token removed. ") + data.warning, "warning");
    } else {
      announce(active ? "Token “" + name + "” revoked." : "Token “" + name + "” removed.");
    }
    await refresh();
  }

  async function copyId(id, button) {
    let copied = false;
    const policy = document.featurePolicy;
    const clipboardAllowed =
      !policy || typeof policy.allowsFeature !== "function" || policy.allowsFeature("clipboard-write");
    if (navigator.clipboard && window.isSecureContext && clipboardAllowed) {
      try {
        await navigator.clipboard.writeText(id);
        copied = true;
      } catch (_err) {
        copied = false;
      }
    }
    if (!copied) {
      const area = h("textarea", { class: "visually-hidden", readonly: true, "aria-hidden": "true" });
      area.value = id;
      body.append(area);
      area.select();
      try {
        copied = document.execCommand("copy");
      } catch (_err) {
        copied = false;
      }
      area.remove();
      button.focus();
    }
    announce(copied ? "Token ID copied." : "Could not copy: select the ID and copy it yourself.", copied ? "info" : "warning");
  }

  async function executeTask(id) {
    clearTaskError(id);
    try {
      await api("POST", path.task(id) + "/execute");
      const task = state.tasksById.get(id);
      announce("Task “" + (task ? task.name : shortId(id)) + "” started.");
    } catch (err) {
      if (err.status === 0) throw err;
      setTaskError(id, err);
    }
    await refresh();
  }

  async function cancelTask(id) {
    clearTaskError(id);
    try {
      await api("POST", path.task(id) + "/cancel");
      announce("Task cancelled.");
    } catch (err) {
      if (err.status === 0) throw err;
      setTaskError(id, err);
    }
    await refresh();
  }

  async function deleteTask(id) {
    const task = state.tasksById.get(id);
    const name = task ? task.name : shortId(id);
    if (!window.confirm("Delete the task “" + name + "”? Its record and result are removed.")) return;
    clearTaskError(id);
    try {
      await api("DELETE", path.task(id));
      announce("Task “" + name + "” deleted.");
    } catch (err) {
      if (err.status === 0) throw err;
      setTaskError(id, err);
    }
    await refresh();
  }

  async function linkTask(id, tokenId) {
    clearTaskError(id);
    if (!tokenId) {
      setTaskError(id, { code: "no_token_chosen", message: "Choose an active token to link first." });
      return;
    }
    try {
      await api("POST", path.task(id) + "/link", { persistent_token_id: tokenId });
      announce("Token linked to the task.");
    } catch (err) {
      if (err.status === 0) throw err;
      setTaskError(id, err);
    }
    await refresh();
  }

  async function inlineNextStep(id) {
    const view = taskViews.get(id);
    const task = state.tasksById.get(id);
    if (!view || !task) return;
    if (view.inlineAction.dataset.action === "open") {
      openConsentUrl(state.consentUrls.get(task.persistent_token_id));
      return;
    }
    const data = await requestConsent({ label: task.name, task_id: id });
    if (data) clearTaskError(id);
  }

  /** Split the command field: a JSON array of strings, or words separated by whitespace. */
  function parseCommand(text) {
    const trimmed = text.trim();
    if (!trimmed) throw new Error("Enter the command to run.");
    if (trimmed.startsWith("[")) {
      let argv;
      try {
        argv = JSON.parse(trimmed);
      } catch (_err) {
        throw new Error("The command looks like JSON but is not valid JSON.");
      }
      if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === "string")) {
        throw new Error("The command must be a non-empty JSON array of strings.");
      }
      return argv;
    }
    return trimmed.split(/\s+/);
  }

  function showFormError(text, field) {
    setText(ui.taskFormError, text);
    show(ui.taskFormError, Boolean(text));
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.focus();
    }
  }

  async function createTask(button) {
    for (const field of [ui.taskName, ui.taskCommand]) field.removeAttribute("aria-invalid");
    showFormError("");
    const name = ui.taskName.value.trim();
    if (!name) {
      showFormError("Give the task a name.", ui.taskName);
      return;
    }
    const payload = { name, kind: ui.taskKind.value };
    const description = ui.taskDescription.value.trim();
    if (description) payload.description = description;
    if (payload.kind === "command") {
      try {
        payload.command = parseCommand(ui.taskCommand.value);
      } catch (err) {
        showFormError(err.message, ui.taskCommand);
        return;
      }
    }
    if (ui.taskToken.value) payload.persistent_token_id = ui.taskToken.value;
    await busy(button, async () => {
      try {
        await api("POST", "tasks", payload);
      } catch (err) {
        showFormError(err.message);
        return;
      }
      ui.taskName.value = "";
      ui.taskDescription.value = "";
      ui.taskCommand.value = "";
      announce("Task “" + name + "” created.");
      await refresh();
    });
  }

  // ---------------------------------------------------------------- wiring

  ui.requestForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const label = ui.tokenLabel.value.trim();
    busy(ui.requestButton, async () => {
      const data = await requestConsent(label ? { label } : {});
      if (data) ui.tokenLabel.value = "";
    });
  });

  ui.taskForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = ui.taskForm.querySelector('[data-testid="create-task"]');
    createTask(button);
  });

  ui.tokensMore.addEventListener("click", () => {
    state.tokensWanted += PAGE_SIZE;
    busy(ui.tokensMore, refresh);
  });

  ui.tasksMore.addEventListener("click", () => {
    state.tasksWanted += PAGE_SIZE;
    busy(ui.tasksMore, refresh);
  });

  function syncKindField() {
    show(ui.taskCommandField, ui.taskKind.value === "command");
  }
  ui.taskKind.addEventListener("change", syncKindField);
  syncKindField();

  const returnedFromConsent = takeConsentReturn();
  refresh().then(() => {
    if (returnedFromConsent) announceConsentReturn(returnedFromConsent);
    schedulePoll(POLL_MS);
  });
})();
