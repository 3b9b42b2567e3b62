// Account: change one's password (every session ends: sign in again) and one's API tokens (tokens.js).
"use strict";

(() => {
  const {api, $, message} = MF;

  document.addEventListener("DOMContentLoaded", () => {
    $("#password-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await api("POST", "/api/me/password", {current: $("#password-current").value, new: $("#password-new").value},
                  {noRedirect: true});
        message("password changed: sign in again", "ok");
        setTimeout(() => { location.href = "/login?next=/account"; }, 800);
      } catch (err) { /* shown */ }
    });
    MF.tokens().then(() => { document.body.dataset.ready = "1"; }).catch(() => {});
  });
})();
