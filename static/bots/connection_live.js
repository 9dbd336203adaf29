// The bot page's long-connection state, refreshed every 3 s while the page is open.
document.addEventListener("DOMContentLoaded", function () {
  const target = document.querySelector("[data-connection-url]");
  if (!target) return;
  const url = target.dataset.connectionUrl;
  setInterval(function () {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) target.textContent = data.text; })
      .catch(function () {});
  }, 3000);
});
