// The token goes to the agent once, in an Authorization header (never in a URL); the agent
// answers with an HttpOnly session cookie that the page and its event stream then use.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login");
  const error = document.getElementById("error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const token = document.getElementById("token").value.trim();
    try {
      const response = await fetch("/api/login", {
        method: "POST",
        headers: { Authorization: "Bearer " + token },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.status === 204) {
        window.location.assign("/");
        return;
      }
      error.textContent = response.status === 401
        ? "This token is not accepted."
        : "Not permitted (" + response.status + ").";
    } catch (e) {
      error.textContent = "The agent did not answer.";
    }
    error.hidden = false;
  });
});
