// Login page: post the credentials as JSON to /api/session, then go to ?next= (a path on this site) or "/".
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const button = document.getElementById("login-submit");

  function target() {
    const next = new URLSearchParams(location.search).get("next") || "/";
    // only a page of this site: resolve it as the browser would ("/\t/evil" is "//evil") and
    // keep it only when it stays on this origin
    try {
      const url = new URL(next, location.origin);
      if (next.startsWith("/") && url.origin === location.origin && !url.pathname.startsWith("/login")) {
        return url.pathname + url.search + url.hash;
      }
    } catch (e) { /* not a URL */ }
    return "/";
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
