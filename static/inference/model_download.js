// The model download page: polls the download's progress once a second until it ends.
document.addEventListener("DOMContentLoaded", function () {
  const box = document.getElementById("model-download-progress");
  if (!box) return;
  const bar = document.getElementById("model-download-bar");
  function poll() {
    fetch(box.dataset.progressUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) return;
        box.textContent = data.text;
        box.dataset.state = data.state;
        if (data.total) { bar.value = Math.floor((data.done * 100) / data.total); }
        if (data.state === "done") bar.value = 100;
        if (data.state === "running") setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  poll();
});
