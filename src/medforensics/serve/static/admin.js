// Admin: users (list, create) and API tokens (create -- shown once --, revoke).
"use strict";

(() => {
  const {api, el, fill, $, when, message} = MF;

  async function loadUsers() {
    const data = await api("GET", "/api/users");
    fill($("#users-table tbody"), data.users.map((u) => el("tr", {class: "user-row", "data-user": u.user},
      el("td", {}, u.user), el("td", {}, el("span", {class: "role-badge"}, u.role)), el("td", {class: "nowrap"}, when(u.created)),
      el("td", {}, u.disabled ? "disabled" : "active"))));
  }

  async function loadTokens() {
    const data = await api("GET", "/api/tokens");
    const row = (t) => el("tr", {class: "token-row", "data-id": t.id},
      el("td", {class: "num"}, t.id), el("td", {}, t.user), el("td", {}, t.name), el("td", {class: "nowrap"}, when(t.created)),
      el("td", {}, t.revoked ? "revoked" : "active"),
      el("td", {}, t.revoked ? null : el("button", {type: "button", class: "danger revoke-token", "data-id": t.id,
                                                   onclick: () => revoke(t.id)}, "Revoke")));
    fill($("#tokens-table tbody"), data.tokens.length ? data.tokens.map(row)
      : el("tr", {}, el("td", {colspan: 6, class: "muted"}, "no tokens")));
  }

  async function revoke(id) {
    try {
      await api("DELETE", `/api/tokens/${id}`);
      message(`token ${id} revoked`, "ok");
      await loadTokens();
    } catch (e) { /* shown */ }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#user-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const u = await api("POST", "/api/users", {user: $("#new-user").value.trim(), role: $("#new-role").value,
                                                   password: $("#new-password").value});
        message(`user ${u.user} created (${u.role})`, "ok");
        e.target.reset();
        await loadUsers();
      } catch (err) { /* shown */ }
    });
    $("#token-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const t = await api("POST", "/api/tokens", {name: $("#token-name").value.trim()});
        $("#token-value").textContent = t.token;
        $("#token-new").classList.remove("hidden");
        e.target.reset();
        await loadTokens();
      } catch (err) { /* shown */ }
    });
    Promise.all([loadUsers(), loadTokens()]).then(() => { document.body.dataset.ready = "1"; }).catch(() => {});
  });
})();
