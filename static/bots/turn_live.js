// Follows a turn being answered: the worker publishes to the turn's Channels group.
(function () {
  const box = document.getElementById("turn-live");
  if (!box) return;
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(scheme + "://" + window.location.host + box.dataset.url);
  const content = box.querySelector("pre");
  const status = box.querySelector(".turn-live-status");
  socket.onmessage = function (event) {
    const data = JSON.parse(event.data);
    content.textContent = data.content;
    status.textContent = data.status;
    if (data.finish) socket.close();
  };
})();
