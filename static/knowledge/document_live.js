// Follows documents being indexed: the ingestion worker publishes progress to the
// document's Channels group; each pending or running document on the page gets a socket.
(function () {
  "use strict";
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";

  function follow(box) {
    const bar = box.querySelector("progress");
    const text = box.querySelector(".kb-document-text");
    const socket = new WebSocket(scheme + "://" + window.location.host + box.dataset.url);
    socket.onmessage = function (event) {
      const data = JSON.parse(event.data);
      const finished = data.status === "ready" || data.status === "failed";
      bar.value = data.progress;
      bar.hidden = finished;
      if (data.status === "failed") {
        text.textContent = data.label + ": " + data.error;
      } else if (finished) {
        text.textContent = data.label + " · v" + data.version;
      } else {
        text.textContent = data.label + " · " + data.progress + "%";
      }
      if (finished) socket.close();
    };
  }

  function start() {
    document.querySelectorAll('.kb-document-live[data-live="1"]').forEach(follow);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
