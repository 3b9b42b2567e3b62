// Admin: users (list, create, change role, disable/enable) and everyone's API tokens (tokens.js).
"use strict";

(() => {
  const {api, el, fill, $, when, message} = MF;

  async function loadUsers() {
    const data = await api("GET", "/api/users");
    const me = document.body.dataset.user;
    const roleSelect = (u) => {
      const select = el("select", {class: "user-role", "data-user": u.user, disabled: u.user === me ? "" : null},
        ...["viewer", "reviewer", "admin"].map((r) => el("option", {value: r, selected: r === u.role ? "" : null}, r)));
      select.addEventListener("change", () => change(u.user, {role: select.value}));
      return select;
    };
    fill($("#users-table tbody"), data.users.map((u) => el("tr", {class: "user-row", "data-user": u.user},
      el("td", {}, u.user), el("td", {}, roleSelect(u)), el("td", {class: "nowrap"}, when(u.created)),
      el("td", {}, u.disabled ? "disabled" : "active"),
      el("td", {}, u.user === me ? null : el("button", {type: "button", class: u.disabled ? "user-enable" : "danger user-disable",
                                                        "data-user": u.user, onclick: () => change(u.user, {disabled: !u.disabled})},
                                             u.disabled ? "Enable" : "Disable")))));
  }

  async function change(user, body) {
    try {
      const u = await api("PUT", `/api/users/${encodeURIComponent(user)}`, body);
      message(`${u.user}: ${u.role}, ${u.disabled ? "disabled" : "active"}`, "ok");
    } catch (e) { /* shown */ }
    await loadUsers();
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
    Promise.all([loadUsers(), MF.tokens()]).then(() => { document.body.dataset.ready = "1"; }).catch(() => {});
  });
})();
