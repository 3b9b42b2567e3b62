// API tokens, on the Account page (one's own) and the Admin page (everyone's): list, create
// (shown once), revoke. Adds MF.tokens(), which loads the list and wires the form once.
"use strict";

(() => {
  const {api, el, fill, $, when, message} = MF;

  async function load() {
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
      await load();
    } catch (e) { /* shown */ }
  }

  let wired = false;
  MF.tokens = async () => {
    if (!wired) {
      wired = true;
      $("#token-form").addEventListener("submit", async (e) => {
        e.preventDefault();
        try {
          const t = await api("POST", "/api/tokens", {name: $("#token-name").value.trim()});
          $("#token-value").textContent = t.token;
          $("#token-new").classList.remove("hidden");
          e.target.reset();
          await load();
        } catch (err) { /* shown */ }
      });
    }
    await load();
  };
})();
