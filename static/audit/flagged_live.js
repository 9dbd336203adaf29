// Tells an officer on the review-case list that new cases were opened in her scope. The
// feed carries ids and metadata only; the list itself is reloaded to show them.
(function () {
  "use strict";
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";

  function follow(box) {
    const text = box.querySelector(".audit-flagged-text");
    let count = 0;
    const socket = new WebSocket(scheme + "://" + window.location.host + box.dataset.url);
    socket.onmessage = function () {
      count += 1;
      text.textContent = box.dataset.template.replace("%(count)s", String(count));
      box.hidden = false;
    };
  }

  function start() {
    document.querySelectorAll(".audit-flagged-live").forEach(follow);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
