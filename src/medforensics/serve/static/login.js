// Login page: post the credentials as JSON to /api/session, then go to ?next= (a path on this site) or "/".
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const button = document.getElementById("login-submit");

  function target() {
    const next = new URLSearchParams(location.search).get("next") || "/";
    // only a path on this site: never "//host" or "http://..."
    return /^\/(?![\/\\])/.test(next) && !next.startsWith("/login") ? next : "/";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    MF.message("");
    button.disabled = true;
    try {
      await MF.api("POST", "/api/session", {
        user: document.getElementById("login-user").value.trim(),
        password: document.getElementById("login-password").value,
      }, {noRedirect: true});
      location.href = target();
    } catch (e) {
      button.disabled = false;
      document.getElementById("login-password").select();
    }
  });
});
